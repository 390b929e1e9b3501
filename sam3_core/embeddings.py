"""An encoded image, and the self-describing binary form of every value the store keeps.

Layout (version 3), little-endian:

    header   magic "S3EM", version, dtype code, tensor count, height, width, kind length,
             model-id length, subject length, head CRC-32, payload CRC-32
    head     the kind, the model id, the subject, one shape record (ndim, dims...) per tensor
    payload  the raw tensors back to back

A value names what it is: its kind (an image's embeddings, its detector features, a phrase's text
features...), the model that computed it and its subject (the image id, the phrase's token hash). A
value found under another subject's key, of another kind or written by another model, is refused
instead of answering for the wrong thing. Height and width are the original size of the image the value
describes, both 0 for a value about no image. The head CRC covers the header and the head, so a reader
can trust the size, names and shapes from the first ~200 bytes without fetching the megabytes behind
them (`read_head`); the payload CRC covers the tensors. A value failing any check raises
`ValueFormatError`, which the store treats as a cache miss.

Version 3 added the kind and made the size optional (version 2 stored text features as a 1 x 1
"image" and could not tell one kind from another). The store's keys carry the version, so in a fleet
mid-upgrade each version misses the other's values and re-encodes; neither ever reads the other's.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAGIC = b"S3EM"
FORMAT_VERSION = 3
_DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f2")}
_DTYPE_CODES = {dtype: code for code, dtype in _DTYPES.items()}
# magic, version, dtype code, tensor count, height, width, kind length, model-id length, subject length,
# head crc32, payload crc32
_HEADER = struct.Struct("<4sHBBIIBHHII")
_HEAD_CRC_OFFSET = _HEADER.size - 8
_MAX_SIDE = 2**31 - 1  # image sides travel as int32 on the wire

# A dimension the model leaves symbolic (a str or None in ONNX) matches any stored size.
ExpectedShape = Sequence[int | str | None]


class ValueFormatError(ValueError):
    """Bytes that are not a complete, uncorrupted stored value of a version we understand."""


@dataclass(frozen=True)
class ImageEmbeddings:
    """The vision encoder's multi-scale feature maps for one image, plus what prompts need to know.

    `tensors` are in the order of the decoder's `image_embeddings.0/.1/.2` inputs, each [1, C, H, W].
    `original_size` is (height, width) of the EXIF-oriented image the user clicks on.
    """

    tensors: tuple[np.ndarray, ...]
    original_size: tuple[int, int]
    model_id: str

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def astype(self, dtype: np.dtype | type) -> ImageEmbeddings:
        """The same embeddings at another precision (what the float16 store keeps, read back)."""
        return ImageEmbeddings(_astype(self.tensors, dtype), self.original_size, self.model_id)


@dataclass(frozen=True)
class StoredValue:
    """One value as the store keeps it: what it is, whose, about what, and its tensors (float32 or float16)."""

    kind: str  # what the tensors are: the store's name for a kind of value ("emb", "det", "txt", ...)
    model_id: str  # the model that computed them
    subject: str  # what they are about: an image id, a phrase's token hash...
    tensors: tuple[np.ndarray, ...]
    size: tuple[int, int] | None = None  # (height, width) of the image they describe; None: about no image

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def astype(self, dtype: np.dtype | type) -> StoredValue:
        """The same value at another precision (float16 halves the store's memory)."""
        return StoredValue(self.kind, self.model_id, self.subject, _astype(self.tensors, dtype), self.size)


def _astype(tensors: tuple[np.ndarray, ...], dtype: np.dtype | type) -> tuple[np.ndarray, ...]:
    return tuple(t if t.dtype == dtype else t.astype(dtype) for t in tensors)


@dataclass(frozen=True)
class ValueHead:
    """What a value says about itself, read and checked from its first bytes alone."""

    kind: str
    model_id: str
    subject: str
    size: tuple[int, int] | None
    shapes: tuple[tuple[int, ...], ...]
    dtype: np.dtype
    length: int  # bytes of header + head: where the payload starts

    def check(
        self,
        *,
        kind: str | None = None,
        model_id: str | None = None,
        subject: str | None = None,
        shapes: Sequence[ExpectedShape] | None = None,
        sized: bool | None = None,
    ) -> None:
        """Raise ValueFormatError unless the value is of this kind, model, subject and shapes, and
        describes an image exactly when `sized` (None: any)."""
        for what, actual, expected in (("a", self.kind, kind), ("for model", self.model_id, model_id)):
            if expected is not None and actual != expected:
                raise ValueFormatError(f"the value is {what} {actual!r}, expected {expected!r}")
        if subject is not None and self.subject != subject:
            raise ValueFormatError(f"the value is about {self.subject!r}, expected {subject!r}")
        if shapes is not None and not _shapes_match(self.shapes, shapes):
            raise ValueFormatError(f"tensor shapes {list(self.shapes)} do not fit the model's {list(shapes)}")
        if sized is not None and sized != (self.size is not None):
            raise ValueFormatError(f"a {self.kind!r} value {'without' if sized else 'with'} an image size")


def _shapes_match(actual: Sequence[tuple[int, ...]], expected: Sequence[ExpectedShape]) -> bool:
    return len(actual) == len(expected) and all(
        len(a) == len(e) and all(not isinstance(d, int) or d == n for n, d in zip(a, e, strict=True))
        for a, e in zip(actual, expected, strict=True)
    )


def head_size(kind: str, model_id: str, subject: str, shapes: Sequence[ExpectedShape]) -> int:
    """Bytes of header + head of a value with these names and tensor ranks: what `read_head` needs."""
    names = len(kind.encode()) + len(model_id.encode()) + len(subject.encode())
    return _HEADER.size + names + sum(1 + 4 * len(s) for s in shapes)


def serialize(value: StoredValue) -> bytes:
    """StoredValue -> one bytes value; all tensors must share float32/float16."""
    dtypes = {np.dtype(t.dtype).newbyteorder("<") for t in value.tensors}
    if len(dtypes) != 1 or (dtype := dtypes.pop()) not in _DTYPE_CODES:
        raise ValueError(f"tensors must all be float32 or all float16, got {[t.dtype for t in value.tensors]}")
    height, width = value.size or (0, 0)
    if value.size is not None and not (1 <= height <= _MAX_SIDE and 1 <= width <= _MAX_SIDE):
        raise ValueError(f"an image size must be positive int32 sides, got {value.size}")
    names = [value.kind.encode(), value.model_id.encode(), value.subject.encode()]
    if not 1 <= len(names[0]) <= 255:
        raise ValueError(f"a kind is 1-255 bytes, got {value.kind!r}")
    shapes = b"".join(struct.pack(f"<B{t.ndim}I", t.ndim, *t.shape) for t in value.tensors)
    fields = (MAGIC, FORMAT_VERSION, _DTYPE_CODES[dtype], len(value.tensors), height, width, *map(len, names))
    head = b"".join(names) + shapes
    head_crc = zlib.crc32(head, zlib.crc32(_HEADER.pack(*fields, 0, 0)))
    tensors = [np.ascontiguousarray(t, dtype=dtype).data for t in value.tensors]
    crc = 0
    for part in tensors:
        crc = zlib.crc32(part, crc)
    return b"".join([_HEADER.pack(*fields, head_crc, crc), head, *tensors])


def read_head(prefix: bytes | bytearray | memoryview) -> ValueHead:
    """Parse and check the header and head at the start of a value (the payload may be absent)."""
    view = memoryview(prefix)
    if len(view) < _HEADER.size:
        raise ValueFormatError(f"value too short for a header ({len(view)} bytes)")
    magic, version, dtype_code, count, height, width, *lengths, head_crc, _crc = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise ValueFormatError("not a stored value (bad magic)")
    if version != FORMAT_VERSION:
        raise ValueFormatError(f"stored value format version {version}, this build reads {FORMAT_VERSION}")
    try:
        offset = _HEADER.size + sum(lengths)
        shapes = []
        for _ in range(count):
            (ndim,) = struct.unpack_from("<B", view, offset)
            shapes.append(tuple(int(d) for d in struct.unpack_from(f"<{ndim}I", view, offset + 1)))
            offset += 1 + 4 * ndim
    except struct.error as error:
        raise ValueFormatError(f"value too short for its head: {error}") from error
    crc = zlib.crc32(view[_HEADER.size : offset], zlib.crc32(bytes(view[:_HEAD_CRC_OFFSET]) + bytes(8)))
    if crc != head_crc:
        raise ValueFormatError("head checksum mismatch: the value is corrupted or truncated")
    if dtype_code not in _DTYPES:
        raise ValueFormatError(f"unknown dtype code {dtype_code}")
    if (height, width) != (0, 0) and not (1 <= height <= _MAX_SIDE and 1 <= width <= _MAX_SIDE):
        raise ValueFormatError(f"impossible original size {height}x{width}")
    names, start = [], _HEADER.size
    try:
        for length in lengths:
            names.append(bytes(view[start : start + length]).decode())
            start += length
    except UnicodeDecodeError as error:
        raise ValueFormatError(f"malformed names: {error}") from error
    kind, model_id, subject = names
    size = None if (height, width) == (0, 0) else (height, width)
    return ValueHead(kind, model_id, subject, size, tuple(shapes), _DTYPES[dtype_code], offset)


def deserialize(
    blob: bytes | bytearray | memoryview,
    *,
    kind: str | None = None,
    model_id: str | None = None,
    subject: str | None = None,
    shapes: Sequence[ExpectedShape] | None = None,
    sized: bool | None = None,
) -> StoredValue:
    """bytes -> StoredValue without copying the tensors (they are read-only views of `blob`).

    With expectations given (`ValueHead.check`'s), a value of another kind, model or subject, or with
    shapes the model cannot take, is refused like a corrupted one.
    """
    view = memoryview(blob)
    head = read_head(view)
    (payload_crc,) = struct.unpack_from("<I", view, _HEAD_CRC_OFFSET + 4)
    if zlib.crc32(view[head.length :]) != payload_crc:
        raise ValueFormatError("checksum mismatch: the value is corrupted or truncated")
    head.check(kind=kind, model_id=model_id, subject=subject, shapes=shapes, sized=sized)
    offset, tensors = head.length, []
    for shape in head.shapes:
        size = math.prod(shape) * head.dtype.itemsize
        if offset + size > len(view):
            raise ValueFormatError("value shorter than its shapes say")
        count = size // head.dtype.itemsize
        tensors.append(np.frombuffer(view, dtype=head.dtype, count=count, offset=offset).reshape(shape))
        offset += size
    if offset != len(view):
        raise ValueFormatError(f"{len(view) - offset} unexpected trailing bytes")
    return StoredValue(head.kind, head.model_id, head.subject, tuple(tensors), head.size)
