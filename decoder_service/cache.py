"""The decoder's local copies of stored values: one LRU bounded in bytes for every kind, with single-flight loads.

An interactive user clicks on the same image many times in a row; keeping its embeddings in process
skips the Redis GET (docs/architecture.md has its cost) and the split decoder's image side on every
click after the first. A value is kept in the form the decoder runs on, prepared once on its way in,
float32 whatever the store's dtype. Per image at full size (the tiny test model has the same interface
sizes, and measures the same):
- embeddings prepared for the split click decoder (`Sam3Model.decoder_embeddings`): 72 x 72 = 5184
  positions x 1408 floats (`image_tokens` 256, `first_keys` and `first_values` 128 each,
  `first_image_queries` 128, `high_res_1` 256, `high_res_0` 512) = 29.2 MB, so the default 1 GiB
  (`--cache-mb`) holds 36 images; for the standard decoder, the three embeddings: 21.2 MB, 50 images;
- concept detector features: 111.5 MB; a phrase's text features: 33 KB.
Hence a budget in bytes, not entries: values differ by orders of magnitude, and the worker's memory
limit is what matters.

Entries are keyed by the value's store key, so tenants and kinds never share one, and the store's
announcement of a rewritten value names the entry to drop (`discard`, e.g. after `Encode(force=true)`);
everything goes when announcements may have been missed (`clear`). Lookups report an `Outcome`
(LOCAL, or what the store said), which the decoder counts in sam3_embedding_lookups_total and
sam3_concept_lookups_total; evictions and bytes held are sam3_local_cache_evictions_total and
sam3_local_cache_bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from sam3_core.cache import LruCache
from sam3_serving import metrics
from sam3_serving.outcome import Outcome
from sam3_serving.store import Kind, ValueStore

__all__ = ["LocalCache"]

T = TypeVar("T")
Prepared = TypeVar("Prepared")


class LocalCache(LruCache[str, Any]):
    """The decoder's LRU of stored values (of any kind, each with an `nbytes`), counted in the metrics."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, evicted=metrics.LOCAL_CACHE_EVICTIONS.inc, held=metrics.LOCAL_CACHE_BYTES.set)

    def fetch(
        self, store: ValueStore, kind: Kind[T], subject: str, prepare: Callable[[T], Prepared]
    ) -> tuple[Prepared | None, Outcome]:
        """(value, LOCAL) from this cache; else one GET, prepared once and kept: (value, REDIS); else
        (None, MISS or CORRUPT). Concurrent callers for one value share one GET."""

        def load() -> tuple[Prepared | None, Outcome]:
            lookup = store.get(kind, subject)
            if lookup.value is None:
                return None, lookup.outcome
            return prepare(lookup.value), Outcome.REDIS

        value, outcome = self.get_or_load(store.key(kind, subject), load, hit=Outcome.LOCAL)
        return cast(Prepared | None, value), outcome  # one key, one kind: the value is what `prepare` made
