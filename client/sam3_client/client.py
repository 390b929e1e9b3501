"""The synchronous client: `segment(image, points=...)` in one call, Encode only when the store lacks it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar, Unpack

import grpc

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
from sam3_client._steps import Feed, Flow, Steps, stream_errors
from sam3_client._tracking import create_session, one_rpc, session_info
from sam3_client.video_session import VideoSession

T = TypeVar("T")


class Client(ClientBase):
    """Blocking client for `sam3 serve` (one target) or split encoder/decoder deployments.

    >>> with Client("localhost:50051") as sam3:
    ...     result = sam3.segment("photo.jpg", points=[[500, 375]])
    ...     mask = result.mask                   # numpy bool, H x W at the photo's size

    Images may be a path (str or Path), bytes of an image file, a PIL image, a uint8 numpy array
    (H x W, H x W x 3 RGB, H x W x 4 RGBA) or the id `encode` returned. Every call has a deadline
    (`deadlines`, or `timeout=` per call) and fails with `Sam3Error`. Thread-safe: share one client.
    For asyncio use `AsyncClient`, which has the same methods.
    """

    _grpc = grpc

    def close(self) -> None:
        """Close the channels; calls in flight are cancelled."""
        self._connection.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def encode(
        self,
        image: Any,
        *,
        force: bool = False,
        prefetch: bool = True,
        timeout: float | None = None,
        prewarm: bool = False,
    ) -> EncodeResult:
        """Store the image's embeddings ahead of prompts (returns at once when already stored, unless `force`).

        Not needed before `segment`, which encodes on demand; useful to pre-warm, or to get the id.
        `prefetch` then also loads the embeddings into the decoder replica that will serve this image's
        clicks (the one affinity routes it to), so even the first click skips the store fetch.
        `prewarm=True` lets interactive encodes go first when the encoder is busy. A busy encoder
        (RESOURCE_EXHAUSTED / OVERLOADED) is retried with backoff within the call's deadline.
        """
        return self._run(
            _flows.encode_flow(image, self.deadlines, force=force, prefetch=prefetch, timeout=timeout, prewarm=prewarm)
        )

    def segment(
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
        """One object from clicks [[x, y], ...] (labels 1 foreground / 0 background, default all 1) and/or a box.

        The image is hashed locally and only its id is sent; when the store lacks it, the image is
        encoded and the prompt asked again (`result.encoded` is then set). Options (SegmentOptions):
        mask="best" | "all" | 0..2, mask_format="rle" | "png" | "bits" | "polygon" | "none",
        polygon_tolerance=1.0, low_res_logits=False, timeout=seconds for the whole call, encode included.
        `object_key` names the object so the worker remembers its mask for `refine` (or
        mask_input="previous"); `mask_input` is a previous answer's low-res logits (see ObjectPrompt).
        """
        prompt = ObjectPrompt(points, labels, box, mask_input=mask_input, object_key=object_key)
        return self.segment_objects(image, [prompt], **options)

    def refine(
        self,
        previous: ObjectResult,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
        **options: Unpack[SegmentOptions],
    ) -> ObjectResult:
        """The same object again with more clicks, from its previous mask: SAM's interactive loop in one call.

        >>> car = sam3.segment("photo.jpg", points=[[500, 375]], object_key="car").objects[0]
        >>> car = sam3.refine(car, points=[[620, 410]], labels=[0])   # the wheel was not the car

        Sends every click so far plus these (a new `box` replaces the old one) and the previous answer's
        mask: its logits when it returned them (low_res_logits=True), else the ones the worker remembered
        under its object_key (ObjectResult.mask_input_used says whether they were still there). Options
        default to the previous call's. The image travels as its id: if the store has dropped it, segment
        the image again.
        """
        return self._run(_flows.refine_flow(previous, self.deadlines, points, labels, box, **options))

    def segment_objects(
        self, image: Any, objects: Sequence[ObjectPrompt], **options: Unpack[SegmentOptions]
    ) -> SegmentResult:
        """Several objects on one image in one call: `result.objects` follows the order of `objects`."""
        return self._run(_flows.segment_flow(image, objects, self.deadlines, **options))

    def segment_concept(
        self,
        image: Any,
        text: str | Sequence[str] | None = None,
        *,
        exemplars: Sequence[Any] = (),
        negative: Sequence[Box] = (),
        **options: Unpack[ConceptOptions],
    ) -> ConceptResult:
        """Every instance of a concept: a noun phrase ("yellow school bus"), example boxes, or both.

        `text` may be a list: one answer per phrase (`result.concepts`), each using every exemplar.
        `exemplars` are boxes (x1, y1, x2, y2) of instances, or (box, positive) pairs; `negative` boxes
        mean "not this". The image is encoded on demand, as in `segment`. Options: `threshold` (0.5),
        `mask_format` ("rle"), `label_image`, `max_instances`, `timeout` (see ConceptOptions).
        """
        concepts = concept_queries(text, exemplars, negative)
        return self._run(_flows.concept_flow(image, concepts, self.deadlines, **options))

    def encode_many(
        self, images: Iterable[Any], *, force: bool = False, timeout: float | None = None
    ) -> Iterator[EncodeResult]:
        """Encode a folder's worth of images over one stream (EncodeBatch), yielding results in order.

        A bad image yields a result with `error` set and the stream carries on; an unreadable input
        ends the stream after the images before it, then raises. `timeout` bounds the whole stream.
        """
        feed = Feed()
        batch = _flows.Batch(self.deadlines, force, timeout)
        yield from self._stream(batch.call(feed.wrap(map(batch.request, images))), feed, encode_result)

    def segment_stream(
        self, requests: Iterable[StreamRequest], **options: Unpack[SegmentOptions]
    ) -> Iterator[SegmentResult]:
        """An interactive session (SegmentStream): one result per request, in order.

        Each request is `(image, objects)` or `(image, objects, object_key)`, objects being an
        ObjectPrompt or a list of them; feed them as the user clicks (e.g. from a queue). Requests
        sharing an object_key supersede each other: a stale one the worker had not started yet comes
        back with `skipped=True`. A failed request has `error` set and the session carries on. An
        image given as pixels/bytes is encoded once, when first seen; ids are used as they are.
        Options as for `segment`; `timeout` bounds the whole session.
        """
        session = _flows.Session(self.deadlines, options)
        feed = Feed()
        messages = feed.wrap(self._run(session.request_flow(item)) for item in requests)
        yield from self._stream(session.call(messages), feed, session.result)

    def video_session(
        self,
        frame_ids: Sequence[str],
        *,
        width: int = 0,
        height: int = 0,
        live: bool = False,
        timeout: float | None = None,
    ) -> VideoSession:
        """A new video session over frames already encoded (their image ids, in video order; see
        `video_session.VideoSession`). `info.missing_frames` lists the frames not encoded yet. A `live`
        session (a camera) takes more frames as they arrive: `VideoSession.append_frames`."""
        response = self._run(one_rpc(create_session(frame_ids, width, height, live, self.deadlines, timeout)))
        return VideoSession(self, session_info(response.session, response.missing_frames))

    def model_info(self, *, timeout: float | None = None) -> ModelInfo:
        """What the decoder serves (model_id, mask size, embedding shapes, server version)."""
        return self._run(_flows.info_flow(self.deadlines, timeout))

    def _run(self, flow: Flow[T]) -> T:
        steps = Steps(flow)
        for call in steps:
            time.sleep(steps.pause)
            with steps.answer():
                steps.send(self._connection.invoke(call))
        return steps.result

    def _stream(self, call: Call, feed: Feed, convert: Callable[..., T]) -> Iterator[T]:
        target = self._connection.targets[call.rpc.service]
        responses = self._connection.invoke(call)
        with stream_errors(responses, target):
            for response in responses:
                yield convert(response, target=target)
        feed.raise_error()
