"""`ValueStore`: the values one model computes, one Redis value per (kind, subject), shared by every replica.

Nothing read from Redis is trusted beyond its checks: a value must name its kind, this model and its
subject, and have the tensor shapes the loaded model takes; anything else (another image's value under
this key, a corrupted header, a key of another Redis type) is deleted and reported as CORRUPT, never
raised, so the next encode replaces it. Every key has a TTL; the server's `maxmemory` + `allkeys-lru`
does the rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, NamedTuple, TypeVar, cast

from sam3_core.embeddings import ValueFormatError, ValueHead, deserialize, head_size, read_head, serialize
from sam3_serving.outcome import Outcome
from sam3_serving.store.announcements import Announcements
from sam3_serving.store.config import DTYPES, StoreConfig
from sam3_serving.store.connection import BACKOFF_MAX, BACKOFF_START, UNAVAILABLE, Connection, wrong_type
from sam3_serving.store.encode_lock import EncodeLocks
from sam3_serving.store.keys import Keys
from sam3_serving.store.kinds import Kind
from sam3_serving.store.tenancy import TenantScoped

__all__ = ["Lookup", "ValueStore", "Waited"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Lookup(Generic[T]):
    """What `ValueStore.get` found (REDIS), or why not (MISS, CORRUPT); its size; how long it took (GET + checks)."""

    value: T | None
    outcome: Outcome
    nbytes: int
    seconds: float


class Waited(NamedTuple):
    """How a wait for another worker's encode ended (the outcomes are sam3_single_flight_waits_total's labels)."""

    head: ValueHead | None  # the value's checked head once it appeared
    outcome: Literal["ready", "holder_failed", "timeout", "cancelled"]


class ValueStore(TenantScoped):
    """One model's values in Redis by kind, their encode locks and the announcements of their rewrites.

    Thread-safe: one redis-py client whose connection pool hands each thread its own connection.
    """

    def __init__(self, config: StoreConfig, model_id: str) -> None:
        self.config = config
        self.keys = Keys(config.key_prefix, model_id)
        self.connection = Connection(config)
        self.locks = EncodeLocks(self.connection, self.keys, config.lock_ttl_seconds)
        self.announcements = Announcements(self.connection, self.keys.channel)

    def __repr__(self) -> str:
        tenant = f", tenant={self.tenant!r}" if self.tenant is not None else ""
        return f"ValueStore({self.config.redacted_url}, model_id={self.model_id!r}, dtype={self.config.dtype}{tenant})"

    def key(self, kind: Kind[Any], subject: str) -> str:
        return self.keys.value(kind.name, subject)

    # -- values -------------------------------------------------------------------------------------------

    def get(self, kind: Kind[T], subject: str) -> Lookup[T]:
        """Fetch and check a value. A corrupt or foreign one is deleted and reported, never raised.

        The tensors are read-only views of the bytes object hiredis built from the reply: the payload is
        not copied again after it leaves the socket (unless the kind converts it).
        """
        expected = self._expected(kind, subject)
        started = time.perf_counter()
        try:
            blob = cast(bytes | None, self.connection.client.get(self.key(kind, subject)))  # bytes: no decoding
        except UNAVAILABLE as error:
            if not wrong_type(error):
                raise self.connection.unavailable("GET", error) from error
            self._discard(kind, subject, error)  # not a string: nothing we wrote
            return Lookup(None, Outcome.CORRUPT, 0, time.perf_counter() - started)
        if blob is None:
            return Lookup(None, Outcome.MISS, 0, time.perf_counter() - started)
        try:
            value = kind.value(deserialize(blob, **expected))
        except ValueFormatError as error:
            self._discard(kind, subject, error)
            return Lookup(None, Outcome.CORRUPT, len(blob), time.perf_counter() - started)
        return Lookup(value, Outcome.REDIS, len(blob), time.perf_counter() - started)

    def peek(self, kind: Kind[Any], subject: str) -> ValueHead | None:
        """The value's checked head alone (about 200 bytes, not the megabytes behind it), or None when absent.

        The head is checksummed and must name this kind, model and subject with the model's shapes; a
        value that fails is deleted and reported as absent, so the caller encodes again. The payload is
        not checked here: `get` does that.
        """
        try:
            head = cast(
                bytes, self.connection.client.getrange(self.key(kind, subject), 0, self._head_size(kind, subject) - 1)
            )
        except UNAVAILABLE as error:
            if not wrong_type(error):
                raise self.connection.unavailable("GETRANGE", error) from error
            self._discard(kind, subject, error)
            return None
        if not head:
            return None
        try:
            return self._checked_head(kind, subject, head)
        except ValueFormatError as error:
            self._discard(kind, subject, error)
            return None

    def put(self, kind: Kind[T], subject: str, value: T) -> int:
        """Store the value at its kind's dtype, with its kind's TTL (else the store's), announcing the write if
        the kind is announced.

        Returns the bytes written. The announcement is best effort: a decoder that misses it (it was
        disconnected) drops its whole local cache when it reconnects.
        """
        stored = kind.stored(value, self.model_id, subject)
        blob = serialize(stored.astype(DTYPES[kind.dtype or self.config.dtype]))
        key, ttl = self.key(kind, subject), kind.ttl_seconds or self.config.ttl_seconds
        if kind.announced:
            self.announcements.set(key, blob, ttl)
            return len(blob)
        try:
            self.connection.client.set(key, blob, ex=ttl)
        except UNAVAILABLE as error:
            raise self.connection.unavailable("SET", error) from error
        return len(blob)

    def delete(self, kind: Kind[Any], subject: str) -> None:
        """Remove the value (absent is fine)."""
        try:
            self.connection.client.delete(self.key(kind, subject))
        except UNAVAILABLE as error:
            raise self.connection.unavailable("DEL", error) from error

    def wait_for(
        self, kind: Kind[Any], subject: str, timeout: float, *, cancelled: Callable[[], bool] = lambda: False
    ) -> Waited:
        """Wait for another worker's encode of `subject`: "ready" with the head when its value of `kind` appears.

        Ends early without a head when the encode lock is gone without a value ("holder_failed": the
        holder failed, died and its lock expired, or never existed: the caller should encode itself),
        when `timeout` seconds pass ("timeout"), or when `cancelled()` turns true ("cancelled"). Each poll
        reads the head and the lock in one MULTI/EXEC (one cluster slot: the hash tag), so "lock gone, no
        value" is a consistent snapshot (the holder writes before it releases), not a race.
        """
        key, lock_key, length = self.key(kind, subject), self.locks.key(subject), self._head_size(kind, subject)
        deadline = time.monotonic() + timeout
        delay = BACKOFF_START
        while True:
            try:
                with self.connection.client.pipeline(transaction=True) as pipe:
                    pipe.getrange(key, 0, length - 1)
                    pipe.exists(lock_key)
                    head, locked = pipe.execute(raise_on_error=False)
            except UNAVAILABLE as error:
                raise self.connection.unavailable("wait for value", error) from error
            if isinstance(locked, Exception):
                raise self.connection.unavailable("wait for value", locked)
            if isinstance(head, bytes) and head:  # else absent, or WRONGTYPE: the holder will overwrite it
                try:
                    return Waited(self._checked_head(kind, subject, head), "ready")
                except ValueFormatError:
                    pass  # a bad value the holder is about to replace
            if not locked:
                return Waited(None, "holder_failed")
            if cancelled():
                return Waited(None, "cancelled")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Waited(None, "timeout")
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, BACKOFF_MAX)

    # -- health -------------------------------------------------------------------------------------------

    def check(self) -> bool:
        """True when Redis answers, else StoreUnavailableError saying why (what readiness reports)."""
        return self.connection.check()

    def ping(self) -> bool:
        """Whether Redis answers right now; never raises."""
        return self.connection.ping()

    def close(self) -> None:
        """Close pooled connections (a later call reconnects)."""
        self.connection.close()

    # -- checks -------------------------------------------------------------------------------------------

    def _expected(self, kind: Kind[Any], subject: str) -> dict[str, Any]:
        """What a value under this key must say of itself (`ValueHead.check`'s arguments)."""
        shapes = kind.expected_shapes()
        return {"kind": kind.name, "model_id": self.model_id, "subject": subject, "shapes": shapes, "sized": kind.sized}

    def _head_size(self, kind: Kind[Any], subject: str) -> int:
        return head_size(kind.name, self.model_id, subject, kind.expected_shapes())

    def _checked_head(self, kind: Kind[Any], subject: str, prefix: bytes) -> ValueHead:
        head = read_head(prefix)
        head.check(**self._expected(kind, subject))
        return head

    def _discard(self, kind: Kind[Any], subject: str, why: BaseException) -> None:
        """Delete a value that failed its checks (a concurrent re-put lost with it costs one re-encode)."""
        log.warning("deleting the stored %s value of %s: %s", kind.name, subject, why, extra={"tenant": self.tenant})
        self.delete(kind, subject)
