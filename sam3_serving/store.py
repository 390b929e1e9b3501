"""The embedding store: one Redis value per (model, image), shared by every encoder and decoder replica.

Redis is a cache here (docs/architecture.md): losing it costs re-encodes, never correctness. So
- every value is self-checking (`sam3_core.embeddings`); one that fails its checks is deleted and
  reported as a miss-like outcome ("corrupt") so the next encode replaces it;
- every key has a TTL; the server's `maxmemory` + `allkeys-lru` does the rest;
- every call is bounded by `socket_timeout` and retried at most once, and only on a connection
  error (a stale pooled connection after a Redis restart fails instantly; the retry reconnects).
  A dead or unreachable Redis surfaces as `StoreUnavailableError` within about one timeout, never a
  hang, and the same store object works again once Redis is back.

Keys wrap `<model-id>:<image-id>` in a hash tag so the value and its lock live in one Redis Cluster
slot (MULTI/EXEC and scripts over both stay legal there). Which client (one server or a cluster) the
URL asks for is `sam3_serving.redis_client`'s business. A store scoped to a tenant (`for_tenant`)
puts `tenant:<name>:` in front, so tenants share nothing: not values, not locks, not the fact that an
image was ever encoded.

Nothing read from Redis is trusted beyond its checks: a value must name this model and this image and
have the tensor shapes the loaded model takes; anything else (another image's value under this key, a
corrupted header, a key of another Redis type) is deleted and reported as "corrupt", never raised.

The encode lock follows its holder's liveness: a short TTL (`lock_ttl_seconds`) that a background
heartbeat renews while the encode runs, so a SIGKILLed holder or one cut off from Redis lets go
within one TTL; a release that fails is retried in the background until the TTL would free it anyway.

Every write of a value is announced on a pub/sub channel, so decoders drop their local copy
(`listen_for_replacements`); the click path itself never asks Redis anything when the local cache hits.
"""

from __future__ import annotations

import copy
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import grpc
import numpy as np
import redis

from sam3_core.embeddings import (
    FORMAT_VERSION,
    EmbeddingFormatError,
    ExpectedShape,
    ImageEmbeddings,
    deserialize,
    head_size,
    read_head,
    serialize,
)
from sam3_serving.errors import Reason, ServiceError
from sam3_serving.redis_client import SCHEMES, connect, is_cluster_url

__all__ = [
    "DETECTOR_KIND",
    "TEXT_KIND",
    "EmbeddingStore",
    "HeldLock",
    "Lookup",
    "StoreConfig",
    "StoreUnavailableError",
    "Waited",
    "redact_url",
]

log = logging.getLogger(__name__)
# Value kinds besides the tracker's embeddings ("emb"): the concept detector's features per image, and
# text features per phrase (keyed by the sha256 of the phrase's token ids instead of an image id).
DETECTOR_KIND = "det"
TEXT_KIND = "txt"

_DTYPES = {"float16": np.float16, "float32": np.float32}
_BACKOFF_START = 0.010
_BACKOFF_MAX = 0.100
# Compare-and-delete / compare-and-extend: only the holder (who knows the random token) may touch a lock.
_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""
_RENEW_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
# Errors that mean "Redis cannot serve us right now" (unreachable, timeout, auth, loading, full,
# read-only replica after a failover...): callers get one exception type to turn into UNAVAILABLE.
# The one ResponseError that is about the key, not the server, is WRONGTYPE (see `_wrong_type`).
_UNAVAILABLE = (redis.exceptions.RedisError,)
TENANT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _wrong_type(error: BaseException) -> bool:
    """Whether Redis refused because the key holds another type (nothing we wrote: a corrupt value)."""
    return isinstance(error, redis.exceptions.ResponseError) and str(error).startswith("WRONGTYPE")


class StoreUnavailableError(ServiceError):
    """Redis could not answer (down, timeout, refused credentials...). The message names the URL, never the password.

    A ServiceError: wherever it escapes a servicer, the call (or the stream item) ends UNAVAILABLE /
    STORE_UNAVAILABLE, since an embedding nobody can fetch is of no use (docs/architecture.md).
    """

    def __init__(self, message: str) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE, f"embedding store unavailable: {message}", Reason.STORE_UNAVAILABLE
        )


def redact_url(url: str) -> str:
    """The URL with any password (userinfo or `?password=` query) replaced by `***`: safe for logs and errors."""
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            userinfo, _, hostinfo = parts.netloc.rpartition("@")
            netloc = f"{userinfo.split(':', 1)[0]}:***@{hostinfo}"
            url = url.replace(f"//{parts.netloc}", f"//{netloc}", 1)
        if parts.query:
            pairs = parse_qsl(parts.query, keep_blank_values=True)
            if any(k.lower() == "password" for k, _ in pairs):
                query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*")
                url = url.replace(f"?{parts.query}", f"?{query}", 1)
        return url
    except ValueError:
        return "<unparseable Redis URL>"


@dataclass(frozen=True)
class StoreConfig:
    """Where and how embeddings are stored. `url` may carry credentials; `repr()` never shows them."""

    url: str  # redis://, rediss:// (TLS), unix://, redis+cluster://; user/password in the URL
    ttl_seconds: int = 7 * 24 * 3600
    dtype: str = "float32"  # exact parity; float16 halves memory and transfer (see docs/model-contract.md)
    key_prefix: str = "sam3"
    socket_timeout: float = 2.0  # bounds every call: a dead Redis never hangs a request
    lock_ttl_seconds: float = 10.0  # renewed while the holder encodes; a dead holder's lock frees after this

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"store dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.ttl_seconds <= 0 or self.socket_timeout <= 0 or self.lock_ttl_seconds <= 0:
            raise ValueError("ttl_seconds, socket_timeout and lock_ttl_seconds must be positive")
        if urlsplit(self.url).scheme not in SCHEMES:
            expected = ", ".join(f"{scheme}://" for scheme in SCHEMES)
            raise ValueError(f"store URL must start with one of {expected}; got {redact_url(self.url)!r}")

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        return (
            f"StoreConfig(url={self.redacted_url!r}, ttl_seconds={self.ttl_seconds}, dtype={self.dtype!r}, "
            f"key_prefix={self.key_prefix!r}, socket_timeout={self.socket_timeout}, "
            f"lock_ttl_seconds={self.lock_ttl_seconds})"
        )


@dataclass(frozen=True)
class Lookup:
    """The result of `EmbeddingStore.get`: what was found, how big it was, how long it took (GET + checks)."""

    embeddings: ImageEmbeddings | None
    outcome: Literal["hit", "miss", "corrupt"]
    nbytes: int
    seconds: float


class Waited(NamedTuple):
    """How a wait for another worker's encode ended (the outcomes are sam3_single_flight_waits_total's labels)."""

    size: tuple[int, int] | None  # (height, width) once the value appeared
    outcome: Literal["ready", "holder_failed", "timeout", "cancelled"]


class EmbeddingStore:
    """Embeddings of one model in Redis, plus the short lock that makes concurrent encodes run once.

    Thread-safe: one redis-py client whose connection pool hands each thread its own connection.
    """

    def __init__(self, config: StoreConfig, model_id: str, shapes: Sequence[ExpectedShape]) -> None:
        """`shapes`: the embedding shapes the loaded model takes; a stored value with others is refused."""
        if not model_id or "{" in model_id or "}" in model_id:
            raise ValueError(f"model id must be non-empty without braces (they delimit the hash tag): {model_id!r}")
        self.config = config
        self.model_id = model_id
        self.shapes = tuple(tuple(shape) for shape in shapes)
        self.tenant: str | None = None
        self.kind = "emb"
        self._dtype = _DTYPES[config.dtype]
        url = urlsplit(config.url)
        password = url.password or dict(parse_qsl(url.query)).get("password") or ""
        self._secrets = {secret for secret in (password, unquote(password)) if secret}  # scrubbed from errors
        self._client = connect(config.url, socket_timeout=config.socket_timeout)
        self._cluster = is_cluster_url(config.url)
        self._release_script = self._client.register_script(_RELEASE_SCRIPT)
        self._renew_script = self._client.register_script(_RENEW_SCRIPT)

    def __repr__(self) -> str:
        tenant = f", tenant={self.tenant!r}" if self.tenant is not None else ""
        return (
            f"EmbeddingStore({self.config.redacted_url}, model_id={self.model_id!r}, dtype={self.config.dtype}{tenant})"
        )

    def for_tenant(self, tenant: str | None) -> EmbeddingStore:
        """This store seen by one tenant: its own keys, sharing the connection pool (None: the shared space)."""
        if tenant == self.tenant:
            return self
        if tenant is not None and not TENANT_NAME.fullmatch(tenant):
            raise ValueError(f"tenant names are 1-64 of A-Z a-z 0-9 . _ -, got {tenant!r}")
        scoped = copy.copy(self)
        scoped.tenant = tenant
        return scoped

    def for_kind(self, kind: str, shapes: Sequence[ExpectedShape], dtype: str | None = None) -> EmbeddingStore:
        """Another kind of per-image value of this model (e.g. "det", the concept detector's features)
        under its own keys, checked against its own shapes; same client, same per-image encode lock."""
        if not re.fullmatch(r"[a-z]{1,8}", kind):
            raise ValueError(f"value kinds are 1-8 lowercase letters, got {kind!r}")
        scoped = copy.copy(self)
        scoped.kind = kind
        scoped.shapes = tuple(tuple(shape) for shape in shapes)
        scoped._dtype = _DTYPES[dtype or self.config.dtype]
        return scoped

    # -- keys ---------------------------------------------------------------------------------------------

    def _namespace(self) -> str:
        tenant = f"tenant:{self.tenant}:" if self.tenant is not None else ""
        return f"{self.config.key_prefix}:{tenant}"

    def _tag(self, image_id: str) -> str:
        if not image_id or "{" in image_id or "}" in image_id:
            raise ValueError(f"image id must be non-empty without braces: {image_id!r}")
        return f"{{{self.model_id}:{image_id}}}"

    def key(self, image_id: str) -> str:
        """The value's key; the hash tag keeps companion keys (the lock) in the same cluster slot.

        It names the value format's version, so during a rolling upgrade old and new workers miss
        each other's values (and re-encode) instead of deleting them as unreadable, back and forth.
        """
        return f"{self._namespace()}{self.kind}:v{FORMAT_VERSION}:{self._tag(image_id)}"

    def lock_key(self, image_id: str) -> str:
        """The encode lock's key, in the same cluster slot as the value."""
        return f"{self._namespace()}lock:{self._tag(image_id)}"

    @property
    def replacements_channel(self) -> str:
        """Pub/sub channel announcing the key of every value written (all tenants, this key prefix)."""
        return f"{self.config.key_prefix}:replaced:{{{self.model_id}}}"

    def _unavailable(self, operation: str, error: Exception) -> StoreUnavailableError:
        message = str(error) or type(error).__name__
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return StoreUnavailableError(
            f"Redis at {self.config.redacted_url} unavailable ({operation}): {type(error).__name__}: {message}"
        )

    # -- values -------------------------------------------------------------------------------------------

    def get(self, image_id: str) -> Lookup:
        """Fetch and check the embeddings. A corrupt or foreign value is deleted and reported, never raised.

        The tensors are read-only views of the bytes object hiredis built from the reply: the payload is
        not copied again after it leaves the socket.
        """
        started = time.perf_counter()
        try:
            blob = cast(bytes | None, self._client.get(self.key(image_id)))  # decode_responses=False: bytes
        except _UNAVAILABLE as error:
            if not _wrong_type(error):
                raise self._unavailable("GET", error) from error
            self._discard(image_id, error)  # not a string: nothing we wrote
            return Lookup(None, "corrupt", 0, time.perf_counter() - started)
        if blob is None:
            return Lookup(None, "miss", 0, time.perf_counter() - started)
        try:
            embeddings = deserialize(
                blob, expected_model_id=self.model_id, expected_image_id=image_id, expected_shapes=self.shapes
            )
        except EmbeddingFormatError as error:
            self._discard(image_id, error)
            return Lookup(None, "corrupt", len(blob), time.perf_counter() - started)
        return Lookup(embeddings, "hit", len(blob), time.perf_counter() - started)

    def peek_size(self, image_id: str) -> tuple[int, int] | None:
        """Original (height, width) from the value's head alone (about 200 bytes, not the 10 MB value).

        The head is checksummed and must name this model and image with the model's shapes; a value
        that fails is deleted and reported as absent (None), so the caller encodes again. The payload
        is not checked here: `get` does that.
        """
        try:
            head = cast(bytes, self._client.getrange(self.key(image_id), 0, self._head_size(image_id) - 1))
        except _UNAVAILABLE as error:
            if not _wrong_type(error):
                raise self._unavailable("GETRANGE", error) from error
            self._discard(image_id, error)
            return None
        if not head:
            return None
        try:
            return self._size_from_head(head, image_id)
        except EmbeddingFormatError as error:
            self._discard(image_id, error)
            return None

    def _head_size(self, image_id: str) -> int:
        return head_size(self.model_id, image_id, self.shapes)

    def _size_from_head(self, head: bytes, image_id: str) -> tuple[int, int]:
        parsed = read_head(head)
        parsed.check(model_id=self.model_id, image_id=image_id, shapes=self.shapes)
        return parsed.original_size

    def _discard(self, image_id: str, why: BaseException) -> None:
        """Delete a value that failed its checks (a concurrent re-put lost with it costs one re-encode)."""
        log.warning("deleting the stored value of %s: %s", image_id, why, extra={"tenant": self.tenant})
        self.delete(image_id)

    def put(self, image_id: str, embeddings: ImageEmbeddings, *, announce: bool = True) -> int:
        """Store the embeddings at the configured dtype, with the TTL, and announce the write to decoders.

        Returns the bytes written. The announcement is best effort: a decoder that misses it (it was
        disconnected) drops its whole local cache when it reconnects.
        """
        if embeddings.model_id != self.model_id:
            raise ValueError(f"embeddings are for model {embeddings.model_id!r}, this store is for {self.model_id!r}")
        blob = serialize(embeddings.astype(self._dtype), image_id)
        key = self.key(image_id)
        try:
            if not announce:  # a value that is never rewritten (text features): no decoder needs to hear of it
                self._client.set(key, blob, ex=self.config.ttl_seconds)
            elif self._cluster:  # a cluster pipeline refuses PUBLISH (it goes to every node): two round trips
                self._client.set(key, blob, ex=self.config.ttl_seconds)
                self._client.publish(self.replacements_channel, key)
            else:
                with self._client.pipeline(transaction=False) as pipe:  # one round trip for both
                    pipe.set(key, blob, ex=self.config.ttl_seconds)
                    pipe.publish(self.replacements_channel, key)
                    pipe.execute()
        except _UNAVAILABLE as error:
            raise self._unavailable("SET", error) from error
        return len(blob)

    def delete(self, image_id: str) -> None:
        """Remove the value (absent is fine)."""
        try:
            self._client.delete(self.key(image_id))
        except _UNAVAILABLE as error:
            raise self._unavailable("DEL", error) from error

    # -- the encode lock ----------------------------------------------------------------------------------

    def _lock_ttl_ms(self) -> int:
        return max(1, round(self.config.lock_ttl_seconds * 1000))

    def try_lock(self, image_id: str) -> str | None:
        """Take the encode lock for this image; return its token, or None if another worker holds it."""
        token = secrets.token_hex(16)
        key = self.lock_key(image_id)
        try:
            if self._client.set(key, token, nx=True, px=self._lock_ttl_ms()):
                return token
            # Refused. If a lost reply made redis-py retry our own successful SET NX, the lock is ours anyway.
            return token if self._client.get(key) == token.encode() else None
        except _UNAVAILABLE as error:
            raise self._unavailable("SET NX", error) from error

    def renew(self, image_id: str, token: str) -> bool:
        """Extend our lock by a full TTL; False when it is no longer ours (it expired, maybe retaken)."""
        try:
            return bool(self._renew_script(keys=[self.lock_key(image_id)], args=[token, self._lock_ttl_ms()]))
        except _UNAVAILABLE as error:
            raise self._unavailable("renew lock", error) from error

    def release(self, image_id: str, token: str) -> None:
        """Release the lock only if it is still ours (it may have expired and been taken by someone else)."""
        try:
            self._release_script(keys=[self.lock_key(image_id)], args=[token])
        except _UNAVAILABLE as error:
            raise self._unavailable("release lock", error) from error

    def lock(self, image_id: str) -> HeldLock | None:
        """Take the encode lock and keep it alive while held; None if another worker holds it."""
        token = self.try_lock(image_id)
        return HeldLock(self, image_id, token) if token is not None else None

    def wait_for(self, image_id: str, timeout: float, *, cancelled: Callable[[], bool] = lambda: False) -> Waited:
        """Wait for another worker's encode of this image: "ready" with the original size when its value appears.

        Ends early without a size when the lock is gone without a value ("holder_failed": the holder
        failed, died and its lock expired, or never existed: the caller should encode itself), when
        `timeout` seconds pass ("timeout"), or when `cancelled()` turns true ("cancelled"). Each poll reads
        the head and the lock in one MULTI/EXEC, so "lock gone, no value" is a consistent snapshot (the
        holder writes before it releases), not a race.
        """
        key, lock_key = self.key(image_id), self.lock_key(image_id)
        deadline = time.monotonic() + timeout
        delay = _BACKOFF_START
        while True:
            try:
                with self._client.pipeline(transaction=True) as pipe:
                    pipe.getrange(key, 0, self._head_size(image_id) - 1)
                    pipe.exists(lock_key)
                    head, locked = pipe.execute(raise_on_error=False)
            except _UNAVAILABLE as error:
                raise self._unavailable("wait for value", error) from error
            if isinstance(locked, Exception):
                raise self._unavailable("wait for value", locked)
            if isinstance(head, bytes) and head:  # else absent, or WRONGTYPE: the holder will overwrite it
                try:
                    return Waited(self._size_from_head(head, image_id), "ready")
                except EmbeddingFormatError:
                    pass  # a bad value the holder is about to replace
            if not locked:
                return Waited(None, "holder_failed")
            if cancelled():
                return Waited(None, "cancelled")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Waited(None, "timeout")
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _BACKOFF_MAX)

    # -- decoders' local copies ------------------------------------------------------------------------------

    def listen_for_replacements(
        self, replaced: Callable[[str], None], reconnected: Callable[[], None], stop: threading.Event
    ) -> None:
        """Until `stop` is set, call `replaced(key)` for every value written by any worker.

        `reconnected()` runs each time Redis confirms the subscription (at start and after every
        disconnection): announcements made before that were lost, so the listener must assume every key
        changed. Runs on the caller's thread (a daemon thread in the decoder); never raises, it retries.
        """
        delay = _BACKOFF_START
        while not stop.is_set():
            pubsub = self._client.pubsub()
            try:
                pubsub.subscribe(self.replacements_channel)
                while not stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":  # confirmed: from now on nothing is missed
                        reconnected()
                        delay = _BACKOFF_START
                    elif message["type"] == "message":
                        replaced(message["data"].decode())
            except Exception as error:  # Redis trouble, or the store closed under us: never end silently
                if stop.is_set():
                    return
                first = delay == _BACKOFF_START  # one warning per outage, not one per retry
                log.log(logging.WARNING if first else logging.DEBUG, "replacement announcements lost: %s", error)
                stop.wait(delay)
                delay = min(delay * 2, 1.0)
            finally:
                pubsub.close()

    # -- health -------------------------------------------------------------------------------------------

    def ping(self) -> bool:
        """Whether Redis answers right now; never raises."""
        try:
            return self.check()
        except StoreUnavailableError:
            return False

    def check(self) -> bool:
        """True when Redis answers PING, else StoreUnavailableError saying why (readiness reports it).

        Refused credentials are named as such: a wrong password never fixes itself by waiting.
        """
        try:
            return bool(self._client.ping())
        except redis.exceptions.AuthenticationError as error:
            raise self._unavailable("PING: the password or user is wrong", error) from error
        except _UNAVAILABLE as error:
            if "NOAUTH" in str(error) or "WRONGPASS" in str(error):
                raise self._unavailable("PING: the password or user is wrong", error) from error
            raise self._unavailable("PING", error) from error

    def close(self) -> None:
        """Close pooled connections (a later call reconnects)."""
        self._client.close()


class HeldLock:
    """An encode lock this worker holds, renewed every third of its TTL until `release()`.

    If the holder dies, renewals stop and the lock frees itself within one TTL. If the release fails
    (Redis unreachable at that moment), it is retried in the background until the TTL would have freed
    the lock anyway, so waiters on other workers are not held up by a release that got lost.
    """

    def __init__(self, store: EmbeddingStore, image_id: str, token: str) -> None:
        self.store = store
        self.image_id = image_id
        self.token = token
        self._released = threading.Event()
        self._heartbeat = threading.Thread(target=self._renew, name=f"lock-{image_id[:12]}", daemon=True)
        self._heartbeat.start()

    def _renew(self) -> None:
        interval = self.store.config.lock_ttl_seconds / 3
        while not self._released.wait(interval):
            try:
                if not self.store.renew(self.image_id, self.token):
                    log.warning("lost the encode lock of %s (it expired); finishing the encode", self.image_id)
                    return
            except StoreUnavailableError as error:
                log.warning("could not renew the encode lock of %s: %s", self.image_id, error)

    def release(self) -> None:
        """Stop renewing and release; never raises (a lock that cannot be released expires by itself)."""
        self._released.set()
        try:
            self.store.release(self.image_id, self.token)
        except StoreUnavailableError as error:
            log.warning("could not release the encode lock of %s; retrying in the background: %s", self.image_id, error)
            threading.Thread(target=self._retry_release, name=f"unlock-{self.image_id[:12]}", daemon=True).start()

    def _retry_release(self) -> None:
        give_up = time.monotonic() + self.store.config.lock_ttl_seconds
        delay = _BACKOFF_MAX
        while time.monotonic() < give_up:
            time.sleep(delay)
            try:
                self.store.release(self.image_id, self.token)
                return
            except StoreUnavailableError:
                delay = min(delay * 2, 1.0)
