"""An encoded image, and its self-describing binary form (the value the embedding store keeps).

Layout, little-endian: a fixed header, the model id, one shape record per tensor, then the raw tensors
back to back. A CRC-32 over the whole value (its own field excluded) guards against truncated or corrupted values:
a value that fails any check raises `EmbeddingFormatError`, which the store treats as a cache miss.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

MAGIC = b"S3EM"
FORMAT_VERSION = 1
_DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f2")}
_DTYPE_CODES = {dtype: code for code, dtype in _DTYPES.items()}
# magic, version, dtype code, tensor count, original height, original width, model-id length, crc32
_HEADER = struct.Struct("<4sHBBIIHI")


class EmbeddingFormatError(ValueError):
    """Bytes that are not a complete, uncorrupted embedding blob of a version we understand."""


@dataclass(frozen=True)
class Header:
    """What the first bytes of a value say, read without the tensors (the store peeks at a few dozen bytes)."""

    original_size: tuple[int, int]  # (height, width)
    model_id: str

    @staticmethod
    def length(model_id: str) -> int:
        """Bytes to read for the header of a value written for `model_id`."""
        return _HEADER.size + len(model_id.encode())


def read_header(head: bytes | bytearray | memoryview) -> Header:
    """The header of a value (or of its first `Header.length(...)` bytes); the checksum is not checked here."""
    view = memoryview(head)
    if len(view) < _HEADER.size:
        raise EmbeddingFormatError(f"value too short for a header ({len(view)} bytes)")
    magic, version, dtype_code, count, height, width, id_length, _crc = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise EmbeddingFormatError("not an embedding blob (bad magic)")
    if version != FORMAT_VERSION:
        raise EmbeddingFormatError(f"embedding format version {version}, this build reads {FORMAT_VERSION}")
    if dtype_code not in _DTYPES:
        raise EmbeddingFormatError(f"unknown dtype code {dtype_code}")
    if count == 0 or height == 0 or width == 0:
        raise EmbeddingFormatError(f"empty embeddings ({count} tensors of a {width}x{height} image)")
    if len(view) < _HEADER.size + id_length:
        raise EmbeddingFormatError("value too short for its model id")
    try:
        model_id = bytes(view[_HEADER.size : _HEADER.size + id_length]).decode()
    except UnicodeDecodeError as error:
        raise EmbeddingFormatError(f"malformed model id: {error}") from error
    return Header((height, width), model_id)


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


def serialize(embeddings: ImageEmbeddings) -> bytes:
    """ImageEmbeddings -> one bytes value (header + tensors); all tensors must share float32/float16."""
    dtypes = {np.dtype(t.dtype).newbyteorder("<") for t in embeddings.tensors}
    if len(dtypes) != 1 or (dtype := dtypes.pop()) not in _DTYPE_CODES:
        raise ValueError(f"tensors must all be float32 or all float16, got {[t.dtype for t in embeddings.tensors]}")
    model_id = embeddings.model_id.encode()
    shapes = b"".join(struct.pack(f"<B{t.ndim}I", t.ndim, *t.shape) for t in embeddings.tensors)
    payload = [model_id, shapes, *(np.ascontiguousarray(t, dtype=dtype).data for t in embeddings.tensors)]
    height, width = embeddings.original_size
    fields = (MAGIC, FORMAT_VERSION, _DTYPE_CODES[dtype], len(embeddings.tensors), height, width, len(model_id))
    crc = zlib.crc32(_HEADER.pack(*fields, 0))
    for part in payload:
        crc = zlib.crc32(part, crc)
    return b"".join([_HEADER.pack(*fields, crc), *payload])


def deserialize(blob: bytes | bytearray | memoryview, *, expected_model_id: str | None = None) -> ImageEmbeddings:
    """bytes -> ImageEmbeddings without copying the tensors (they are read-only views of `blob`)."""
    view = memoryview(blob)
    header = read_header(view)
    magic, version, dtype_code, count, height, width, id_length, crc = _HEADER.unpack_from(view)
    body = view[_HEADER.size :]
    header_without_crc = _HEADER.pack(magic, version, dtype_code, count, height, width, id_length, 0)
    if zlib.crc32(body, zlib.crc32(header_without_crc)) != crc:
        raise EmbeddingFormatError("checksum mismatch: the value is corrupted or truncated")
    model_id = header.model_id
    try:
        offset = id_length
        shapes = []
        for _ in range(count):
            (ndim,) = struct.unpack_from("<B", body, offset)
            shapes.append(struct.unpack_from(f"<{ndim}I", body, offset + 1))
            offset += 1 + 4 * ndim
        dtype = _DTYPES[dtype_code]
        tensors = []
        for shape in shapes:
            size = math.prod(shape) * dtype.itemsize
            if offset + size > len(body):
                raise EmbeddingFormatError("value shorter than its shapes say")
            tensors.append(np.frombuffer(body, dtype=dtype, count=size // dtype.itemsize, offset=offset).reshape(shape))
            offset += size
    except (struct.error, ValueError) as error:
        raise EmbeddingFormatError(f"malformed header: {error}") from error
    if offset != len(body):
        raise EmbeddingFormatError(f"{len(body) - offset} unexpected trailing bytes")
    if expected_model_id is not None and model_id != expected_model_id:
        raise EmbeddingFormatError(f"embeddings are for model {model_id!r}, expected {expected_model_id!r}")
    return ImageEmbeddings(tuple(tensors), (height, width), model_id)
