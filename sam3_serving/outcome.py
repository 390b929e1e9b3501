"""Where a lookup of a stored value found it, or why it found none: one vocabulary for the store, the
decoder's local cache and the metrics (`sam3_embedding_lookups_total{result}`,
`sam3_concept_lookups_total{result}`), whose label values are these."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Outcome"]


class Outcome(StrEnum):
    LOCAL = "local"  # this process's cache
    REDIS = "redis"  # the store
    ENCODED = "encoded"  # computed on the spot (then stored): a phrase's text features
    MISS = "miss"  # not in the store
    CORRUPT = "corrupt"  # in the store but failed its checks: deleted, so the next encode replaces it
