"""An encoded image, and its self-describing binary form (the value the embedding store keeps).

Layout (version 2), little-endian:

    header   magic "S3EM", version, dtype code, tensor count, original height, original width,
             model-id length, image-id length, head CRC-32, payload CRC-32
    head     the model id, the image id, one shape record (ndim, dims...) per tensor
    payload  the raw tensors back to back

The value names what it is (model and image): a value found under another image's key, or written by
another model, is refused instead of answering for the wrong image. The head CRC covers the header and
the head, so a reader can trust the size, ids and shapes from the first ~200 bytes without fetching the
megabytes behind them (`read_head`); the payload CRC covers the tensors. A value failing any check
raises `EmbeddingFormatError`, which the store treats as a cache miss.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAGIC = b"S3EM"
FORMAT_VERSION = 2
_DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f2")}
_DTYPE_CODES = {dtype: code for code, dtype in _DTYPES.items()}
# magic, version, dtype code, tensor count, original height, original width, model-id length,
# image-id length, head crc32, payload crc32
_HEADER = struct.Struct("<4sHBBIIHHII")
_HEAD_CRC_OFFSET = _HEADER.size - 8
_MAX_SIDE = 2**31 - 1  # image sides travel as int32 on the wire

# A dimension the model leaves symbolic (a str or None in ONNX) matches any stored size.
ExpectedShape = Sequence[int | str | None]


class EmbeddingFormatError(ValueError):
    """Bytes that are not a complete, uncorrupted embedding value of a version we understand."""


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
        """The same embeddings stored at another precision (float16 halves the store's memory)."""
        tensors = tuple(t if t.dtype == dtype else t.astype(dtype) for t in self.tensors)
        return ImageEmbeddings(tensors, self.original_size, self.model_id)


@dataclass(frozen=True)
class ValueHead:
    """What a value says about itself, read and checked from its first bytes alone."""

    original_size: tuple[int, int]
    model_id: str
    image_id: str
    shapes: tuple[tuple[int, ...], ...]
    dtype: np.dtype
    size: int  # bytes of header + head: where the payload starts

    def check(
        self,
        *,
        model_id: str | None = None,
        image_id: str | None = None,
        shapes: Sequence[ExpectedShape] | None = None,
    ) -> None:
        """Raise EmbeddingFormatError unless the value is for this model, image and shapes (None: any)."""
        if model_id is not None and self.model_id != model_id:
            raise EmbeddingFormatError(f"embeddings are for model {self.model_id!r}, expected {model_id!r}")
        if image_id is not None and self.image_id != image_id:
            raise EmbeddingFormatError(f"embeddings are for image {self.image_id!r}, expected {image_id!r}")
        if shapes is not None and not _shapes_match(self.shapes, shapes):
            raise EmbeddingFormatError(f"tensor shapes {list(self.shapes)} do not fit the model's {list(shapes)}")


def _shapes_match(actual: Sequence[tuple[int, ...]], expected: Sequence[ExpectedShape]) -> bool:
    return len(actual) == len(expected) and all(
        len(a) == len(e) and all(not isinstance(d, int) or d == n for n, d in zip(a, e, strict=True))
        for a, e in zip(actual, expected, strict=True)
    )


def head_size(model_id: str, image_id: str, shapes: Sequence[ExpectedShape]) -> int:
    """Bytes of header + head of a value with these ids and tensor ranks: what `read_head` needs."""
    return _HEADER.size + len(model_id.encode()) + len(image_id.encode()) + sum(1 + 4 * len(s) for s in shapes)


def serialize(embeddings: ImageEmbeddings, image_id: str = "") -> bytes:
    """ImageEmbeddings of `image_id` -> one bytes value; all tensors must share float32/float16."""
    dtypes = {np.dtype(t.dtype).newbyteorder("<") for t in embeddings.tensors}
    if len(dtypes) != 1 or (dtype := dtypes.pop()) not in _DTYPE_CODES:
        raise ValueError(f"tensors must all be float32 or all float16, got {[t.dtype for t in embeddings.tensors]}")
    height, width = embeddings.original_size
    if not (1 <= height <= _MAX_SIDE and 1 <= width <= _MAX_SIDE):
        raise ValueError(f"original size must be positive int32 sides, got {embeddings.original_size}")
    model_id, image_id_bytes = embeddings.model_id.encode(), image_id.encode()
    shapes = b"".join(struct.pack(f"<B{t.ndim}I", t.ndim, *t.shape) for t in embeddings.tensors)
    fields = (MAGIC, FORMAT_VERSION, _DTYPE_CODES[dtype], len(embeddings.tensors), height, width)
    fields += (len(model_id), len(image_id_bytes))
    head = model_id + image_id_bytes + shapes
    head_crc = zlib.crc32(head, zlib.crc32(_HEADER.pack(*fields, 0, 0)))
    tensors = [np.ascontiguousarray(t, dtype=dtype).data for t in embeddings.tensors]
    crc = 0
    for part in tensors:
        crc = zlib.crc32(part, crc)
    return b"".join([_HEADER.pack(*fields, head_crc, crc), head, *tensors])


def read_head(prefix: bytes | bytearray | memoryview) -> ValueHead:
    """Parse and check the header and head at the start of a value (the payload may be absent)."""
    view = memoryview(prefix)
    if len(view) < _HEADER.size:
        raise EmbeddingFormatError(f"value too short for a header ({len(view)} bytes)")
    magic, version, dtype_code, count, height, width, model_length, image_length, head_crc, _crc = _HEADER.unpack_from(
        view
    )
    if magic != MAGIC:
        raise EmbeddingFormatError("not an embedding value (bad magic)")
    if version != FORMAT_VERSION:
        raise EmbeddingFormatError(f"embedding format version {version}, this build reads {FORMAT_VERSION}")
    try:
        offset = _HEADER.size + model_length + image_length
        shapes = []
        for _ in range(count):
            (ndim,) = struct.unpack_from("<B", view, offset)
            shapes.append(tuple(int(d) for d in struct.unpack_from(f"<{ndim}I", view, offset + 1)))
            offset += 1 + 4 * ndim
    except struct.error as error:
        raise EmbeddingFormatError(f"value too short for its head: {error}") from error
    crc = zlib.crc32(view[_HEADER.size : offset], zlib.crc32(bytes(view[:_HEAD_CRC_OFFSET]) + bytes(8)))
    if crc != head_crc:
        raise EmbeddingFormatError("head checksum mismatch: the value is corrupted or truncated")
    if dtype_code not in _DTYPES:
        raise EmbeddingFormatError(f"unknown dtype code {dtype_code}")
    if not (1 <= height <= _MAX_SIDE and 1 <= width <= _MAX_SIDE):
        raise EmbeddingFormatError(f"impossible original size {height}x{width}")
    try:
        model_id = bytes(view[_HEADER.size : _HEADER.size + model_length]).decode()
        image_id = bytes(view[_HEADER.size + model_length : _HEADER.size + model_length + image_length]).decode()
    except UnicodeDecodeError as error:
        raise EmbeddingFormatError(f"malformed ids: {error}") from error
    return ValueHead((height, width), model_id, image_id, tuple(shapes), _DTYPES[dtype_code], offset)


def deserialize(
    blob: bytes | bytearray | memoryview,
    *,
    expected_model_id: str | None = None,
    expected_image_id: str | None = None,
    expected_shapes: Sequence[ExpectedShape] | None = None,
) -> ImageEmbeddings:
    """bytes -> ImageEmbeddings without copying the tensors (they are read-only views of `blob`).

    With expectations given, a value for another model or image, or with shapes the model cannot
    take, is refused like a corrupted one.
    """
    view = memoryview(blob)
    head = read_head(view)
    (payload_crc,) = struct.unpack_from("<I", view, _HEAD_CRC_OFFSET + 4)
    if zlib.crc32(view[head.size :]) != payload_crc:
        raise EmbeddingFormatError("checksum mismatch: the value is corrupted or truncated")
    head.check(model_id=expected_model_id, image_id=expected_image_id, shapes=expected_shapes)
    offset, tensors = head.size, []
    for shape in head.shapes:
        size = math.prod(shape) * head.dtype.itemsize
        if offset + size > len(view):
            raise EmbeddingFormatError("value shorter than its shapes say")
        count = size // head.dtype.itemsize
        tensors.append(np.frombuffer(view, dtype=head.dtype, count=count, offset=offset).reshape(shape))
        offset += size
    if offset != len(view):
        raise EmbeddingFormatError(f"{len(view) - offset} unexpected trailing bytes")
    return ImageEmbeddings(tuple(tensors), head.original_size, head.model_id)
