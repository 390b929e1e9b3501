"""A thread-safe LRU bounded in bytes whose misses load once per key: every in-process cache of the project.

The decoder keeps the stored values it reads (embeddings, detector features, text features) in one,
and `ConceptModel` keeps the text features of the phrases it encodes in another. Both are bounded in
bytes, not entries, because values differ by orders of magnitude (29 MB for an image's prepared
embeddings, 33 KB for a phrase's text features) and a worker's memory limit is what matters.

`get_or_load` coalesces concurrent misses for one key: the first caller runs the loader on its own
thread, the others wait for its answer (or its exception) instead of each fetching or computing the
same value. Nothing about a failed load is kept, so the next call tries again. `discard` and `clear`
forget entries whose source changed; a load already under way when they ran is answered to its callers
but not cached, as it may hold what was there before the change.

The cache knows nothing of metrics: `evicted` and `held` hooks let its owner count evictions and bytes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, cast

__all__ = ["LruCache", "Sized"]


class Sized(Protocol):
    """What the cache holds: anything that knows its size in bytes."""

    @property
    def nbytes(self) -> int: ...


K = TypeVar("K", bound=Hashable)
V = TypeVar("V", bound=Sized)
Outcome = TypeVar("Outcome")


def _ignore(_: int) -> None:
    """The default hook."""


@dataclass
class _Flight:
    """One load under way that other callers for the same key wait on."""

    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[Any, Any] = (None, None)
    error: BaseException | None = None


class LruCache(Generic[K, V]):
    """At most `max_bytes` of values, least recently used dropped first; one load per key at a time.

    `evicted(count)` runs when values are dropped to make room, `held(nbytes)` whenever the bytes held
    change; both under the cache's lock, so they must be quick (a metric update).
    """

    def __init__(
        self, max_bytes: int, *, evicted: Callable[[int], None] = _ignore, held: Callable[[int], None] = _ignore
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._evicted = evicted
        self._held = held
        self._items: OrderedDict[K, V] = OrderedDict()  # least recent first
        self._nbytes = 0
        self._lock = threading.Lock()
        self._flights: dict[K, _Flight] = {}
        self._generation = 0  # bumped by every discard/clear: loads that straddle one are not cached

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: object) -> bool:
        """Membership without touching the LRU order."""
        with self._lock:
            return key in self._items

    @property
    def nbytes(self) -> int:
        """Bytes of values held now (always <= max_bytes)."""
        with self._lock:
            return self._nbytes

    def get(self, key: K) -> V | None:
        """The cached value (now the most recently used), or None."""
        with self._lock:
            return self._lookup(key)

    def put(self, key: K, value: V) -> None:
        """Cache (or replace) a value, evicting least-recently-used ones to stay within the budget.

        A value larger than the whole budget is not cached (and drops any older version of itself):
        evicting everything for a value that still would not fit helps nobody.
        """
        with self._lock:
            self._put(key, value)

    def discard(self, key: K) -> None:
        """Forget one value (its source changed); absent is fine."""
        with self._lock:
            self._generation += 1
            self._pop(key)
            self._held(self._nbytes)

    def clear(self) -> None:
        """Forget every value."""
        with self._lock:
            self._generation += 1
            self._items.clear()
            self._nbytes = 0
            self._held(0)

    def get_or_load(
        self, key: K, load: Callable[[], tuple[V | None, Outcome]], *, hit: Outcome
    ) -> tuple[V | None, Outcome]:
        """(value, `hit`) from the cache; else `load`'s (value, outcome), loaded once however many callers wait.

        `load` returns the value (None: there is none, nothing is cached) and what its callers should
        know of where it came from; every caller waiting on the same load gets the same pair, or the
        same exception.
        """
        with self._lock:
            cached = self._lookup(key)
            if cached is not None:
                return cached, hit
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
            generation = self._generation
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.result
        try:
            flight.result = load()
            with self._lock:  # before the flight ends: later callers hit the cache
                if flight.result[0] is not None and generation == self._generation:
                    self._put(key, flight.result[0])
        except BaseException as error:
            flight.error = error
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
        return flight.result

    def get_or_compute(self, key: K, compute: Callable[[], V]) -> V:
        """The cached value, else `compute()`'s (which must not be None), computed once however many callers wait."""
        value, _ = self.get_or_load(key, lambda: (compute(), None), hit=None)
        return cast(V, value)

    # -- under the lock ------------------------------------------------------------------------------

    def _lookup(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def _put(self, key: K, value: V) -> None:
        size = value.nbytes
        self._pop(key)
        if size <= self.max_bytes:
            evicted = 0
            while self._items and self._nbytes + size > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._nbytes -= dropped.nbytes
                evicted += 1
            if evicted:
                self._evicted(evicted)
            self._items[key] = value
            self._nbytes += size
        self._held(self._nbytes)

    def _pop(self, key: K) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._nbytes -= old.nbytes
