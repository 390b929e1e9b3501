"""The decoder's in-process embedding cache: an LRU bounded in bytes, with per-image single-flight loads.

An interactive user clicks on the same image many times in a row; keeping its embeddings in process
skips the ~10-25 ms Redis GET on every click after the first. The budget is in bytes, not entries,
because one image is ~10 MB (float16) or ~21 MB (float32) and the worker's memory limit is what matters.

`get_or_load` coalesces concurrent misses for one image inside this process: when several calls for a
freshly opened image arrive together, one fetches it from Redis and the others wait for that result
instead of each pulling the same megabytes. It returns where the answer came from ("local", or what
the loader reported), which the decoder counts in sam3_embedding_lookups_total; evictions and bytes
held are exported as sam3_local_cache_evictions_total and sam3_local_cache_bytes.

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
from sam3_serving import metrics

__all__ = ["LOCAL", "EmbeddingCache", "Loaded"]

LOCAL = "local"  # the outcome of a lookup this cache answered
# What a loader returns, and what get_or_load answers: the embeddings (None: not found) and where from.
Loaded = tuple[ImageEmbeddings | None, str]


@dataclass
class _Flight:
    """One in-progress load that other callers for the same image wait on."""

    done: threading.Event = field(default_factory=threading.Event)
    result: Loaded = (None, "")
    error: BaseException | None = None


class EmbeddingCache:
    """Thread-safe LRU of ImageEmbeddings keyed by image id, holding at most `max_bytes` of tensors."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, ImageEmbeddings] = OrderedDict()  # least recent first
        self._nbytes = 0
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._generation = 0  # bumped by every discard/clear: loads that straddle one are not cached

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, image_id: object) -> bool:
        """Membership without touching the LRU order or the counters."""
        with self._lock:
            return image_id in self._items

    @property
    def nbytes(self) -> int:
        """Bytes of tensors held now (always <= max_bytes)."""
        with self._lock:
            return self._nbytes

    def _lookup(self, image_id: str) -> ImageEmbeddings | None:
        """Caller holds the lock."""
        embeddings = self._items.get(image_id)
        if embeddings is not None:
            self._items.move_to_end(image_id)
        return embeddings

    def get(self, image_id: str) -> ImageEmbeddings | None:
        """The cached embeddings (now the most recently used), or None."""
        with self._lock:
            return self._lookup(image_id)

    def put(self, image_id: str, embeddings: ImageEmbeddings) -> None:
        """Cache (or replace) an item, evicting least-recently-used ones to stay within the budget.

        An item larger than the whole budget is not cached (and drops any older version of itself):
        evicting everything for an item that still would not fit helps nobody.
        """
        with self._lock:
            self._put(image_id, embeddings)

    def _put(self, image_id: str, embeddings: ImageEmbeddings) -> None:
        """Caller holds the lock."""
        size = embeddings.nbytes
        self._pop(image_id)
        if size <= self.max_bytes:
            while self._items and self._nbytes + size > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._nbytes -= evicted.nbytes
                metrics.LOCAL_CACHE_EVICTIONS.inc()
            self._items[image_id] = embeddings
            self._nbytes += size
        metrics.LOCAL_CACHE_BYTES.set(self._nbytes)

    def _pop(self, image_id: str) -> None:
        """Caller holds the lock."""
        old = self._items.pop(image_id, None)
        if old is not None:
            self._nbytes -= old.nbytes

    def discard(self, image_id: str) -> None:
        """Forget one item (its stored value was rewritten); absent is fine."""
        with self._lock:
            self._generation += 1
            self._pop(image_id)
            metrics.LOCAL_CACHE_BYTES.set(self._nbytes)

    def clear(self) -> None:
        """Drop every item."""
        with self._lock:
            self._generation += 1
            self._items.clear()
            self._nbytes = 0
            metrics.LOCAL_CACHE_BYTES.set(0)

    def get_or_load(self, image_id: str, load: Callable[[], Loaded]) -> Loaded:
        """(embeddings, "local") from the cache; else `load`'s answer, loaded once however many callers wait.

        The caller that starts the load runs it on its own thread; concurrent callers for the same id
        block until it finishes and share its answer or its exception. A None result (not in the store)
        and a failure are not cached, so the next call tries again.
        """
        with self._lock:
            cached = self._lookup(image_id)
            if cached is not None:
                return cached, LOCAL
            flight = self._flights.get(image_id)
            leader = flight is None
            if flight is None:
                flight = self._flights[image_id] = _Flight()
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
                    self._put(image_id, flight.result[0])
        except BaseException as error:
            flight.error = error
            raise
        finally:
            with self._lock:
                del self._flights[image_id]
            flight.done.set()
        return flight.result
