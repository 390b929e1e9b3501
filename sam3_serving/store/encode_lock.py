"""The encode lock: one short Redis lock per subject (image) so that concurrent encodes of it run once.

The lock follows its holder's liveness: a short TTL (`StoreConfig.lock_ttl_seconds`) that a background
heartbeat renews while the encode runs, so a SIGKILLed holder or one cut off from Redis lets go within
one TTL; a release that fails is retried in the background until the TTL would free it anyway. Only the
holder, who knows the lock's random token, may renew or release it. Callers that find it taken wait for
the holder's value (`ValueStore.wait_for`) and encode themselves if the holder fails.

A video session's lease is the same lock under another key (`key_of`) and name (`what`): one writer per
session, which another replica takes over within one TTL of the holder's death (`take_waiting`).
"""

from __future__ import annotations

import copy
import logging
import secrets
import threading
import time
from collections.abc import Callable

from sam3_serving.store.connection import BACKOFF_MAX, BACKOFF_START, UNAVAILABLE, Connection, StoreUnavailableError
from sam3_serving.store.keys import Keys

__all__ = ["EncodeLocks", "HeldLock"]

log = logging.getLogger(__name__)

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


class EncodeLocks:
    """The encode locks of one model's subjects, in one tenant's keys (or, with `key_of`, other renewed locks)."""

    def __init__(
        self,
        connection: Connection,
        keys: Keys,
        ttl_seconds: float,
        *,
        key_of: Callable[[Keys, str], str] = Keys.lock,
        what: str = "encode lock",
    ) -> None:
        self.connection = connection
        self.keys = keys
        self.ttl_seconds = ttl_seconds
        self.key_of = key_of
        self.what = what  # for log lines: "the encode lock of <subject>"
        self._ttl_ms = max(1, round(ttl_seconds * 1000))
        self._release_script = connection.client.register_script(_RELEASE_SCRIPT)
        self._renew_script = connection.client.register_script(_RENEW_SCRIPT)

    def with_keys(self, keys: Keys) -> EncodeLocks:
        """The same locks under other keys (another tenant's), sharing the client and its scripts."""
        scoped = copy.copy(self)
        scoped.keys = keys
        return scoped

    def key(self, subject: str) -> str:
        return self.key_of(self.keys, subject)

    def try_take(self, subject: str) -> str | None:
        """Take the lock; return its token, or None if another worker holds it. Not renewed: see `take`."""
        token = secrets.token_hex(16)
        key = self.key(subject)
        try:
            if self.connection.client.set(key, token, nx=True, px=self._ttl_ms):
                return token
            # Refused. If a lost reply made redis-py retry our own successful SET NX, the lock is ours anyway.
            return token if self.connection.client.get(key) == token.encode() else None
        except UNAVAILABLE as error:
            raise self.connection.unavailable("SET NX", error) from error

    def renew(self, subject: str, token: str) -> bool:
        """Extend our lock by a full TTL; False when it is no longer ours (it expired, maybe retaken)."""
        try:
            return bool(self._renew_script(keys=[self.key(subject)], args=[token, self._ttl_ms]))
        except UNAVAILABLE as error:
            raise self.connection.unavailable("renew lock", error) from error

    def release(self, subject: str, token: str) -> None:
        """Release the lock only if it is still ours (it may have expired and been taken by someone else)."""
        try:
            self._release_script(keys=[self.key(subject)], args=[token])
        except UNAVAILABLE as error:
            raise self.connection.unavailable("release lock", error) from error

    def take(self, subject: str) -> HeldLock | None:
        """Take the lock and keep it alive while held; None if another worker holds it."""
        token = self.try_take(subject)
        return HeldLock(self, subject, token) if token is not None else None

    def take_waiting(
        self, subject: str, seconds: float, *, cancelled: Callable[[], bool] = lambda: False
    ) -> HeldLock | None:
        """`take`, retrying for up to `seconds` while another holds it: waiting one TTL outlasts a dead holder,
        whose lock then expires. None when still held after that (a live holder renews it) or `cancelled()`."""
        deadline = time.monotonic() + seconds
        delay = BACKOFF_START
        while (held := self.take(subject)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or cancelled():
                return None
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, BACKOFF_MAX * 2)
        return held


class HeldLock:
    """A lock this worker holds (an encode lock, a session lease), renewed every third of its TTL until `release()`.

    If the holder dies, renewals stop and the lock frees itself within one TTL. If the release fails
    (Redis unreachable at that moment), it is retried in the background until the TTL would have freed
    the lock anyway, so waiters on other workers are not held up by a release that got lost.
    """

    def __init__(self, locks: EncodeLocks, subject: str, token: str) -> None:
        self.locks = locks
        self.subject = subject
        self.token = token
        self._released = threading.Event()
        self._heartbeat = threading.Thread(target=self._renew, name=f"lock-{subject[:12]}", daemon=True)
        self._heartbeat.start()

    def _renew(self) -> None:
        interval = self.locks.ttl_seconds / 3
        while not self._released.wait(interval):
            try:
                if not self.locks.renew(self.subject, self.token):
                    log.warning("lost the %s of %s (it expired)", self.locks.what, self.subject)
                    return
            except StoreUnavailableError as error:
                log.warning("could not renew the %s of %s: %s", self.locks.what, self.subject, error)

    def release(self) -> None:
        """Stop renewing and release; never raises (a lock that cannot be released expires by itself)."""
        self._released.set()
        try:
            self.locks.release(self.subject, self.token)
        except StoreUnavailableError as error:
            log.warning(
                "could not release the %s of %s; retrying in the background: %s", self.locks.what, self.subject, error
            )
            threading.Thread(target=self._retry_release, name=f"unlock-{self.subject[:12]}", daemon=True).start()

    def _retry_release(self) -> None:
        give_up = time.monotonic() + self.locks.ttl_seconds
        delay = BACKOFF_MAX
        while time.monotonic() < give_up:
            time.sleep(delay)
            try:
                self.locks.release(self.subject, self.token)
                return
            except StoreUnavailableError:
                delay = min(delay * 2, 1.0)
