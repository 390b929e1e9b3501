"""The store's Redis client and its failure policy, shared by every part of the store and every tenant's view.

Every call is bounded by `socket_timeout` and retried at most once, and only on a connection error (a
stale pooled connection after a Redis restart fails instantly; the retry reconnects): see
`sam3_serving.redis_client`. A dead or unreachable Redis surfaces as `StoreUnavailableError` within
about one timeout, never a hang, and the same store object works again once Redis is back. Errors name
the URL, never the password.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

import grpc
import redis

from sam3_serving.errors import Reason, ServiceError
from sam3_serving.redis_client import connect, is_cluster_url
from sam3_serving.store.config import StoreConfig

__all__ = ["BACKOFF_MAX", "BACKOFF_START", "UNAVAILABLE", "Connection", "StoreUnavailableError", "wrong_type"]

# Polls and retries of the store's background work (waits, announcements, lock releases) start here and double.
BACKOFF_START = 0.010
BACKOFF_MAX = 0.100
# Errors that mean "Redis cannot serve us right now" (unreachable, timeout, auth, loading, full,
# read-only replica after a failover...): callers get one exception type to turn into UNAVAILABLE.
# The one ResponseError that is about the key, not the server, is WRONGTYPE (see `wrong_type`).
UNAVAILABLE = (redis.exceptions.RedisError,)


def wrong_type(error: BaseException) -> bool:
    """Whether Redis refused because the key holds another type (nothing we wrote: a corrupt value)."""
    return isinstance(error, redis.exceptions.ResponseError) and str(error).startswith("WRONGTYPE")


class StoreUnavailableError(ServiceError):
    """Redis could not answer (down, timeout, refused credentials...). The message names the URL, never the password.

    A ServiceError: wherever it escapes a servicer, the call (or the stream item) ends UNAVAILABLE /
    STORE_UNAVAILABLE, since a value nobody can fetch is of no use (docs/architecture.md).
    """

    def __init__(self, message: str, store: str = "embedding store") -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, f"{store} unavailable: {message}", Reason.STORE_UNAVAILABLE)


class Connection:
    """One redis-py client (one server or a cluster) whose pool hands each thread its own connection."""

    def __init__(self, config: StoreConfig, store: str = "embedding store") -> None:
        self.store = store  # what the errors call it: "embedding store", "session store"
        url = urlsplit(config.url)
        password = url.password or dict(parse_qsl(url.query)).get("password") or ""
        self._secrets = {secret for secret in (password, unquote(password)) if secret}  # scrubbed from errors
        self.redacted_url = config.redacted_url
        self.client = connect(config.url, socket_timeout=config.socket_timeout)
        self.cluster = is_cluster_url(config.url)

    def unavailable(self, operation: str, error: Exception) -> StoreUnavailableError:
        """The error a caller sees for a Redis failure during `operation`, with any password scrubbed."""
        message = str(error) or type(error).__name__
        for secret in self._secrets:
            message = message.replace(secret, "***")
        return StoreUnavailableError(
            f"Redis at {self.redacted_url} unavailable ({operation}): {type(error).__name__}: {message}", self.store
        )

    def check(self) -> bool:
        """True when Redis answers PING, else StoreUnavailableError saying why (readiness reports it).

        Refused credentials are named as such: a wrong password never fixes itself by waiting.
        """
        try:
            return bool(self.client.ping())
        except redis.exceptions.AuthenticationError as error:
            raise self.unavailable("PING: the password or user is wrong", error) from error
        except UNAVAILABLE as error:
            if "NOAUTH" in str(error) or "WRONGPASS" in str(error):
                raise self.unavailable("PING: the password or user is wrong", error) from error
            raise self.unavailable("PING", error) from error

    def ping(self) -> bool:
        """Whether Redis answers right now; never raises."""
        try:
            return self.check()
        except StoreUnavailableError:
            return False

    def close(self) -> None:
        """Close pooled connections (a later call reconnects)."""
        self.client.close()
