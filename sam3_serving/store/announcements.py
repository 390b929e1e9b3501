"""Announcements of rewritten values: how decoders learn that a local copy went stale.

Every write of an announced kind publishes the value's key on one channel per model and prefix (all
tenants), so decoders drop their local copy at once (`Encode(force=true)`, a re-encode after a bad
value); the click path itself never asks Redis anything when the local cache hits. A decoder that was
disconnected may have missed announcements, so each (re)subscription tells it to drop everything.

The PUBLISH rides in one pipeline with the SET (one round trip) on one server. A Redis Cluster pipeline
refuses PUBLISH (it goes to every node), so there the SET and then the PUBLISH are two round trips; the
order is the same, so a decoder that hears of a key finds the new value behind it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sam3_serving.store.connection import BACKOFF_START, UNAVAILABLE, Connection

__all__ = ["Announcements"]

log = logging.getLogger(__name__)


class Announcements:
    """Writes that announce themselves on `channel`, and the listener that hears them."""

    def __init__(self, connection: Connection, channel: str) -> None:
        self.connection = connection
        self.channel = channel

    def set(self, key: str, blob: bytes, ttl_seconds: int) -> None:
        """SET the value with its TTL, then announce its key (best effort: see `listen`)."""
        client = self.connection.client
        try:
            if self.connection.cluster:
                client.set(key, blob, ex=ttl_seconds)
                client.publish(self.channel, key)
            else:
                with client.pipeline(transaction=False) as pipe:
                    pipe.set(key, blob, ex=ttl_seconds)
                    pipe.publish(self.channel, key)
                    pipe.execute()
        except UNAVAILABLE as error:
            raise self.connection.unavailable("SET", error) from error

    def listen(self, replaced: Callable[[str], None], reconnected: Callable[[], None], stop: threading.Event) -> None:
        """Until `stop` is set, call `replaced(key)` for every value written by any worker.

        `reconnected()` runs each time Redis confirms the subscription (at start and after every
        disconnection): announcements made before that were lost, so the listener must assume every key
        changed. Runs on the caller's thread (a daemon thread in the decoder); never raises, it retries.
        """
        delay = BACKOFF_START
        while not stop.is_set():
            pubsub = self.connection.client.pubsub()
            try:
                pubsub.subscribe(self.channel)
                while not stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":  # confirmed: from now on nothing is missed
                        reconnected()
                        delay = BACKOFF_START
                    elif message["type"] == "message":
                        replaced(message["data"].decode())
            except Exception as error:  # Redis trouble, or the store closed under us: never end silently
                if stop.is_set():
                    return
                first = delay == BACKOFF_START  # one warning per outage, not one per retry
                log.log(logging.WARNING if first else logging.DEBUG, "replacement announcements lost: %s", error)
                stop.wait(delay)
                delay = min(delay * 2, 1.0)
            finally:
                pubsub.close()
