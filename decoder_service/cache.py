"""The decoder's in-process embedding cache: an LRU bounded in bytes, with per-image single-flight loads.

An interactive user clicks on the same image many times in a row; keeping its embeddings in process
skips the ~10-25 ms Redis GET on every click after the first. The budget is in bytes, not entries,
because one image is ~10 MB (float16) or ~21 MB (float32) and the worker's memory limit is what matters.

`get_or_load` coalesces concurrent misses for one image inside this process: when several calls for a
freshly opened image arrive together, one fetches it from Redis and the others wait for that result
instead of each pulling the same megabytes.

Entries are dropped when the store announces that their value was rewritten (`discard`, e.g. after
`Encode(force=true)`), or all at once when announcements may have been missed (`clear`). A load that
was already under way when such an announcement arrived is returned to its callers but not cached:
it may hold the bytes from before the rewrite.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from sam3_core.embeddings import ImageEmbeddings

__all__ = ["EmbeddingCache"]


@dataclass
class _Flight:
    """One in-progress load that other callers for the same image wait on."""

    done: threading.Event = field(default_factory=threading.Event)
    result: ImageEmbeddings | None = None
    error: BaseException | None = None


class EmbeddingCache:
    """Thread-safe LRU of ImageEmbeddings holding at most `max_bytes` of tensors.

    Keyed by the value's store key (model, tenant, image): tenants never share a local copy.

    Counters (`hits`, `misses`, `evictions`) are cumulative, for metrics. A miss is counted per lookup
    that did not find the item, including callers that then waited on another caller's load.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, ImageEmbeddings] = OrderedDict()  # least recent first
        self._nbytes = 0
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._generation = 0  # bumped by every discard/clear: loads that straddle one are not cached
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: object) -> bool:
        """Membership without touching the LRU order or the counters."""
        with self._lock:
            return key in self._items

    @property
    def nbytes(self) -> int:
        """Bytes of tensors held now (always <= max_bytes)."""
        with self._lock:
            return self._nbytes

    def _lookup(self, key: str) -> ImageEmbeddings | None:
        """Caller holds the lock."""
        embeddings = self._items.get(key)
        if embeddings is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return embeddings

    def get(self, key: str) -> ImageEmbeddings | None:
        """The cached embeddings (now the most recently used), or None."""
        with self._lock:
            return self._lookup(key)

    def put(self, key: str, embeddings: ImageEmbeddings) -> None:
        """Cache (or replace) an item, evicting least-recently-used ones to stay within the budget.

        An item larger than the whole budget is not cached (and drops any older version of itself):
        evicting everything for an item that still would not fit helps nobody.
        """
        with self._lock:
            self._put(key, embeddings)

    def _put(self, key: str, embeddings: ImageEmbeddings) -> None:
        """Caller holds the lock."""
        size = embeddings.nbytes
        self._pop(key)
        if size > self.max_bytes:
            return
        while self._items and self._nbytes + size > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self._nbytes -= evicted.nbytes
            self.evictions += 1
        self._items[key] = embeddings
        self._nbytes += size

    def _pop(self, key: str) -> None:
        """Caller holds the lock."""
        old = self._items.pop(key, None)
        if old is not None:
            self._nbytes -= old.nbytes

    def discard(self, key: str) -> None:
        """Forget one item (its stored value was rewritten); absent is fine."""
        with self._lock:
            self._generation += 1
            self._pop(key)

    def clear(self) -> None:
        """Drop every item (counters are kept: they are cumulative)."""
        with self._lock:
            self._generation += 1
            self._items.clear()
            self._nbytes = 0

    def get_or_load(self, key: str, load: Callable[[], ImageEmbeddings | None]) -> tuple[ImageEmbeddings | None, bool]:
        """(embeddings, came from the cache). On a miss, `load` runs once per image however many callers wait.

        The caller that starts the load runs it on its own thread; concurrent callers for the same id
        block until it finishes and share its result or its exception. A None result (not in the store)
        and a failure are not cached, so the next call tries again.
        """
        with self._lock:
            cached = self._lookup(key)
            if cached is not None:
                return cached, True
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
            generation = self._generation
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.result, False
        try:
            flight.result = load()
            with self._lock:  # before the flight ends: later callers hit the cache
                if flight.result is not None and generation == self._generation:
                    self._put(key, flight.result)
        except BaseException as error:
            flight.error = error
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
        return flight.result, False
