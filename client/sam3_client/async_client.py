"""The asyncio client: `Client`'s methods as coroutines and async generators, on grpc.aio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar, Unpack

from grpc import aio

from sam3_client import _flows
from sam3_client._channel import ClientBase
from sam3_client._messages import encode_result
from sam3_client._prompts import (
    Box,
    ConceptOptions,
    MaskInput,
    ObjectPrompt,
    SegmentOptions,
    StreamRequest,
    concept_queries,
)
from sam3_client._results import ConceptResult, EncodeResult, ModelInfo, ObjectResult, SegmentResult
from sam3_client._rpcs import Call
from sam3_client._steps import Feed, Flow, Steps, each_item, stream_errors
from sam3_client._tracking import create_session, one_rpc, session_info
from sam3_client.video_session import AsyncVideoSession

T = TypeVar("T")


class AsyncClient(ClientBase):
    """`Client` for asyncio: the same methods, arguments and results, awaited.

    >>> async with AsyncClient("localhost:50051") as sam3:
    ...     result = await sam3.segment("photo.jpg", points=[[500, 375]])
    ...     async for item in sam3.segment_stream(clicks()):   # clicks(): an async generator
    ...         show(item.mask)

    Many calls may run at once on one client (asyncio.gather); create and use it on one event loop.
    See `Client` for what each method does.
    """

    _grpc = aio

    async def close(self) -> None:
        """Close the channels; calls in flight are cancelled."""
        for closing in self._connection.close():
            await closing

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    async def encode(
        self,
        image: Any,
        *,
        force: bool = False,
        prefetch: bool = True,
        timeout: float | None = None,
        prewarm: bool = False,
    ) -> EncodeResult:
        """Store the image's embeddings (see `Client.encode`)."""
        return await self._run(
            _flows.encode_flow(image, self.deadlines, force=force, prefetch=prefetch, timeout=timeout, prewarm=prewarm)
        )

    async def segment(
        self,
        image: Any,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
        *,
        mask_input: MaskInput = None,
        object_key: str = "",
        **options: Unpack[SegmentOptions],
    ) -> SegmentResult:
        """One object from clicks and/or a box, encoding the image on demand (see `Client.segment`)."""
        prompt = ObjectPrompt(points, labels, box, mask_input=mask_input, object_key=object_key)
        return await self.segment_objects(image, [prompt], **options)

    async def refine(
        self,
        previous: ObjectResult,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
        **options: Unpack[SegmentOptions],
    ) -> ObjectResult:
        """The same object again with more clicks, from its previous mask (see `Client.refine`)."""
        return await self._run(_flows.refine_flow(previous, self.deadlines, points, labels, box, **options))

    async def segment_objects(
        self, image: Any, objects: Sequence[ObjectPrompt], **options: Unpack[SegmentOptions]
    ) -> SegmentResult:
        """Several objects on one image in one call (see `Client.segment_objects`)."""
        return await self._run(_flows.segment_flow(image, objects, self.deadlines, **options))

    async def segment_concept(
        self,
        image: Any,
        text: str | Sequence[str] | None = None,
        *,
        exemplars: Sequence[Any] = (),
        negative: Sequence[Box] = (),
        **options: Unpack[ConceptOptions],
    ) -> ConceptResult:
        """Every instance of a concept (see `Client.segment_concept`)."""
        concepts = concept_queries(text, exemplars, negative)
        return await self._run(_flows.concept_flow(image, concepts, self.deadlines, **options))

    async def encode_many(
        self, images: Iterable[Any] | AsyncIterable[Any], *, force: bool = False, timeout: float | None = None
    ) -> AsyncIterator[EncodeResult]:
        """Encode images over one EncodeBatch stream, results in order (see `Client.encode_many`)."""
        batch = _flows.Batch(self.deadlines, force, timeout)

        async def requests() -> AsyncIterator[Any]:
            async for image in each_item(images):
                yield batch.request(image)

        feed = Feed()
        async for result in self._stream(batch.call(feed.wrap_async(requests())), feed, encode_result):
            yield result

    async def segment_stream(
        self, requests: Iterable[StreamRequest] | AsyncIterable[StreamRequest], **options: Unpack[SegmentOptions]
    ) -> AsyncIterator[SegmentResult]:
        """An interactive SegmentStream session: one result per request, in order (see `Client.segment_stream`).

        Stopping early (`break`) leaves the call open until the generator is closed: wrap it in
        `contextlib.aclosing(...)` or let the session's request iterator end.
        """
        session = _flows.Session(self.deadlines, options)

        async def messages() -> AsyncIterator[Any]:
            async for item in each_item(requests):
                yield await self._run(session.request_flow(item))

        feed = Feed()
        async for result in self._stream(session.call(feed.wrap_async(messages())), feed, session.result):
            yield result

    async def video_session(
        self,
        frame_ids: Sequence[str],
        *,
        width: int = 0,
        height: int = 0,
        live: bool = False,
        timeout: float | None = None,
    ) -> AsyncVideoSession:
        """A new video session over frames already encoded (their image ids, in video order; see
        `video_session.AsyncVideoSession`). `info.missing_frames` lists the frames not encoded yet; `live`: see
        `Client.video_session`."""
        response = await self._run(one_rpc(create_session(frame_ids, width, height, live, self.deadlines, timeout)))
        return AsyncVideoSession(self, session_info(response.session, response.missing_frames))

    async def model_info(self, *, timeout: float | None = None) -> ModelInfo:
        """What the decoder serves (see `Client.model_info`)."""
        return await self._run(_flows.info_flow(self.deadlines, timeout))

    async def _run(self, flow: Flow[T]) -> T:
        steps = Steps(flow)
        for call in steps:
            await asyncio.sleep(steps.pause)
            with steps.answer():
                steps.send(await self._connection.invoke(call))
        return steps.result

    async def _stream(self, call: Call, feed: Feed, convert: Callable[..., T]) -> AsyncIterator[T]:
        target = self._connection.targets[call.rpc.service]
        responses = self._connection.invoke(call)
        with stream_errors(responses, target):
            async for response in responses:
                yield convert(response, target=target)
        feed.raise_error()
