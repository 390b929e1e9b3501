"""The low-res logits each keyed object was last answered with, kept briefly in the fleet's store.

An annotation tool refines an object click after click; with `ObjectPrompt.object_key` set, the decoder
remembers the logits of the mask it answered with, and `mask_input.previous` on the next click, on any
replica, uses them as the mask input (what SAM's `mask_input` loop does in one process). One value of
kind `MASKS` per (tenant, model, image, object key): the image's id and a digest of the key name it, so
tenants, models and images never meet, and a key's text never reaches Redis. Each value is one float32
map (288 x 288: 324 KiB plus a ~200-byte head), self-checking like every stored value, with its own short
TTL (--mask-memory-seconds, default 600): an annotator's pause, not the image's week.

The memory is a convenience on top of the clicks, which every request carries: a Redis that cannot be
reached makes `previous` find nothing (the answer says so, `mask_input_used` false) and a write that fails
is logged, never an error for a click that was answered.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Sequence

import numpy as np

from sam3_serving.store import MASKS, StoreUnavailableError, ValueStore

__all__ = ["DEFAULT_SECONDS", "MaskMemory"]

log = logging.getLogger(__name__)
DEFAULT_SECONDS = 600


class MaskMemory:
    """Remembered logits in `store` (a tenant's view), maps of `mask_size`, for `seconds` each."""

    def __init__(self, store: ValueStore, mask_size: tuple[int, int], seconds: int = DEFAULT_SECONDS) -> None:
        if seconds <= 0:
            raise ValueError(f"mask memory seconds must be positive, got {seconds}")
        self._store = store
        self._kind = dataclasses.replace(MASKS, ttl_seconds=seconds).expecting([(1, *mask_size)])

    @staticmethod
    def subject(image_id: str, object_key: str) -> str:
        """The value's name: the image and a digest of the key (any text, up to 128 bytes, in 32 hex digits)."""
        return f"{image_id}.{hashlib.sha256(object_key.encode()).hexdigest()[:32]}"

    def key(self, image_id: str, object_key: str) -> str:
        """The Redis key of an object's remembered mask (tests, operators)."""
        return self._store.key(self._kind, self.subject(image_id, object_key))

    def recall(self, image_id: str, object_keys: dict[int, str]) -> dict[int, np.ndarray]:
        """Object index -> the logits remembered for its key; absent when none (expired, never stored, Redis
        unreachable)."""
        found: dict[int, np.ndarray] = {}
        for index, key in object_keys.items():
            try:
                lookup = self._store.get(self._kind, self.subject(image_id, key))
            except StoreUnavailableError as error:
                log.warning("remembered masks unavailable, answering from the clicks alone: %s", error)
                return found
            if lookup.value is not None:
                found[index] = lookup.value
        return found

    def remember(self, image_id: str, answers: Sequence[tuple[str, np.ndarray]]) -> None:
        """Keep each (object key, logits [h, w]) for the next click; failures are logged, not raised."""
        for key, logits in answers:
            try:
                self._store.put(self._kind, self.subject(image_id, key), logits)
            except StoreUnavailableError as error:
                log.warning("could not remember the mask of an object: %s", error)
                return
