"""A video session on the fleet: prompt objects on frames, track them through the video (docs/video.md).

>>> frame_ids = [r.image_id for r in sam3.encode_many(frames)]      # a frame is an image, encoded once
>>> with sam3.video_session(frame_ids) as video:
...     first = video.add_prompt(0, object_id=1, points=[[320, 240]])
...     for frame in video.propagate():                              # one TrackedFrame a frame, as committed
...         save(frame.frame_index, frame.masks()[1])

The session lives in the fleet's session store: its calls go to the replica that holds it (routed by session
id), a propagation whose replica dies is resumed on another with the frames it missed, and closing the
session (leaving the `with` block) deletes it. `AsyncVideoSession` is the same for `AsyncClient`, awaited.

A live session (a camera: frames whose number nobody knows yet) is created with `live=True` and takes each
frame as it arrives, tracking every object onto it:

>>> with sam3.video_session([first_id], live=True) as video:
...     video.add_prompt(0, object_id=1, box=[40, 60, 200, 220])
...     for frame in video.append_frames(camera()):                  # images, or ids of encoded frames
...         show(frame.masks())
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from sam3_client._rpcs import Rpc
from sam3_client._steps import Feed, each_item, stream_errors
from sam3_client._tracking import (
    Appending,
    Propagation,
    SessionInfo,
    TrackedFrame,
    VideoRequests,
    one_rpc,
    session_info,
    tracked_frame,
)
from sam3_client.errors import Sam3Error

if TYPE_CHECKING:
    from sam3_client.async_client import AsyncClient
    from sam3_client.client import Client

__all__ = ["AsyncVideoSession", "VideoSession"]


class VideoSession:
    """One video session of a `Client` (`Client.video_session`); a context manager that closes it."""

    def __init__(self, client: Client, info: SessionInfo) -> None:
        self._client = client
        self.info = info
        self.session_id = info.session_id
        self._requests = VideoRequests(info.session_id, client.deadlines)

    def add_prompt(
        self,
        frame: int,
        object_id: int,
        *,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
        mask: np.ndarray | None = None,
        timeout: float | None = None,
    ) -> TrackedFrame:
        """Sets `object_id`'s prompt on `frame` (every click so far, a box, or a mask at the frame's size:
        it replaces the object's earlier prompt there); the frame's masks for every object."""
        request = self._requests.add_prompt(frame, object_id, points, labels, box, mask)
        response = self._client._run(one_rpc(self._requests.call(Rpc.ADD_PROMPT, request, timeout)))
        return tracked_frame(response.frame)

    def propagate(
        self,
        start_frame: int | None = None,
        *,
        direction: str = "forward",
        max_frames: int | None = None,
        object_ids: Sequence[int] = (),
        timeout: float | None = None,
    ) -> Iterator[TrackedFrame]:
        """Tracks the objects frame by frame ("forward", "backward" or "both"), from `start_frame` (default:
        the first prompted frame) and up to `max_frames` more per direction (None: to the end). Stop iterating to
        stop the work within a frame; a broken stream is resumed on another replica."""
        propagation = Propagation(self._requests.propagate(start_frame, direction, max_frames, object_ids))
        connection = self._client._connection
        while True:
            call = self._requests.call(Rpc.PROPAGATE, propagation.request(), timeout)
            responses = connection.invoke(call)
            try:
                with stream_errors(responses, connection.targets[call.rpc.service]):
                    for response in responses:
                        yield propagation.answer(response)
                return
            except Sam3Error as error:
                if not propagation.resume_after(error):
                    raise
                connection.stream_broke(call, error)

    def append_frames(self, frames: Iterable[Any], *, timeout: float | None = None) -> Iterator[TrackedFrame]:
        """Appends frames to a live session as they come (a camera: feed it a generator) and tracks every object
        onto each: one `TrackedFrame` per frame, in order, as soon as it is tracked. A frame is an image (encoded
        first) or the id of one encoded already. One the service cannot append (not encoded, another size) comes
        back with `error` set and frame_index -1, and the stream carries on; an unreadable image ends it after
        the frames before it, then raises. `timeout` bounds the whole stream (default `Deadlines.stream`)."""
        appending = Appending(self._requests, timeout)
        feed = Feed()
        messages = feed.wrap(self._client._run(appending.request_flow(frame)) for frame in frames)
        yield from self._client._stream(appending.call(messages), feed, appending.answer)

    def remove_object(self, object_id: int, *, timeout: float | None = None) -> SessionInfo:
        request = self._requests.remove_object(object_id)
        response = self._client._run(one_rpc(self._requests.call(Rpc.REMOVE_OBJECT, request, timeout)))
        return session_info(response.session)

    def clear_prompts(self, frame: int, object_id: int | None = None, *, timeout: float | None = None) -> SessionInfo:
        """Removes the prompts on `frame` (of one object, or all); an object left without prompts is removed."""
        request = self._requests.clear_prompts(frame, object_id)
        response = self._client._run(one_rpc(self._requests.call(Rpc.CLEAR_PROMPTS, request, timeout)))
        return session_info(response.session)

    def describe(self, *, timeout: float | None = None) -> SessionInfo:
        call = self._requests.call(Rpc.DESCRIBE_SESSION, self._requests.describe(), timeout)
        return session_info(self._client._run(one_rpc(call)).session)

    def close(self, *, timeout: float | None = None) -> None:
        """Deletes the session and everything stored for it."""
        self._client._run(one_rpc(self._requests.call(Rpc.CLOSE_SESSION, self._requests.close(), timeout)))

    def __enter__(self) -> VideoSession:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class AsyncVideoSession:
    """`VideoSession` for `AsyncClient`: the same methods, awaited (`propagate` is an async iterator)."""

    def __init__(self, client: AsyncClient, info: SessionInfo) -> None:
        self._client = client
        self.info = info
        self.session_id = info.session_id
        self._requests = VideoRequests(info.session_id, client.deadlines)

    async def add_prompt(
        self,
        frame: int,
        object_id: int,
        *,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
        mask: np.ndarray | None = None,
        timeout: float | None = None,
    ) -> TrackedFrame:
        request = self._requests.add_prompt(frame, object_id, points, labels, box, mask)
        response = await self._client._run(one_rpc(self._requests.call(Rpc.ADD_PROMPT, request, timeout)))
        return tracked_frame(response.frame)

    async def propagate(
        self,
        start_frame: int | None = None,
        *,
        direction: str = "forward",
        max_frames: int | None = None,
        object_ids: Sequence[int] = (),
        timeout: float | None = None,
    ) -> AsyncIterator[TrackedFrame]:
        propagation = Propagation(self._requests.propagate(start_frame, direction, max_frames, object_ids))
        connection = self._client._connection
        while True:
            call = self._requests.call(Rpc.PROPAGATE, propagation.request(), timeout)
            responses: Any = connection.invoke(call)
            try:
                with stream_errors(responses, connection.targets[call.rpc.service]):
                    async for response in responses:
                        yield propagation.answer(response)
                return
            except Sam3Error as error:
                if not propagation.resume_after(error):
                    raise
                connection.stream_broke(call, error)

    async def append_frames(
        self, frames: Iterable[Any] | AsyncIterable[Any], *, timeout: float | None = None
    ) -> AsyncIterator[TrackedFrame]:
        """Frames appended to a live session as they come, each tracked (see `VideoSession.append_frames`)."""
        appending = Appending(self._requests, timeout)

        async def messages() -> AsyncIterator[Any]:
            async for frame in each_item(frames):
                yield await self._client._run(appending.request_flow(frame))

        feed = Feed()
        async for frame in self._client._stream(appending.call(feed.wrap_async(messages())), feed, appending.answer):
            yield frame

    async def remove_object(self, object_id: int, *, timeout: float | None = None) -> SessionInfo:
        request = self._requests.remove_object(object_id)
        response = await self._client._run(one_rpc(self._requests.call(Rpc.REMOVE_OBJECT, request, timeout)))
        return session_info(response.session)

    async def clear_prompts(
        self, frame: int, object_id: int | None = None, *, timeout: float | None = None
    ) -> SessionInfo:
        request = self._requests.clear_prompts(frame, object_id)
        response = await self._client._run(one_rpc(self._requests.call(Rpc.CLEAR_PROMPTS, request, timeout)))
        return session_info(response.session)

    async def describe(self, *, timeout: float | None = None) -> SessionInfo:
        call = self._requests.call(Rpc.DESCRIBE_SESSION, self._requests.describe(), timeout)
        return session_info((await self._client._run(one_rpc(call))).session)

    async def close(self, *, timeout: float | None = None) -> None:
        await self._client._run(one_rpc(self._requests.call(Rpc.CLOSE_SESSION, self._requests.close(), timeout)))

    async def __aenter__(self) -> AsyncVideoSession:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()
