"""The embedding store: one Redis value per (model, image), shared by every encoder and decoder replica.

Redis is a cache here (DESIGN §4): losing it costs re-encodes, never correctness. So
- every value is self-checking (`sam3_core.embeddings`); one that fails its checks is deleted and
  reported as a miss-like outcome ("corrupt") so the next encode replaces it;
- every key has a TTL; the server's `maxmemory` + `allkeys-lru` does the rest;
- every call is bounded by `socket_timeout` and retried at most once, and only on a connection
  error (a stale pooled connection after a Redis restart fails instantly; the retry reconnects).
  A dead or unreachable Redis surfaces as `StoreUnavailableError` within about one timeout, never a
  hang, and the same store object works again once Redis is back.

Keys wrap `<model-id>:<image-id>` in a hash tag so the value and its lock live in one Redis Cluster
slot (MULTI/EXEC and scripts over both stay legal there). Which client (one server or a cluster) the
URL asks for is `sam3_serving.redis_client`'s business.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import numpy as np
import redis

# The header layout is owned by sam3_core.embeddings; reuse it rather than repeat it (peek reads it raw).
from sam3_core.embeddings import (
    _HEADER,
    FORMAT_VERSION,
    MAGIC,
    EmbeddingFormatError,
    ImageEmbeddings,
    deserialize,
    serialize,
)
from sam3_serving.redis_client import SCHEMES, connect

__all__ = ["EmbeddingStore", "Lookup", "StoreConfig", "StoreUnavailableError", "redact_url"]

_DTYPES = {"float16": np.float16, "float32": np.float32}
_BACKOFF_START = 0.010
_BACKOFF_MAX = 0.100
# Compare-and-delete: only the holder (who knows the random token) may release a lock.
_RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""
# Errors that mean "Redis cannot serve us right now" (unreachable, timeout, auth, loading, full,
# read-only replica after a failover...). Our own keys never hold another type, so a ResponseError
# is also the server's state, not our bug; callers get one exception type to turn into UNAVAILABLE.
_UNAVAILABLE = (redis.exceptions.RedisError,)


class StoreUnavailableError(RuntimeError):
    """Redis could not answer (down, timeout, refused credentials...). The message names the URL, never the password."""


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
    lock_ttl_seconds: float = 120.0  # a crashed encoder's lock frees itself after this

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


class EmbeddingStore:
    """Embeddings of one model in Redis, plus the short lock that makes concurrent encodes run once.

    Thread-safe: one redis-py client whose connection pool hands each thread its own connection.
    """

    def __init__(self, config: StoreConfig, model_id: str) -> None:
        if not model_id or "{" in model_id or "}" in model_id:
            raise ValueError(f"model id must be non-empty without braces (they delimit the hash tag): {model_id!r}")
        self.config = config
        self.model_id = model_id
        self._model_id_bytes = model_id.encode()
        self._dtype = _DTYPES[config.dtype]
        self._peek_length = _HEADER.size + len(self._model_id_bytes)
        url = urlsplit(config.url)
        password = url.password or dict(parse_qsl(url.query)).get("password") or ""
        self._secrets = {secret for secret in (password, unquote(password)) if secret}  # scrubbed from errors
        self._client = connect(config.url, socket_timeout=config.socket_timeout)
        self._release_script = self._client.register_script(_RELEASE_SCRIPT)

    def __repr__(self) -> str:
        return f"EmbeddingStore({self.config.redacted_url}, model_id={self.model_id!r}, dtype={self.config.dtype})"

    # -- keys ---------------------------------------------------------------------------------------------

    def _tag(self, image_id: str) -> str:
        if not image_id or "{" in image_id or "}" in image_id:
            raise ValueError(f"image id must be non-empty without braces: {image_id!r}")
        return f"{{{self.model_id}:{image_id}}}"

    def key(self, image_id: str) -> str:
        """The value's key; the hash tag keeps companion keys (the lock) in the same cluster slot."""
        return f"{self.config.key_prefix}:emb:{self._tag(image_id)}"

    def lock_key(self, image_id: str) -> str:
        """The encode lock's key, in the same cluster slot as the value."""
        return f"{self.config.key_prefix}:lock:{self._tag(image_id)}"

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
        key = self.key(image_id)
        started = time.perf_counter()
        try:
            blob = cast(bytes | None, self._client.get(key))  # decode_responses=False: bytes, never str
        except redis.exceptions.ResponseError as error:
            if "WRONGTYPE" not in str(error):
                raise self._unavailable("GET", error) from error
            blob = b""  # not a string: nothing we wrote; treat like any corrupt value
        except _UNAVAILABLE as error:
            raise self._unavailable("GET", error) from error
        if blob is None:
            return Lookup(None, "miss", 0, time.perf_counter() - started)
        try:
            embeddings = deserialize(blob, expected_model_id=self.model_id)
        except EmbeddingFormatError:
            # A concurrent re-put between our GET and this DEL would be lost too: that costs one re-encode.
            self.delete(image_id)
            return Lookup(None, "corrupt", len(blob), time.perf_counter() - started)
        return Lookup(embeddings, "hit", len(blob), time.perf_counter() - started)

    def peek_size(self, image_id: str) -> tuple[int, int] | None:
        """Original (height, width) from the header alone (a few dozen bytes, not the 10 MB value).

        None when absent or when the header is not ours (bad magic/version, another model). The payload
        is not checked here: `get` does that.
        """
        try:
            head = cast(bytes, self._client.getrange(self.key(image_id), 0, self._peek_length - 1))
        except _UNAVAILABLE as error:
            raise self._unavailable("GETRANGE", error) from error
        return self._parse_head(head)

    def _parse_head(self, head: bytes | None) -> tuple[int, int] | None:
        if not head or len(head) < self._peek_length:
            return None
        magic, version, _dtype, count, height, width, id_length, _crc = _HEADER.unpack_from(head)
        if magic != MAGIC or version != FORMAT_VERSION or count == 0 or height == 0 or width == 0:
            return None
        if id_length != len(self._model_id_bytes) or head[_HEADER.size : self._peek_length] != self._model_id_bytes:
            return None
        return int(height), int(width)

    def put(self, image_id: str, embeddings: ImageEmbeddings) -> int:
        """Store the embeddings at the configured dtype, with the TTL; return the bytes written."""
        if embeddings.model_id != self.model_id:
            raise ValueError(f"embeddings are for model {embeddings.model_id!r}, this store is for {self.model_id!r}")
        blob = serialize(embeddings.astype(self._dtype))
        try:
            self._client.set(self.key(image_id), blob, ex=self.config.ttl_seconds)
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

    def try_lock(self, image_id: str) -> str | None:
        """Take the encode lock for this image; return its token, or None if another worker holds it."""
        token = secrets.token_hex(16)
        ttl_ms = max(1, round(self.config.lock_ttl_seconds * 1000))
        key = self.lock_key(image_id)
        try:
            if self._client.set(key, token, nx=True, px=ttl_ms):
                return token
            # Refused. If a lost reply made redis-py retry our own successful SET NX, the lock is ours anyway.
            return token if self._client.get(key) == token.encode() else None
        except _UNAVAILABLE as error:
            raise self._unavailable("SET NX", error) from error

    def release(self, image_id: str, token: str) -> None:
        """Release the lock only if it is still ours (it may have expired and been taken by someone else)."""
        try:
            self._release_script(keys=[self.lock_key(image_id)], args=[token])
        except _UNAVAILABLE as error:
            raise self._unavailable("release lock", error) from error

    def wait_for(
        self, image_id: str, timeout: float, *, cancelled: Callable[[], bool] = lambda: False
    ) -> tuple[int, int] | None:
        """Wait for another worker's encode of this image; return the original size when its value appears.

        Returns None early when the lock is gone without a value (the holder failed or never existed: the
        caller should encode itself), when `timeout` seconds pass, or when `cancelled()` turns true.
        Each poll reads the header and the lock in one MULTI/EXEC, so "lock gone, no value" is a consistent
        snapshot (the holder writes before it releases), not a race between two reads.
        """
        key, lock_key = self.key(image_id), self.lock_key(image_id)
        deadline = time.monotonic() + timeout
        delay = _BACKOFF_START
        while True:
            try:
                with self._client.pipeline(transaction=True) as pipe:
                    pipe.getrange(key, 0, self._peek_length - 1)
                    pipe.exists(lock_key)
                    head, locked = pipe.execute()
            except _UNAVAILABLE as error:
                raise self._unavailable("wait for value", error) from error
            size = self._parse_head(head)
            if size is not None:
                return size
            if not locked or cancelled():
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _BACKOFF_MAX)

    # -- health -------------------------------------------------------------------------------------------

    def ping(self) -> bool:
        """Whether Redis answers right now (readiness probes); never raises."""
        try:
            return bool(self._client.ping())
        except Exception:
            return False

    def close(self) -> None:
        """Close pooled connections (a later call reconnects)."""
        self._client.close()
