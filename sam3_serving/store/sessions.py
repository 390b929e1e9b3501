"""Video sessions in Redis: what a tracking session needs between calls, shared by every replica.

A session is a handful of keys under one hash tag (`Keys.session`), so one Redis Cluster slot holds all of
it and one script may touch them together:

- "journal", a hash: `revision` (every committed change counts one), `objects` (the object ids, in the
  order they were first prompted), `state` (the tracker's record of prompts, memory index and
  propagation; opaque here, `sam3_serving.store.session_state` writes it);
- "frames": the frame ids, 32 raw bytes each, appended to as a live session grows;
- "bank:<object>", "results:<object>": hashes of one object's bounded memory and of its per-frame results;
- "lease": the one call writing the session now.

**Never evicted.** A session is not a cache: losing its journal loses a user's work. Its keys live on a
Redis that never evicts (`maxmemory-policy noeviction`, or no `maxmemory`), usually its own small one beside
the embedding cache's `allkeys-lru` Redis; `check_never_evicts` refuses any other at start-up. Every key
has the session's time to live, renewed by every change, so Redis itself deletes an abandoned session;
a full store refuses new writes (RESOURCE_EXHAUSTED / SESSION_LIMIT, `session_store_memory`) instead of
dropping old sessions.

**One writer.** A call that changes a session holds its lease (`SessionLease`: the renewed lock of
`encode_lock` under the session's "lease" key), taken within one lease TTL of a dead holder's death.
Every step is committed by one script that checks the lease's token and the revision the step started
from, applies the step's writes and deletions, counts the revision and renews every key's TTL: a step is
stored whole or not at all, and a writer that lost its lease (it stalled, another replica took over)
stores nothing.

**Per tenant.** Keys live in the caller's tenant namespace: another tenant's session id is simply not
found. The tenant's open sessions are counted in a sorted set scored by expiry (`max_sessions`).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import redis

from sam3_serving.errors import Reason, ServiceError
from sam3_serving.store.config import SessionStoreConfig
from sam3_serving.store.connection import UNAVAILABLE, Connection, wrong_type
from sam3_serving.store.encode_lock import EncodeLocks, HeldLock
from sam3_serving.store.keys import Keys
from sam3_serving.store.tenancy import TenantScoped

__all__ = [
    "Journal",
    "SessionLease",
    "SessionStore",
    "SessionsWouldBeEvictedError",
    "Step",
    "is_session_id",
    "revision_mismatch",
    "session_not_found",
]

log = logging.getLogger(__name__)

_ID_BYTES = 32  # a frame id (sha256) as stored in "frames"

# KEYS: lease, journal, frames, then the bank and results keys of every object the session has or drops.
# ARGV: lease token, the revision the step started from, TTL in ms, then operations on KEYS[i]:
# "hset" i field value | "hdel" i field | "append" i bytes | "del" i.
# The shebang makes Redis refuse the whole script up front when it is out of memory, before any write.
_COMMIT = """#!lua
local revision = redis.call('hget', KEYS[2], 'revision')
if not revision then return {'gone'} end
if redis.call('get', KEYS[1]) ~= ARGV[1] then return {'lease'} end
if revision ~= ARGV[2] then return {'revision', revision} end
local i = 4
while i <= #ARGV do
  local op, key = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
  if op == 'hset' then redis.call('hset', key, ARGV[i + 2], ARGV[i + 3]); i = i + 4
  elseif op == 'hdel' then redis.call('hdel', key, ARGV[i + 2]); i = i + 3
  elseif op == 'append' then redis.call('append', key, ARGV[i + 2]); i = i + 3
  elseif op == 'del' then redis.call('del', key); i = i + 2
  else return redis.error_reply('unknown operation ' .. op) end
end
local next = tonumber(revision) + 1
redis.call('hset', KEYS[2], 'revision', next)
for k = 2, #KEYS do redis.call('pexpire', KEYS[k], ARGV[3]) end
return {'ok', tostring(next)}
"""
# KEYS[1]: the tenant's sorted set of sessions. ARGV: session id, TTL in ms, max sessions.
# Expired members go first; a new member is admitted while fewer than max remain.
_ADMIT = """#!lua
local now = redis.call('time')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('zremrangebyscore', KEYS[1], '-inf', ms)
if redis.call('zcard', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('zadd', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('pexpire', KEYS[1], ARGV[2])
return 1
"""
# The same sorted set: an existing member's expiry moved on (a session in use).
_REFRESH = """#!lua
local now = redis.call('time')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if redis.call('zadd', KEYS[1], 'XX', 'CH', ms + tonumber(ARGV[2]), ARGV[1]) then
  redis.call('pexpire', KEYS[1], ARGV[2])
end
return 1
"""


def is_session_id(text: str) -> bool:
    """32 lowercase hex digits, as `SessionStore.create` makes them."""
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def session_not_found(session_id: str, why: str = "") -> ServiceError:
    """NOT_FOUND / SESSION_NOT_FOUND: one answer for never opened, closed, expired and another tenant's."""
    return ServiceError(
        grpc.StatusCode.NOT_FOUND,
        f"no video session {session_id}: it was never opened, was closed, or was idle past its time to live"
        + (f" ({why})" if why else "")
        + "; open a new one",
        Reason.SESSION_NOT_FOUND,
        session_id=session_id,
    )


class SessionsWouldBeEvictedError(RuntimeError):
    """The session store's Redis may evict keys: a worker must not start serving sessions on it."""


@dataclass(frozen=True)
class Journal:
    """A session's journal as stored: what every call reads first."""

    revision: int
    objects: tuple[int, ...]
    state: bytes
    frame_count: int


@dataclass
class Step:
    """What one committed step changes. Fields of a bank or results hash map to bytes, or None to delete."""

    state: bytes | None = None  # the journal's new state; None: unchanged
    objects: Sequence[int] | None = None  # the session's objects after the step; None: unchanged
    frames: Sequence[str] = ()  # frame ids appended
    bank: Mapping[int, Mapping[str, bytes | None]] = field(default_factory=dict)
    results: Mapping[int, Mapping[str, bytes | None]] = field(default_factory=dict)
    dropped: Sequence[int] = ()  # objects whose bank and results are deleted whole

    @property
    def nbytes(self) -> int:
        """Bytes the step sends to Redis (what `sam3 bench` reports per object-frame)."""
        values = [v for fields in (*self.bank.values(), *self.results.values()) for v in fields.values() if v]
        return len(self.state or b"") + _ID_BYTES * len(self.frames) + sum(len(v) for v in values)


class SessionLease:
    """The lease of one session held by one call: committing through it is what makes the call the writer."""

    def __init__(self, store: SessionStore, session_id: str, held: HeldLock) -> None:
        self.store = store
        self.session_id = session_id
        self.held = held
        self._indexed = time.monotonic()

    @property
    def token(self) -> str:
        return self.held.token

    def keep_counted(self) -> None:
        """A call longer than a quarter of the TTL keeps its session counted among the tenant's open ones."""
        if time.monotonic() - self._indexed > self.store.config.ttl_seconds / 4:
            self._indexed = time.monotonic()
            self.store.refresh(self.session_id)

    def release(self) -> None:
        """Let the next writer in; never raises (a lease that cannot be released expires by itself)."""
        self.held.release()

    def __enter__(self) -> SessionLease:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


class SessionStore(TenantScoped):
    """One model's video sessions in one Redis, as one tenant sees them (`for_tenant`). Thread-safe."""

    def __init__(self, config: SessionStoreConfig, model_id: str) -> None:
        self.config = config
        self.keys = Keys(config.key_prefix, model_id)
        self.connection = Connection(config.connection(), "session store")
        self.locks = EncodeLocks(  # the sessions' leases
            self.connection,
            self.keys,
            config.lease_ttl_seconds,
            key_of=lambda keys, session_id: keys.session(session_id, "lease"),
            what="session lease",
        )
        client = self.connection.client
        self._commit = client.register_script(_COMMIT)
        self._admit = client.register_script(_ADMIT)
        self._refresh = client.register_script(_REFRESH)
        self._ttl_ms = config.ttl_seconds * 1000

    def __repr__(self) -> str:
        tenant = f", tenant={self.tenant!r}" if self.tenant is not None else ""
        return f"SessionStore({self.connection.redacted_url}, model_id={self.model_id!r}{tenant})"

    def key(self, session_id: str, part: str) -> str:
        return self.keys.session(session_id, part)

    # -- start-up and health --------------------------------------------------------------------------------

    def check_never_evicts(self) -> None:
        """Refuse (SessionsWouldBeEvictedError) a Redis that may evict keys: sessions must outlive memory pressure.

        Read from INFO (CONFIG is often disabled on managed Redis); on a cluster, every primary must qualify.
        """
        client = self.connection.client
        try:
            if self.connection.cluster:
                replies = client.info("memory", target_nodes=redis.RedisCluster.PRIMARIES)  # type: ignore[call-arg]
            else:
                replies = client.info("memory")
        except UNAVAILABLE as error:
            raise self.connection.unavailable("INFO memory", error) from error
        nodes = [replies] if "maxmemory_policy" in replies else list(replies.values())
        for info in nodes:
            policy, limit = str(info.get("maxmemory_policy", "")), int(info.get("maxmemory", 0) or 0)
            if policy != "noeviction" and limit != 0:
                raise SessionsWouldBeEvictedError(
                    f"the session store {self.connection.redacted_url} may evict keys (maxmemory-policy {policy} with "
                    f"maxmemory {limit} bytes), and a video session must never be evicted: give sessions a Redis with "
                    "`maxmemory-policy noeviction` (--session-redis-url; the embedding cache keeps its own allkeys-lru "
                    "Redis) or one without maxmemory (docs/video.md)"
                )

    def check(self) -> bool:
        """True when Redis answers, else StoreUnavailableError saying why (what readiness reports)."""
        return self.connection.check()

    def close_connection(self) -> None:
        self.connection.close()

    # -- sessions -------------------------------------------------------------------------------------------

    def create(self, frame_ids: Sequence[str], state: bytes) -> str:
        """A new session at revision 1 with these frames and no objects; its id.

        RESOURCE_EXHAUSTED / SESSION_LIMIT (max_sessions) when the tenant has that many open already.
        """
        session_id = secrets.token_hex(16)
        admitted = self._run(
            "admit a session",
            self._admit,
            keys=[self.keys.sessions],
            args=[session_id, self._ttl_ms, self.config.max_sessions],
        )
        if not admitted:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.config.max_sessions} video sessions are open already (the most one caller may have, "
                "--max-sessions): close one (CloseSession) or let one expire",
                Reason.SESSION_LIMIT,
                limit="max_sessions",
            )
        journal, frames = self.key(session_id, "journal"), self.key(session_id, "frames")

        def write(pipe: Any) -> None:
            pipe.hset(journal, mapping={"revision": 1, "objects": "", "state": state})
            pipe.set(frames, _pack(frame_ids), px=self._ttl_ms)
            pipe.pexpire(journal, self._ttl_ms)

        try:
            self._pipeline("create a session", write)
        except ServiceError:
            self._forget(session_id)
            raise
        return session_id

    def journal(self, session_id: str) -> Journal:
        """The session's journal; NOT_FOUND / SESSION_NOT_FOUND when there is none (or it is not one we wrote)."""

        journal, frames = self.key(session_id, "journal"), self.key(session_id, "frames")
        try:
            fields, length = self._pipeline("read a session", lambda pipe: (pipe.hgetall(journal), pipe.strlen(frames)))
        except _WrongType as error:
            raise self.corrupt(session_id, error) from error
        if not fields:
            raise session_not_found(session_id)
        try:
            objects = tuple(int(o) for o in fields[b"objects"].decode().split(",") if o)
            return Journal(int(fields[b"revision"]), objects, fields[b"state"], length // _ID_BYTES)
        except (KeyError, ValueError) as error:
            raise self.corrupt(session_id, error) from error

    def frame_ids(self, session_id: str, start: int = 0, stop: int | None = None) -> list[str]:
        """The ids of frames start..stop-1 (to the last frame when stop is None)."""
        end = -1 if stop is None else stop * _ID_BYTES - 1
        if stop is not None and stop <= start:
            return []
        frames = self.key(session_id, "frames")
        packed = self._run("read frame ids", self.connection.client.getrange, frames, start * _ID_BYTES, end)
        return _unpack(cast(bytes, packed))

    def bank(self, session_id: str, object_ids: Iterable[int]) -> dict[int, dict[str, bytes]]:
        """Every field of these objects' banks (their whole bounded memory), in one round trip."""
        ids = list(object_ids)
        keys = [self.key(session_id, f"bank:{object_id}") for object_id in ids]
        try:
            replies = self._pipeline("read a session's memory", lambda pipe: [pipe.hgetall(key) for key in keys])
        except _WrongType as error:
            raise self.corrupt(session_id, error) from error
        return {o: {k.decode(): v for k, v in reply.items()} for o, reply in zip(ids, replies, strict=True)}

    def results(self, session_id: str, wanted: Mapping[int, Sequence[str]]) -> dict[int, list[bytes | None]]:
        """Stored results: for each object, the values of the fields asked for (None where absent)."""
        ids = [o for o, fields in wanted.items() if fields]

        def read(pipe: Any) -> None:
            for object_id in ids:
                pipe.hmget(self.key(session_id, f"results:{object_id}"), list(wanted[object_id]))

        try:
            replies = self._pipeline("read a session's results", read)
        except _WrongType as error:
            raise self.corrupt(session_id, error) from error
        return dict(zip(ids, replies, strict=True))

    def lease(
        self, session_id: str, *, wait_seconds: float | None = None, cancelled: Callable[[], bool] = lambda: False
    ) -> SessionLease:
        """Become the session's one writer, waiting up to `wait_seconds` (default: one lease TTL and a bit, which
        outlasts a dead holder) for another call to let go. ABORTED / SESSION_BUSY when it does not."""
        wait = self.config.lease_ttl_seconds * 1.2 if wait_seconds is None else wait_seconds
        held = self.locks.take_waiting(session_id, wait, cancelled=cancelled)
        if held is None:
            raise ServiceError(
                grpc.StatusCode.ABORTED,
                f"video session {session_id} is being written by another call (e.g. a propagation, on this or another "
                "replica): wait for it to end or cancel it, then retry",
                Reason.SESSION_BUSY,
                session_id=session_id,
            )
        self.refresh(session_id)
        return SessionLease(self, session_id, held)

    def commit(self, lease: SessionLease, revision: int, step: Step, objects: Sequence[int]) -> int:
        """Store `step` if `lease` still holds the session and it is still at `revision`; the new revision.

        `objects`: every object the session has after the step (their keys' TTLs are renewed with the rest).
        NOT_FOUND when the session is gone (closed, expired), ABORTED / SESSION_BUSY when the lease was lost,
        FAILED_PRECONDITION / REVISION_MISMATCH when someone else committed meanwhile; nothing is written then.
        """
        session_id = lease.session_id
        keys = [self.key(session_id, part) for part in ("lease", "journal", "frames")]
        index: dict[str, int] = {}

        def slot(part: str) -> int:
            if part not in index:
                keys.append(self.key(session_id, part))
                index[part] = len(keys)
            return index[part]

        for object_id in (*objects, *step.dropped):
            slot(f"bank:{object_id}")
            slot(f"results:{object_id}")
        operations: list[Any] = []
        if step.state is not None:
            operations += ["hset", 2, "state", step.state]
        if step.objects is not None:
            operations += ["hset", 2, "objects", ",".join(map(str, step.objects))]
        if step.frames:
            operations += ["append", 3, _pack(step.frames)]
        for part, changes in (("bank", step.bank), ("results", step.results)):
            for object_id, fields in changes.items():
                at = slot(f"{part}:{object_id}")
                for name, value in fields.items():
                    operations += ["hset", at, name, value] if value is not None else ["hdel", at, name]
        for object_id in step.dropped:
            operations += ["del", slot(f"bank:{object_id}"), "del", slot(f"results:{object_id}")]
        reply = self._run(
            "commit a step", self._commit, keys=keys, args=[lease.token, revision, self._ttl_ms, *operations]
        )
        outcome = [part.decode() if isinstance(part, bytes) else str(part) for part in reply]
        if outcome[0] == "ok":
            lease.keep_counted()
            return int(outcome[1])
        if outcome[0] == "gone":
            raise session_not_found(session_id, "closed while this call was writing it")
        if outcome[0] == "lease":
            raise ServiceError(
                grpc.StatusCode.ABORTED,
                f"this call lost video session {session_id}'s lease (it stalled past --session-lease-seconds and "
                "another call took the session over): nothing of this step was stored; retry",
                Reason.SESSION_BUSY,
                session_id=session_id,
            )
        raise revision_mismatch(session_id, int(outcome[1]), revision)

    def touch(self, session_id: str, objects: Sequence[int]) -> None:
        """Renew every key's TTL: a session that is read is in use."""
        parts = ["journal", "frames", *(f"{p}:{o}" for o in objects for p in ("bank", "results"))]
        keys = [self.key(session_id, part) for part in parts]
        self._pipeline("renew a session", lambda pipe: [pipe.pexpire(key, self._ttl_ms) for key in keys])
        self.refresh(session_id)

    def refresh(self, session_id: str) -> None:
        """Keep the session counted among the tenant's open ones for another TTL."""
        self._run("count a session", self._refresh, keys=[self.keys.sessions], args=[session_id, self._ttl_ms])

    def delete(self, session_id: str) -> int | None:
        """Delete the session and everything stored for it (its lease too: a writer's next commit fails);
        the revision it had, or None when there was none (or it was unreadable)."""
        key = self.key(session_id, "journal")
        try:
            revision, objects = self._run("read a session", self.connection.client.hmget, key, ["revision", "objects"])
            object_ids = [int(o) for o in (objects or b"").decode().split(",") if o]
        except (_WrongType, ValueError):
            revision, object_ids = None, []  # its bank and results keys expire with their TTL
        parts = ["journal", "frames", "lease", *(f"{p}:{o}" for o in object_ids for p in ("bank", "results"))]
        self._run("delete a session", self.connection.client.delete, *(self.key(session_id, part) for part in parts))
        self._forget(session_id)
        try:
            return int(revision) if revision is not None else None
        except ValueError:
            return None

    # -- internals ------------------------------------------------------------------------------------------

    def _forget(self, session_id: str) -> None:
        self._run("uncount a session", self.connection.client.zrem, self.keys.sessions, session_id)

    def corrupt(self, session_id: str, why: BaseException) -> ServiceError:
        """A session whose keys are not what we write: deleted, and answered as not found (it cannot be used)."""
        log.warning(
            "deleting video session %s: its stored state is unreadable: %s",
            session_id,
            why,
            extra={"tenant": self.tenant},
        )
        self.delete(session_id)
        return session_not_found(session_id, "its stored state was unreadable and has been deleted")

    def _pipeline(self, operation: str, fill: Callable[[Any], object]) -> list[Any]:
        """The replies of the commands `fill(pipe)` queues, run as one MULTI/EXEC (one session: one slot)."""

        def run() -> list[Any]:
            with self.connection.client.pipeline(transaction=True) as pipe:
                fill(pipe)
                return cast(list[Any], pipe.execute(raise_on_error=False))

        replies = self._run(operation, run)
        for reply in replies:
            if isinstance(reply, Exception):
                self._run(operation, _raise, reply)
        return replies

    def _run(self, operation: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One Redis exchange with the store's failure policy: a full store is SESSION_LIMIT, a key of another
        type `_WrongType`, anything else UNAVAILABLE / STORE_UNAVAILABLE."""
        try:
            return call(*args, **kwargs)
        except UNAVAILABLE as error:
            if wrong_type(error):
                raise _WrongType(str(error)) from error
            if isinstance(error, redis.exceptions.OutOfMemoryError) or str(error).startswith("OOM"):
                raise ServiceError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the session store is full ({operation} refused: {error}); close sessions or give it more memory",
                    Reason.SESSION_LIMIT,
                    limit="session_store_memory",
                ) from error
            raise self.connection.unavailable(operation, error) from error


def _raise(error: Exception) -> None:
    raise error


class _WrongType(Exception):
    """A session key holding another Redis type: nothing we wrote."""


def revision_mismatch(session_id: str, current: int, expected: int) -> ServiceError:
    """FAILED_PRECONDITION / REVISION_MISMATCH naming the session's revision now."""
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"video session {session_id} is at revision {current}, not {expected}: another client changed it; "
        "read it again (DescribeSession) and retry",
        Reason.REVISION_MISMATCH,
        session_id=session_id,
        revision=str(current),
        expected_revision=str(expected),
    )


def _pack(frame_ids: Sequence[str]) -> bytes:
    return b"".join(bytes.fromhex(frame_id) for frame_id in frame_ids)


def _unpack(packed: bytes) -> list[str]:
    return [packed[i : i + _ID_BYTES].hex() for i in range(0, len(packed) - _ID_BYTES + 1, _ID_BYTES)]
