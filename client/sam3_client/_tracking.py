"""Video sessions, written once for `VideoSession` and `AsyncVideoSession`: the requests, the results, and a
propagation that survives losing its replica.

A session lives in the fleet's session store, not in one replica: when a propagation's stream breaks (its
replica died, a deploy), `Propagation` asks again with `resume_propagation_id` and the number of frames
received, and another replica sends the frames it missed from the store and goes on from the last committed
frame. The masks are the ones the first replica would have sent.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc
import numpy as np

from sam3_client._flows import encode_flow
from sam3_client._images import image_payload
from sam3_client._messages import mask_of
from sam3_client._results import Mask
from sam3_client._rpcs import Call, Deadlines, Rpc
from sam3_client._steps import Flow
from sam3_client.errors import Sam3Error
from sam3_client.masks import encode_rle
from sam3_client.proto import decoder_pb2, tracker_pb2

__all__ = ["Appending", "Propagation", "SessionInfo", "TrackedFrame", "TrackedObject", "VideoRequests"]

DIRECTIONS = {
    "forward": tracker_pb2.PROPAGATION_DIRECTION_FORWARD,
    "backward": tracker_pb2.PROPAGATION_DIRECTION_BACKWARD,
    "both": tracker_pb2.PROPAGATION_DIRECTION_BOTH,
}
_RESUMES = 3  # broken streams one propagation resumes from before giving up
_BROKEN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


@dataclass(frozen=True)
class TrackedObject:
    """One object on one frame."""

    object_id: int
    mask: Mask  # `.mask` is the bool [H, W] array; empty when the object is not on the frame
    presence: float  # probability that the object is visible on the frame
    score: float  # the model's object score logit (> 0: visible)


@dataclass(frozen=True)
class TrackedFrame:
    """Every tracked object's mask on one frame of the session."""

    frame_index: int
    frame_id: str
    objects: tuple[TrackedObject, ...]
    revision: int  # the session's revision once this frame was committed
    error: Sam3Error | None = None  # append_frames only: not appended (frame_index -1), the stream carried on

    def masks(self) -> dict[int, np.ndarray]:
        """bool [H, W] masks by object id."""
        return {obj.object_id: obj.mask.mask for obj in self.objects}  # type: ignore[misc]


@dataclass(frozen=True)
class SessionInfo:
    """A session as the store has it now."""

    session_id: str
    revision: int
    frame_count: int
    width: int
    height: int
    object_ids: tuple[int, ...]
    missing_frames: tuple[int, ...] = ()  # frames not encoded yet (from create only)


def session_info(info: tracker_pb2.SessionInfo, missing: Sequence[int] = ()) -> SessionInfo:
    objects = tuple(o.object_id for o in info.objects)
    return SessionInfo(
        info.session_id, info.revision, info.frame_count, info.width, info.height, objects, tuple(missing)
    )


def tracked_frame(frame: tracker_pb2.FrameResult) -> TrackedFrame:
    """The SDK's view of one frame's answer."""
    objects = tuple(
        TrackedObject(o.object_id, mask_of(o.mask), o.presence, o.object_score_logit) for o in frame.objects
    )
    return TrackedFrame(frame.frame_index, frame.frame_id, objects, frame.revision)


class VideoRequests:
    """The requests of one session's verbs, and the one-rpc flows that make them (`_steps`)."""

    def __init__(self, session_id: str, deadlines: Deadlines) -> None:
        self.session_id = session_id
        self.deadlines = deadlines

    def call(self, rpc: Rpc, request: Any, timeout: float | None) -> Call:
        return Call(rpc, request, self.deadlines.of(rpc) if timeout is None else timeout)

    def add_prompt(
        self,
        frame: int,
        object_id: int,
        points: Sequence[Sequence[float]],
        labels: Sequence[int] | None,
        box: Sequence[float] | None,
        mask: np.ndarray | None,
    ) -> tracker_pb2.AddPromptRequest:
        labels = [1] * len(points) if labels is None else list(labels)
        if len(labels) != len(points):
            raise ValueError(f"{len(points)} points but {len(labels)} labels")
        request = tracker_pb2.AddPromptRequest(
            session_id=self.session_id,
            frame_index=frame,
            object_id=object_id,
            points=[
                decoder_pb2.Point(
                    x=float(x),
                    y=float(y),
                    label=decoder_pb2.POINT_LABEL_FOREGROUND if label else decoder_pb2.POINT_LABEL_BACKGROUND,
                )
                for (x, y), label in zip(points, labels, strict=True)
            ],
            mask_format=decoder_pb2.MASK_FORMAT_RLE,
        )
        if box is not None:
            x1, y1, x2, y2 = (float(v) for v in box)
            request.box.CopyFrom(decoder_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2))
        if mask is not None:
            rle = encode_rle(np.asarray(mask, bool))
            height, width = rle["size"]
            request.mask.CopyFrom(decoder_pb2.RleMask(counts=rle["counts"], height=height, width=width))
        return request

    def propagate(
        self, start_frame: int | None, direction: str, max_frames: int | None, object_ids: Sequence[int]
    ) -> tracker_pb2.PropagateRequest:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, got {direction!r}")
        request = tracker_pb2.PropagateRequest(
            session_id=self.session_id,
            direction=DIRECTIONS[direction],
            object_ids=list(object_ids),
            mask_format=decoder_pb2.MASK_FORMAT_RLE,
        )
        if start_frame is not None:
            request.start_frame = start_frame
        if max_frames is not None:
            request.max_frames = max_frames
        return request

    def remove_object(self, object_id: int) -> tracker_pb2.RemoveObjectRequest:
        return tracker_pb2.RemoveObjectRequest(session_id=self.session_id, object_id=object_id)

    def clear_prompts(self, frame: int, object_id: int | None) -> tracker_pb2.ClearPromptsRequest:
        request = tracker_pb2.ClearPromptsRequest(session_id=self.session_id, frame_index=frame)
        if object_id is not None:
            request.object_id = object_id
        return request

    def describe(self) -> tracker_pb2.DescribeSessionRequest:
        return tracker_pb2.DescribeSessionRequest(session_id=self.session_id)

    def close(self) -> tracker_pb2.CloseSessionRequest:
        return tracker_pb2.CloseSessionRequest(session_id=self.session_id)


def create_session(
    frame_ids: Sequence[str], width: int, height: int, live: bool, deadlines: Deadlines, timeout: float | None
) -> Call:
    """The CreateSession call over frames given by their image ids (0 x 0: the stored frames' size); a `live`
    session takes more frames as they arrive (`Appending`)."""
    request = tracker_pb2.CreateSessionRequest(frame_ids=list(frame_ids), width=width, height=height, live=live)
    return Call(Rpc.CREATE_SESSION, request, deadlines.of(Rpc.CREATE_SESSION) if timeout is None else timeout)


def one_rpc(call: Call) -> Generator[Call, Any, Any]:
    """The flow of a verb that is one rpc (busy retries come with the step runner)."""
    return (yield call)


class Propagation:
    """One propagation across broken streams: the request to send next, and what was received."""

    def __init__(self, request: tracker_pb2.PropagateRequest) -> None:
        self._first = request
        self.propagation_id = ""
        self.received = 0
        self._resumes = 0

    def request(self) -> tracker_pb2.PropagateRequest:
        """The first request, or after a broken stream the one that resumes where it broke."""
        if not self.propagation_id:
            return self._first
        return tracker_pb2.PropagateRequest(
            session_id=self._first.session_id,
            mask_format=self._first.mask_format,
            resume_propagation_id=self.propagation_id,
            frames_received=self.received,
        )

    def answer(self, response: tracker_pb2.PropagateResponse) -> TrackedFrame:
        self.propagation_id = response.propagation_id
        self.received = response.frames_done
        return tracked_frame(response.frame)

    def resume_after(self, error: Sam3Error) -> bool:
        """Whether to ask again after the stream broke with `error` (else raise it): the replica went away
        after the propagation started, and it has not broken too often."""
        if error.code not in _BROKEN or not self.propagation_id or self._resumes >= _RESUMES:
            return False
        self._resumes += 1
        return True


class Appending:
    """One AppendFrames stream of a live session: each frame (an image, encoded first, or the id of one encoded
    already) is its own request, so its masks come back as soon as it is tracked, not after a batch."""

    def __init__(self, requests: VideoRequests, timeout: float | None) -> None:
        self._requests = requests
        self._timeout = timeout

    def call(self, messages: Any) -> Call:
        """The AppendFrames call carrying `messages` (what `request_flow` made), routed to the session's replica."""
        return replace(self._requests.call(Rpc.APPEND_FRAMES, messages, self._timeout), key=self._requests.session_id)

    def request_flow(self, frame: Any) -> Flow[tracker_pb2.AppendFramesRequest]:
        payload = image_payload(frame)
        if payload.data is not None:
            yield from encode_flow(payload, self._requests.deadlines)  # no prefetch: the session's replica reads it
        return tracker_pb2.AppendFramesRequest(
            session_id=self._requests.session_id, frame_ids=[payload.image_id], mask_format=decoder_pb2.MASK_FORMAT_RLE
        )

    @staticmethod
    def answer(response: tracker_pb2.AppendFramesResponse, *, target: str | None = None) -> TrackedFrame:
        """One frame's answer: its masks, or (frame_index -1) why it was not appended."""
        if response.HasField("error"):
            return TrackedFrame(-1, response.frame_id, (), 0, Sam3Error.from_item(response.error, target))
        return tracked_frame(response.frame)
