"""The video sessions one replica holds in memory, and the one way a call changes a session: under its lease,
committed to the session store before it is answered.

A session belongs to the store (`sam3_serving.store.sessions`); a replica keeps a copy of the ones it served
last (a `TrackingSession` at a revision) so the next call on it reads only the journal's revision. Any other
replica's write moves the revision on, and the copy is then read again from the store: whichever replica
serves a call continues from the last committed step, which is what makes a takeover exact. At most
`capacity` sessions are held (--max-sessions-per-worker); the one loaded longest ago and not being written
makes room (it costs one read of the store when it comes back), and when every one is being written a new
one is refused (RESOURCE_EXHAUSTED / SESSION_LIMIT).

`Writer` is one call's hold on a session: the lease (one writer in the fleet), the copy, and `commit`, which
stores the step (the objects' changed memory fields, the frame's results, the journal record) in one script
that checks the lease and the revision. A call that fails drops the copy: its state may be half-changed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from decoder_service.tracking_answer import StoredObject, stored
from decoder_service.tracking_state import SessionRecord, StoredFields, restore
from sam3_core.embeddings import ImageEmbeddings
from sam3_core.timing import StageTimer
from sam3_core.tracking import FrameResult, SessionState, TrackingSession, VideoGraphs
from sam3_serving.errors import Reason, ServiceError
from sam3_serving.store import Kind, SessionLease, SessionStore, Step, ValueStore
from sam3_serving.store.sessions import revision_mismatch

__all__ = ["HeldSessions", "Open", "Writer", "frame_not_encoded"]


def frame_not_encoded(frame: int, frame_id: str, model_id: str) -> ServiceError:
    """NOT_FOUND / EMBEDDING_NOT_FOUND for a frame of a session, naming its index and id."""
    return ServiceError(
        grpc.StatusCode.NOT_FOUND,
        f"frame {frame} (image {frame_id}) is not encoded under model {model_id}: encode it (EncodeBatch) and retry",
        Reason.EMBEDDING_NOT_FOUND,
        image_id=frame_id,
        frame=str(frame),
        model_id=model_id,
    )


class Open:
    """A session as this replica holds it: the core's session at `revision`, its frames and record."""

    def __init__(
        self,
        graphs: VideoGraphs,
        kind: Kind[ImageEmbeddings],
        record: SessionRecord,
        frame_ids: list[str],
        revision: int,
        state: SessionState | None = None,
    ) -> None:
        self.record = record
        self.frame_ids = frame_ids
        self.revision = revision
        self.values: ValueStore | None = None  # the calling tenant's, set by each call
        self.timer = StageTimer()  # the calling answer's, set by each call
        self._kind = kind
        self.session = TrackingSession(
            graphs, self.frame, video_size=(record.height, record.width), num_frames=self.num_frames, state=state
        )
        self.fields = StoredFields(self.session.state)

    @property
    def num_frames(self) -> int | None:
        """The core's video length: None for a live session, whose length grows."""
        return None if self.record.live else len(self.frame_ids)

    def frame(self, index: int) -> ImageEmbeddings:
        """The core's FrameSource: frame `index`'s embeddings, fetched from the store and not kept."""
        frame_id = self.frame_ids[index]
        assert self.values is not None, "a call sets its tenant's value store before running the session"
        with self.timer.stage("fetch"):
            lookup = self.values.get(self._kind, frame_id)
        if lookup.value is None:
            raise frame_not_encoded(index, frame_id, self.values.model_id)
        return lookup.value


@dataclass
class Writer:
    """One call's hold on a session: its lease and the replica's copy."""

    store: SessionStore
    lease: SessionLease
    open: Open

    @property
    def session(self) -> TrackingSession:
        return self.open.session

    def commit(self, results: Sequence[FrameResult] = (), frames: Sequence[str] = ()) -> list[list[StoredObject]]:
        """Store the session as it is now, with these frames' results and appended frame ids; the results as
        stored (each at the new revision). Raises what `SessionStore.commit` raises; nothing is stored then."""
        open_ = self.open
        state = open_.session.state
        revision = open_.revision + 1
        answered = [stored(result.objects, revision) for result in results]
        changes = open_.fields.changes(state)
        frame_results: dict[int, dict[str, bytes | None]] = {}
        for result, objects in zip(results, answered, strict=True):
            for obj in objects:
                frame_results.setdefault(obj.object_id, {})[str(result.frame)] = obj.to_bytes()
        open_.record.prompted = {obj_id: list(obj.prompts) for obj_id, obj in state.objects.items()}
        step = Step(
            state=open_.record.to_bytes(),
            objects=list(state.objects),
            frames=list(frames),
            bank=changes.writes,
            results=frame_results,
            dropped=changes.dropped,
        )
        with open_.timer.stage("commit"):
            open_.revision = self.store.commit(self.lease, open_.revision, step, list(state.objects))
        open_.fields.committed(changes)
        return answered


class HeldSessions:
    """The sessions this replica holds, at most `capacity`, keyed by tenant and session id. Thread-safe."""

    def __init__(self, graphs: VideoGraphs, kind: Kind[ImageEmbeddings], capacity: int) -> None:
        self.graphs = graphs
        self.kind = kind
        self.capacity = capacity
        self._held: dict[tuple[str | None, str], Open] = {}  # in the order they were loaded
        self._writing: set[tuple[str | None, str]] = set()
        self._lock = threading.Lock()

    def hold(self, store: SessionStore, session_id: str, open_: Open) -> None:
        """Keep a session just created."""
        with self._lock:
            self._make_room()
            self._held[(store.tenant, session_id)] = open_

    def forget(self, store: SessionStore, session_id: str) -> None:
        with self._lock:
            self._held.pop((store.tenant, session_id), None)

    @contextmanager
    def writing(
        self,
        store: SessionStore,
        values: ValueStore,
        session_id: str,
        expected_revision: int | None,
        timer: StageTimer,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[Writer]:
        """The session's lease and copy for one call that changes it. FAILED_PRECONDITION / REVISION_MISMATCH
        when `expected_revision` is not the session's; the copy is dropped when the call fails."""
        key = (store.tenant, session_id)
        with timer.stage("lease"):
            lease = store.lease(session_id, cancelled=cancelled)
        with lease:
            journal = store.journal(session_id)
            if expected_revision is not None and expected_revision != journal.revision:
                raise revision_mismatch(session_id, journal.revision, expected_revision)
            with self._lock:
                open_ = self._held.get(key)
                if open_ is None or open_.revision != journal.revision:
                    self._held.pop(key, None)
                    self._make_room()
                    open_ = None
                self._writing.add(key)
            try:
                if open_ is None:
                    with timer.stage("load"):
                        open_ = self._load(store, session_id, journal.revision, journal.objects, journal.state)
                open_.values, open_.timer = values, timer
                yield Writer(store, lease, open_)
            except BaseException:
                with self._lock:
                    self._held.pop(key, None)
                raise
            else:
                with self._lock:
                    self._held[key] = open_
            finally:
                with self._lock:
                    self._writing.discard(key)

    def _load(self, store: SessionStore, session_id: str, revision: int, objects: Sequence[int], data: bytes) -> Open:
        try:
            record = SessionRecord.from_bytes(data)
            frame_ids = store.frame_ids(session_id)
            state = restore(record, None if record.live else len(frame_ids), objects, store.bank(session_id, objects))
            return Open(self.graphs, self.kind, record, frame_ids, revision, state)
        except (ValueError, KeyError) as error:  # the core's StateFormatError is a ValueError too
            raise store.corrupt(session_id, error) from error

    def _make_room(self) -> None:
        """Drop the idle session loaded longest ago while at capacity (the store keeps it); SESSION_LIMIT when
        every held session is being written. Called with the lock held."""
        while len(self._held) >= self.capacity:
            idle = next((key for key in self._held if key not in self._writing), None)
            if idle is None:
                raise ServiceError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this worker is writing {self.capacity} video sessions already (--max-sessions-per-worker): "
                    "retry with backoff, or on another replica",
                    Reason.SESSION_LIMIT,
                    limit="max_sessions_per_worker",
                )
            del self._held[idle]
