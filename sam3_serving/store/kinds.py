"""What the store keeps: kinds of values, each a Python type that becomes tensors and comes back.

A kind is a name (the key's kind segment, and what the value says it is), how a value becomes tensors
(and, for a kind about an image, that image's original size) and how it comes back, and two policies:
- `announced`: whether each write is announced to decoders, which keep local copies, because the value
  under a key can be rewritten (`Encode(force=true)`, a re-encode after a bad value). A value named by
  a hash of its content (text features) never changes, so nobody needs telling;
- `dtype`: a fixed stored precision, else the store's configured one (float16 halves the big values,
  small ones stay exact);
- `ttl_seconds`: a lifetime of its own, else the store's configured one (an object's remembered mask lives
  minutes, an image's embeddings days).
The shapes a loaded model takes are bound when the model is known (`expecting`); a stored value with
other shapes is refused like a corrupted one.

A new kind (a video session's per-object memory bank, say) is one more instance at the bottom: a
name, two functions, its policies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

import numpy as np

from sam3_core.concept import DetectorFeatures, TextFeatures
from sam3_core.embeddings import ExpectedShape, ImageEmbeddings, StoredValue, ValueFormatError
from sam3_serving.store.keys import KIND_NAME

__all__ = ["DETECTOR_FEATURES", "EMBEDDINGS", "MASKS", "TEXT_FEATURES", "Kind"]

T = TypeVar("T")


@dataclass(frozen=True)
class Kind(Generic[T]):
    """One kind of value: its name, its conversions to and from stored tensors, its storage policies."""

    name: str  # 1-8 lowercase letters
    tensors: Callable[[T], tuple[np.ndarray, ...]]
    value: Callable[[StoredValue], T]  # from a value whose head passed every check of this kind
    size: Callable[[T], tuple[int, int]] | None = None  # the image's (height, width), for a kind about an image
    model: Callable[[T], str] | None = None  # the model a value says it came from (checked on put)
    announced: bool = True
    dtype: str | None = None  # "float32" / "float16"; None: the store's configured dtype
    ttl_seconds: int | None = None  # None: the store's configured TTL
    shapes: tuple[ExpectedShape, ...] | None = None  # bound by `expecting`

    def __post_init__(self) -> None:
        if not KIND_NAME.fullmatch(self.name):
            raise ValueError(f"a kind's name is 1-8 lowercase letters, got {self.name!r}")

    def expecting(self, shapes: Sequence[ExpectedShape]) -> Kind[T]:
        """This kind for a loaded model: its values must have these shapes (a symbolic dim matches any size)."""
        return replace(self, shapes=tuple(tuple(shape) for shape in shapes))

    @property
    def sized(self) -> bool:
        """Whether its values describe an image (and so carry its original size)."""
        return self.size is not None

    def expected_shapes(self) -> tuple[ExpectedShape, ...]:
        if self.shapes is None:
            raise ValueError(f"the {self.name!r} kind reads values only once bound to a model (Kind.expecting)")
        return self.shapes

    def stored(self, value: T, model_id: str, subject: str) -> StoredValue:
        """The value as the store keeps it, for `model_id`; ValueError if it says it came from another model."""
        if self.model is not None and (origin := self.model(value)) != model_id:
            raise ValueError(f"a {self.name!r} value of model {origin!r}, this store is for {model_id!r}")
        size = None if self.size is None else self.size(value)
        return StoredValue(self.name, model_id, subject, self.tensors(value), size)


def _float32(stored: StoredValue) -> tuple[np.ndarray, ...]:
    """What the concept sessions take (a float16 store's values are converted once, on the way in)."""
    return tuple(np.asarray(t, np.float32) for t in stored.tensors)


def _image_size(stored: StoredValue) -> tuple[int, int]:
    if stored.size is None:  # the store checks `sized` first; a value built by hand may still lack it
        raise ValueFormatError(f"a {stored.kind!r} value without the image's size")
    return stored.size


EMBEDDINGS: Kind[ImageEmbeddings] = Kind(
    "emb",
    tensors=lambda embeddings: embeddings.tensors,
    value=lambda stored: ImageEmbeddings(stored.tensors, _image_size(stored), stored.model_id),
    size=lambda embeddings: embeddings.original_size,
    model=lambda embeddings: embeddings.model_id,
)
"""The tracker's embeddings of an image: what every click reads."""

DETECTOR_FEATURES: Kind[DetectorFeatures] = Kind(
    "det",
    tensors=lambda features: features.tensors,
    value=lambda stored: DetectorFeatures(_float32(stored), _image_size(stored)),
    size=lambda features: features.original_size,
)
"""The concept detector's features of an image, from the same encoder run as its embeddings."""

TEXT_FEATURES: Kind[TextFeatures] = Kind(
    "txt",
    tensors=lambda text: (text.features, text.mask.astype(np.float32)),
    value=lambda stored: TextFeatures(_float32(stored)[0], np.asarray(stored.tensors[1]) > 0.5),
    announced=False,
    dtype="float32",
)
"""A phrase's text features, its subject the sha256 of its token ids (`ConceptModel.text_key`)."""

MASKS: Kind[np.ndarray] = Kind(
    "mask",
    tensors=lambda logits: (np.asarray(logits, np.float32)[None],),
    value=lambda stored: np.asarray(stored.tensors[0][0], np.float32),
    announced=False,
    dtype="float32",
)
"""The low-res logits [h, w] a decoder last answered a keyed object with (decoder_service.mask_memory: the
subject names the image and a digest of the key; its TTL is the decoder's --mask-memory-seconds). Each
click rewrites it and no decoder keeps a local copy, so writes are not announced."""
