"""A fixed number of slots with a short, bounded, prioritised waiting line in front of them.

The encoder runs one model at a time (ONNX Runtime already uses every core). A caller that finds the
slots busy waits here, within its own deadline, instead of being refused at once; interactive calls
(priority 0) go ahead of pre-warming batches (priority 1), first come first served within a priority.
The line is short (`max_waiting`) because every waiter holds a handler thread: beyond it the caller
is refused at once and should back off.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

__all__ = ["BATCH", "INTERACTIVE", "PrioritySlots", "QueueFull"]

INTERACTIVE, BATCH = 0, 1
_POLL_SECONDS = 0.1  # how often a waiter notices that its call was cancelled


class QueueFull(Exception):
    """Every slot is taken and the waiting line is full."""


class PrioritySlots:
    def __init__(self, capacity: int, max_waiting: int) -> None:
        if capacity < 1 or max_waiting < 0:
            raise ValueError(f"need capacity >= 1 and max_waiting >= 0, got {capacity} and {max_waiting}")
        self.capacity = capacity
        self.max_waiting = max_waiting
        self._free = capacity
        self._line: list[tuple[int, int]] = []  # heap of (priority, arrival)
        self._arrivals = itertools.count()
        self._changed = threading.Condition()

    def acquire(self, priority: int, timeout: float, cancelled: Callable[[], bool] = lambda: False) -> bool:
        """Take a slot, waiting up to `timeout` seconds; False on timeout or cancellation, QueueFull if the
        line is full. Release with `release()`."""
        with self._changed:
            if self._free > 0 and not self._line:
                self._free -= 1
                return True
            if len(self._line) >= self.max_waiting:
                raise QueueFull
            ticket = (priority, next(self._arrivals))
            heapq.heappush(self._line, ticket)
            deadline = time.monotonic() + timeout
            try:
                while not (self._free > 0 and self._line[0] == ticket):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or cancelled():
                        return False
                    self._changed.wait(min(remaining, _POLL_SECONDS))
                self._free -= 1
                return True
            finally:
                self._line.remove(ticket)
                heapq.heapify(self._line)
                self._changed.notify_all()  # the next in line may now be at the front

    def release(self) -> None:
        with self._changed:
            self._free += 1
            self._changed.notify_all()

    @property
    def waiting(self) -> int:
        """Callers in line now."""
        return len(self._line)
