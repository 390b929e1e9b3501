"""A few slots for work that takes seconds on a CPU (concept queries, tracking): a caller finding none free is
refused at once (RESOURCE_EXHAUSTED / OVERLOADED naming the limit), never queued, so such work can never hold
every handler thread and clicks always find one."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from sam3_serving.errors import Reason, ServiceError

__all__ = ["BusySlots"]


class BusySlots:
    """At most `count` runs at once. `busy` is the refusal's message ({count} filled in), `limit` its name."""

    def __init__(self, count: int, busy: str, limit: str) -> None:
        self.count = count
        self.busy = busy
        self.limit = limit
        self._slots = threading.BoundedSemaphore(count)

    @contextmanager
    def taken(self) -> Iterator[None]:
        if not self._slots.acquire(blocking=False):
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                self.busy.format(count=self.count) + "; retry with backoff or add decoder replicas",
                Reason.OVERLOADED,
                limit=self.limit,
            )
        try:
            yield
        finally:
            self._slots.release()
