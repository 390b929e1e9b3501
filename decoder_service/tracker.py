"""TrackerService: video sessions on stored frames, on the decoder role (docs/video.md).

A session's frames are images the encoder fleet stored (EncodeBatch); its state lives in the session store
and every call that changes it commits there before answering (`tracking_sessions`), so any replica serves
any session and a propagation whose replica died goes on elsewhere from its last committed frame
(`resume_propagation_id`). Model work (a prompt's frame, each propagated frame) runs in a tracking slot:
at most --max-concurrent-tracking at once, a caller finding none free is OVERLOADED at once.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from decoder_service.busy_slots import BusySlots
from decoder_service.fields import check_image_id, invalid_prompt, require_enum
from decoder_service.tracking_answer import StoredObject, decode_rle, frame_result
from decoder_service.tracking_limits import TrackerSettings, limit_exceeded
from decoder_service.tracking_plan import DIRECTIONS, plan
from decoder_service.tracking_refusals import core_refusal, invalid_field
from decoder_service.tracking_sessions import HeldSessions, Open, Writer, frame_not_encoded
from decoder_service.tracking_state import Propagation, SessionRecord
from sam3_client import wire
from sam3_client.proto import decoder_pb2, tracker_pb2, tracker_pb2_grpc
from sam3_core.model import Sam3Model
from sam3_core.prompts import PromptError
from sam3_core.timing import StageTimer
from sam3_core.tracking import FrameResult, TrackingError, TrackingNotSupportedError, VideoGraphs
from sam3_core.tracking.errors import NoPromptsError
from sam3_serving import metrics
from sam3_serving.auth import tenant_of
from sam3_serving.errors import Reason, ServiceError
from sam3_serving.roles import Role
from sam3_serving.store import EMBEDDINGS, SessionStore, ValueStore
from sam3_serving.store.sessions import is_session_id, session_not_found

__all__ = ["TrackerServicer"]

WORKER = Role.DECODER
_READ_CHUNK = 16  # stored frames read per round trip by ReadResults


@dataclass(frozen=True)
class _Backing:
    graphs: VideoGraphs
    sessions: SessionStore
    held: HeldSessions


class TrackerServicer(tracker_pb2_grpc.TrackerServiceServicer):
    def __init__(
        self, model: Sam3Model, store: ValueStore, sessions: SessionStore | None, settings: TrackerSettings
    ) -> None:
        self.store = store
        self.settings = settings
        self.model_id = model.model_id
        self._kind = EMBEDDINGS.expecting(model.embedding_shapes())
        self._slots = BusySlots(
            settings.max_concurrent_tracking,
            "tracking busy: {count} prompts or propagations already running (--max-concurrent-tracking)",
            "max_concurrent_tracking",
        )
        self._backing: _Backing | None = None
        self._unsupported = "this worker has no session store (start it with --session-redis-url, docs/video.md)"
        try:
            graphs = VideoGraphs(model.folder, runtime=model.runtime)
        except TrackingNotSupportedError as error:
            self._unsupported = str(error)
        else:
            if sessions is not None:
                held = HeldSessions(graphs, self._kind, settings.max_sessions_per_worker)
                self._backing = _Backing(graphs, sessions, held)

    @property
    def _tracking(self) -> _Backing:
        """What sessions need; FAILED_PRECONDITION / TRACKING_NOT_SUPPORTED on a worker without it."""
        if self._backing is None:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this worker cannot serve video sessions: {self._unsupported}",
                Reason.TRACKING_NOT_SUPPORTED,
                model_id=self.model_id,
            )
        return self._backing

    # -- session lifecycle -----------------------------------------------------------------------------------

    def CreateSession(
        self, request: tracker_pb2.CreateSessionRequest, context: grpc.ServicerContext
    ) -> tracker_pb2.CreateSessionResponse:
        frame_ids = list(request.frame_ids)
        limit = self.settings.max_frames_per_session
        if len(frame_ids) > limit:
            raise limit_exceeded(
                f"{len(frame_ids)} frames, over the {limit} a session may have (--max-frames-per-session): "
                "split the video into sessions",
                "max_frames_per_session",
            )
        for index, frame_id in enumerate(frame_ids):
            if not wire.is_image_id(frame_id):
                raise invalid_field(
                    f"frame_ids[{index}]", "expected an image id: the 64 lowercase hex digits of the frame's sha256"
                )
        if not frame_ids and not request.live:
            raise invalid_field("frame_ids", "a session needs its frames (or `live` to append them as they arrive)")
        tenant = tenant_of(context)
        values, sessions = self.store.for_tenant(tenant), self._tracking.sessions.for_tenant(tenant)
        heads = [values.peek(self._kind, frame_id) for frame_id in frame_ids]
        height, width = self._size(request, heads)
        for index, head in enumerate(heads):
            if head is not None and head.size != (height, width):
                raise invalid_field(
                    f"frame_ids[{index}]",
                    f"a {head.size[1]}x{head.size[0]} frame in a {width}x{height} "
                    "session: every frame of a session has its size",
                )
        record = SessionRecord(self._tracking.graphs.model_id, height, width, request.live)
        session_id = sessions.create(frame_ids, record.to_bytes())
        self._tracking.held.hold(sessions, session_id, Open(self._tracking.graphs, self._kind, record, frame_ids, 1))
        return tracker_pb2.CreateSessionResponse(
            session=self._info(session_id, record, 1, len(frame_ids), ()),
            missing_frames=[i for i, head in enumerate(heads) if head is None],
            request_id=request.request_id,
        )

    def _size(self, request: tracker_pb2.CreateSessionRequest, heads: Sequence[Any]) -> tuple[int, int]:
        if (request.width == 0) != (request.height == 0):
            raise invalid_field(
                "height" if request.height == 0 else "width", "give width and height together, or neither"
            )
        if request.width < 0 or request.height < 0:
            raise invalid_field("width", f"{request.width}x{request.height} is not a frame size")
        if request.width:
            return request.height, request.width
        stored = next((head.size for head in heads if head is not None), None)
        if stored is None:
            raise invalid_field("width", "no frame is stored yet to take the size from: give width and height")
        return stored

    def DescribeSession(
        self, request: tracker_pb2.DescribeSessionRequest, context: grpc.ServicerContext
    ) -> tracker_pb2.DescribeSessionResponse:
        sessions = self._sessions(request.session_id, context)
        journal = sessions.journal(request.session_id)
        record = self._record(sessions, request.session_id, journal.state)
        sessions.touch(request.session_id, journal.objects)
        info = self._info(request.session_id, record, journal.revision, journal.frame_count, journal.objects)
        return tracker_pb2.DescribeSessionResponse(session=info)

    def CloseSession(
        self, request: tracker_pb2.CloseSessionRequest, context: grpc.ServicerContext
    ) -> tracker_pb2.CloseSessionResponse:
        sessions = self._sessions(request.session_id, context)
        revision = sessions.delete(request.session_id)
        self._tracking.held.forget(sessions, request.session_id)
        if revision is None:
            raise session_not_found(request.session_id)
        return tracker_pb2.CloseSessionResponse(revision=revision)

    # -- changes ---------------------------------------------------------------------------------------------

    def AddPrompt(
        self, request: tracker_pb2.AddPromptRequest, context: grpc.ServicerContext
    ) -> tracker_pb2.AddPromptResponse:
        fmt = self._mask_format(request.mask_format)
        if request.object_id < 0:
            raise invalid_field("object_id", f"{request.object_id}: object ids are 0 or more")
        points = [(p.x, p.y) for p in request.points]
        labels = [p.label for p in request.points]
        for index, label in enumerate(labels):
            try:
                require_enum(f"points[{index}].label", decoder_pb2.PointLabel, label)
            except PromptError as error:
                raise invalid_prompt(error) from error
        box = (request.box.x1, request.box.y1, request.box.x2, request.box.y2) if request.HasField("box") else None
        timer = StageTimer()
        with timer.stage("total"), self._slots.taken(), self._writing(request, context, timer) as writer:
            self._check_frame(writer.open, request.frame_index)
            mask = self._mask(request, writer.session.video_size) if request.HasField("mask") else None
            self._check_object_limits(writer, request.frame_index, request.object_id)
            writer.open.record.propagation = None
            with timer.stage("track"):
                try:
                    result = writer.session.add_prompt(
                        request.frame_index,
                        request.object_id,
                        points=points,
                        labels=[1 if label == decoder_pb2.POINT_LABEL_FOREGROUND else 0 for label in labels],
                        box=box,
                        mask=mask,
                    )
                except (TrackingError, PromptError) as error:
                    raise core_refusal(error) from error
            metrics.MODEL_RUNS.labels(WORKER).inc()
            (objects,) = writer.commit([result])
            answer = self._frame(writer.open, request.frame_index, objects, fmt, timer)
        answer.timings.milliseconds.update(timer.milliseconds)
        return tracker_pb2.AddPromptResponse(frame=answer, request_id=request.request_id)

    def _check_object_limits(self, writer: Writer, frame: int, object_id: int) -> None:
        state = writer.session.state.objects.get(object_id)
        if state is None and len(writer.session.object_ids) >= self.settings.max_objects_per_session:
            raise limit_exceeded(
                f"the session tracks {len(writer.session.object_ids)} objects, the most it may "
                "(--max-objects-per-session): remove one first",
                "max_objects_per_session",
            )
        if state is not None and frame not in state.prompts and len(state.prompts) >= self.settings.max_prompted_frames:
            raise limit_exceeded(
                f"object {object_id} is prompted on {len(state.prompts)} frames, the most one may "
                "(--max-prompted-frames; each keeps a memory): clear one first",
                "max_prompted_frames",
            )

    def _mask(self, request: tracker_pb2.AddPromptRequest, size: tuple[int, int]) -> np.ndarray:
        if request.points or request.HasField("box"):
            raise invalid_field("mask", "a mask prompt replaces points and boxes: give one or the other")
        rle = request.mask
        if (rle.height, rle.width) != size:
            raise invalid_field("mask", f"a {rle.width}x{rle.height} mask for {size[1]}x{size[0]} frames")
        try:
            return decode_rle(list(rle.counts), size)
        except ValueError as error:
            raise invalid_field("mask.counts", str(error)) from error

    def RemoveObject(
        self, request: tracker_pb2.RemoveObjectRequest, context: grpc.ServicerContext
    ) -> tracker_pb2.RemoveObjectResponse:
        with self._writing(request, context, StageTimer()) as writer:
            try:
                writer.session.remove_object(request.object_id)
            except TrackingError as error:
                raise core_refusal(error) from error
            writer.open.record.propagation = None
            writer.commit()
            return tracker_pb2.RemoveObjectResponse(session=self._held_info(request.session_id, writer.open))

    def ClearPrompts(
        self, request: tracker_pb2.ClearPromptsRequest, context: grpc.ServicerContext
    ) -> tracker_pb2.ClearPromptsResponse:
        with self._writing(request, context, StageTimer()) as writer:
            objects = writer.session.state.objects
            wanted = [request.object_id] if request.HasField("object_id") else list(objects)
            if not any(request.frame_index in objects[o].prompts for o in wanted if o in objects):
                field = "object_id" if request.HasField("object_id") else "frame_index"
                raise invalid_field(field, f"no prompt on frame {request.frame_index} to clear")
            try:
                writer.session.clear_prompts(
                    request.frame_index, request.object_id if request.HasField("object_id") else None
                )
            except TrackingError as error:
                raise core_refusal(error) from error
            writer.open.record.propagation = None
            writer.commit()
            return tracker_pb2.ClearPromptsResponse(session=self._held_info(request.session_id, writer.open))

    # -- tracking --------------------------------------------------------------------------------------------

    def Propagate(
        self, request: tracker_pb2.PropagateRequest, context: grpc.ServicerContext
    ) -> Iterator[tracker_pb2.PropagateResponse]:
        fmt = self._mask_format(request.mask_format)
        resuming = bool(request.resume_propagation_id)
        if not resuming:
            try:
                direction = require_enum("direction", tracker_pb2.PropagationDirection, request.direction)
            except PromptError as error:
                raise invalid_prompt(error) from error
            if request.HasField("max_frames") and request.max_frames < 0:
                raise invalid_field("max_frames", f"{request.max_frames}: 0 or more frames after the start frame")
        timer = StageTimer()
        with self._slots.taken(), self._writing(request, context, timer) as writer:
            open_ = writer.open
            if resuming:
                propagation = self._resumed(request, open_)
                yield from self._replay(writer, propagation, request, fmt)
            else:
                propagation = self._planned(request, open_, direction)
                writer.commit()  # the plan first: another replica can resume it from its first frame on
            while propagation.done < len(propagation.order) and context.is_active():
                frame, reverse = propagation.order[propagation.done]
                with timer.stage("track"):
                    result = self._track(writer, propagation, frame, bool(reverse))
                metrics.MODEL_RUNS.labels(WORKER).inc()
                propagation.done += 1
                (objects,) = writer.commit([result])
                answer = self._frame(open_, frame, objects, fmt, timer)
                yield self._propagated(answer, propagation, request)
                timer = StageTimer()
                open_.timer = timer

    def _planned(self, request: tracker_pb2.PropagateRequest, open_: Open, direction: int) -> Propagation:
        objects = open_.session.state.objects
        ids = list(request.object_ids) or list(objects)
        for obj_id in ids:
            if obj_id not in objects:
                raise invalid_field(
                    "object_ids", f"object {obj_id} is not tracked in this session; objects: {list(objects)}"
                )
        prompted = [frame for obj_id in ids for frame in objects[obj_id].prompts]
        if not prompted:
            raise invalid_field("object_ids", str(NoPromptsError()))
        start = request.start_frame if request.HasField("start_frame") else min(prompted)
        self._check_frame(open_, start, "start_frame")
        if open_.record.live and not request.HasField("max_frames") and direction != 2:
            raise invalid_field("max_frames", "a live session's propagation forward needs max_frames")
        max_frames = request.max_frames if request.HasField("max_frames") else None
        order = plan(start, DIRECTIONS[direction], max_frames, len(open_.frame_ids))
        propagation = Propagation(secrets.token_hex(8), start, direction, ids, order)
        open_.record.propagation = propagation
        return propagation

    def _resumed(self, request: tracker_pb2.PropagateRequest, open_: Open) -> Propagation:
        propagation = open_.record.propagation
        if propagation is None or propagation.propagation_id != request.resume_propagation_id:
            raise invalid_field(
                "resume_propagation_id",
                f"propagation {request.resume_propagation_id} is not the session's "
                "last one (a prompt or a removal since ends it): start a new propagation",
            )
        if not 0 <= request.frames_received <= propagation.done:
            raise invalid_field(
                "frames_received", f"{request.frames_received}: the propagation committed {propagation.done} frames"
            )
        return propagation

    def _replay(
        self, writer: Writer, propagation: Propagation, request: tracker_pb2.PropagateRequest, fmt: int
    ) -> Iterator[tracker_pb2.PropagateResponse]:
        """The frames committed after the caller's last one, from the store."""
        for done in range(request.frames_received, propagation.done):
            frame = propagation.order[done][0]
            timer = StageTimer()
            size = writer.open.session.video_size
            objects = self._read(writer.store, writer.lease.session_id, size, [frame], propagation.object_ids)
            answer = self._frame(writer.open, frame, objects[frame], fmt, timer)
            yield tracker_pb2.PropagateResponse(
                frame=answer,
                propagation_id=propagation.propagation_id,
                frames_done=done + 1,
                frames_total=len(propagation.order),
                request_id=request.request_id,
            )

    @staticmethod
    def _track(writer: Writer, propagation: Propagation, frame: int, reverse: bool) -> FrameResult:
        """The plan's next frame, as the core's propagation runs it (a backward pass resumed at frame 0 too,
        where the core's `propagate` would start none)."""
        try:
            return writer.session.track(frame, reverse=reverse, obj_ids=propagation.object_ids)
        except TrackingError as error:
            raise core_refusal(error) from error

    def _propagated(
        self, answer: tracker_pb2.FrameResult, propagation: Propagation, request: Any
    ) -> tracker_pb2.PropagateResponse:
        return tracker_pb2.PropagateResponse(
            frame=answer,
            propagation_id=propagation.propagation_id,
            frames_done=propagation.done,
            frames_total=len(propagation.order),
            request_id=request.request_id,
        )

    def AppendFrames(
        self, request_iterator: Iterator[tracker_pb2.AppendFramesRequest], context: grpc.ServicerContext
    ) -> Iterator[tracker_pb2.AppendFramesResponse]:
        for request in request_iterator:
            fmt = self._mask_format(request.mask_format)
            timer = StageTimer()
            with self._slots.taken(), self._writing(request, context, timer) as writer:
                open_ = writer.open
                if not open_.record.live:
                    raise invalid_field("session_id", "frames are appended to a session created with `live` only")
                for frame_id in request.frame_ids:
                    yield self._append(writer, frame_id, fmt, request.request_id, timer)
                    timer = StageTimer()
                    open_.timer = timer

    def _append(
        self, writer: Writer, frame_id: str, fmt: int, request_id: str, timer: StageTimer
    ) -> tracker_pb2.AppendFramesResponse:
        open_ = writer.open
        frame = len(open_.frame_ids)
        try:
            check_image_id(frame_id)
            if frame >= self.settings.max_frames_per_session:
                raise limit_exceeded(
                    f"the session has {frame} frames, the most one may (--max-frames-per-session): open a new session",
                    "max_frames_per_session",
                )
            assert open_.values is not None
            head = open_.values.peek(self._kind, frame_id)
            if head is None:
                raise frame_not_encoded(frame, frame_id, self.model_id)
            if head.size != open_.session.video_size:
                raise invalid_field(
                    "frame_ids",
                    f"frame {frame_id} is {head.size[1]}x{head.size[0]}, the session's frames "
                    f"{open_.record.width}x{open_.record.height}",
                )
        except PromptError as error:
            return tracker_pb2.AppendFramesResponse(
                request_id=request_id, frame_id=frame_id, error=invalid_prompt(error).to_item_error()
            )
        except ServiceError as error:
            if error.reason == Reason.SESSION_LIMIT:
                raise
            return tracker_pb2.AppendFramesResponse(
                request_id=request_id, frame_id=frame_id, error=error.to_item_error()
            )
        open_.frame_ids.append(frame_id)
        results = []
        if open_.session.object_ids:
            with timer.stage("track"):
                results = [next(iter(open_.session.propagate(frame, direction="forward", max_frames=0)))]
            metrics.MODEL_RUNS.labels(WORKER).inc()
        try:
            answered = writer.commit(results, frames=[frame_id])
        except BaseException:
            open_.frame_ids.pop()
            raise
        answer = self._frame(open_, frame, answered[0] if answered else [], fmt, timer)
        return tracker_pb2.AppendFramesResponse(frame=answer, request_id=request_id, frame_id=frame_id)

    # -- reads -----------------------------------------------------------------------------------------------

    def ReadResults(
        self, request: tracker_pb2.ReadResultsRequest, context: grpc.ServicerContext
    ) -> Iterator[tracker_pb2.ReadResultsResponse]:
        fmt = self._mask_format(request.mask_format)
        sessions = self._sessions(request.session_id, context)
        journal = sessions.journal(request.session_id)
        record = self._record(sessions, request.session_id, journal.state)
        frame_ids = sessions.frame_ids(request.session_id)
        if not 0 <= request.start_frame < max(len(frame_ids), 1):
            raise invalid_field(
                "start_frame", f"frame {request.start_frame} is outside the video's {len(frame_ids)} frames"
            )
        if request.HasField("max_frames") and request.max_frames < 1:
            raise invalid_field("max_frames", f"{request.max_frames}: at least 1")
        stop = (
            len(frame_ids)
            if not request.HasField("max_frames")
            else min(len(frame_ids), request.start_frame + request.max_frames)
        )
        ids = list(request.object_ids) or list(journal.objects)
        for obj_id in ids:
            if obj_id not in journal.objects:
                raise invalid_field(
                    "object_ids", f"object {obj_id} is not tracked in this session; objects: {list(journal.objects)}"
                )
        sessions.touch(request.session_id, journal.objects)
        for first in range(request.start_frame, stop, _READ_CHUNK):
            if not context.is_active():
                return
            frames = list(range(first, min(first + _READ_CHUNK, stop)))
            found = self._read(sessions, request.session_id, (record.height, record.width), frames, ids)
            for frame in frames:
                if found[frame]:
                    answer = frame_result(
                        frame,
                        frame_ids[frame],
                        found[frame],
                        (record.height, record.width),
                        fmt,
                        self.settings.responses,
                        StageTimer(),
                    )
                    yield tracker_pb2.ReadResultsResponse(frame=answer, request_id=request.request_id)

    def _read(
        self, sessions: SessionStore, session_id: str, size: tuple[int, int], frames: Sequence[int], ids: Sequence[int]
    ) -> dict[int, list[StoredObject]]:
        """Stored results of `frames` for objects `ids` (each frame: the objects with a stored result)."""
        replies = sessions.results(session_id, {obj_id: [str(f) for f in frames] for obj_id in ids})
        found: dict[int, list[StoredObject]] = {frame: [] for frame in frames}
        try:
            for obj_id in ids:
                for frame, data in zip(frames, replies.get(obj_id, [None] * len(frames)), strict=True):
                    if data is not None:
                        found[frame].append(StoredObject.from_bytes(obj_id, data, size))
        except ValueError as error:
            raise sessions.corrupt(session_id, error) from error
        return found

    # -- shared ----------------------------------------------------------------------------------------------

    def _sessions(self, session_id: str, context: grpc.ServicerContext) -> SessionStore:
        if not is_session_id(session_id):
            raise invalid_field("session_id", "expected the 32 lowercase hex digits CreateSession returned")
        return self._tracking.sessions.for_tenant(tenant_of(context))

    def _writing(self, request: Any, context: grpc.ServicerContext, timer: StageTimer) -> Any:
        sessions = self._sessions(request.session_id, context)
        values = self.store.for_tenant(tenant_of(context))
        expected = request.expected_revision if request.HasField("expected_revision") else None
        return self._tracking.held.writing(
            sessions, values, request.session_id, expected, timer, lambda: not context.is_active()
        )

    def _record(self, sessions: SessionStore, session_id: str, data: bytes) -> SessionRecord:
        try:
            return SessionRecord.from_bytes(data)
        except ValueError as error:
            raise sessions.corrupt(session_id, error) from error

    def _mask_format(self, value: int) -> int:
        try:
            return require_enum("mask_format", decoder_pb2.MaskFormat, value)
        except PromptError as error:
            raise invalid_prompt(error) from error

    def _check_frame(self, open_: Open, frame: int, field: str = "frame_index") -> None:
        count = len(open_.frame_ids)
        if not 0 <= frame < count:
            raise invalid_field(field, f"frame {frame} is outside the video: frames are numbered 0..{count - 1}")

    def _frame(
        self, open_: Open, frame: int, objects: Sequence[StoredObject], fmt: int, timer: StageTimer
    ) -> tracker_pb2.FrameResult:
        answer = frame_result(
            frame, open_.frame_ids[frame], objects, open_.session.video_size, fmt, self.settings.responses, timer
        )
        answer.timings.milliseconds.update(timer.milliseconds)
        metrics.observe_stages(WORKER, timer.milliseconds)
        return answer

    def _held_info(self, session_id: str, open_: Open) -> tracker_pb2.SessionInfo:
        return self._info(session_id, open_.record, open_.revision, len(open_.frame_ids), open_.session.object_ids)

    def _info(
        self, session_id: str, record: SessionRecord, revision: int, frame_count: int, objects: Sequence[int]
    ) -> tracker_pb2.SessionInfo:
        info = tracker_pb2.SessionInfo(
            session_id=session_id,
            revision=revision,
            frame_count=frame_count,
            width=record.width,
            height=record.height,
            live=record.live,
            objects=[
                tracker_pb2.SessionObject(object_id=o, prompted_frames=record.prompted.get(o, [])) for o in objects
            ],
            expires_in_seconds=self._tracking.sessions.config.ttl_seconds,
            model_id=self.model_id,
        )
        if record.propagation is not None:
            p = record.propagation
            info.propagation.CopyFrom(
                tracker_pb2.Propagation(
                    propagation_id=p.propagation_id,
                    start_frame=p.start_frame,
                    direction=p.direction,  # type: ignore[arg-type]
                    frames_total=len(p.order),
                    frames_done=p.done,
                    object_ids=p.object_ids,
                )
            )
        return info
