"""sam3_core.embeddings: the store's binary value round-trips exactly and never lets corruption through."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from sam3_core.embeddings import EmbeddingFormatError, ImageEmbeddings, deserialize, head_size, read_head, serialize

# The documented layout: magic, version, dtype code, tensor count, height, width, model-id length,
# image-id length, head crc32, payload crc32.
HEADER = struct.Struct("<4sHBBIIHHII")
HEADER_FIELDS = {  # name -> (offset, size)
    "magic": (0, 4),
    "version": (4, 2),
    "dtype": (6, 1),
    "count": (7, 1),
    "height": (8, 4),
    "width": (12, 4),
    "id_length": (16, 2),
    "image_id_length": (18, 2),
    "head_crc": (20, 4),
    "crc": (24, 4),
}
SHAPES = [(1, 4, 12, 12), (1, 6, 6, 6), (1, 8, 3, 3)]
MODEL_ID = "fp32-0123456789abcdef"
IMAGE_ID = "ab" * 32


def make(dtype=np.float32, shapes=SHAPES, original_size=(480, 640), model_id=MODEL_ID, seed=0) -> ImageEmbeddings:
    rng = np.random.default_rng(seed)
    tensors = tuple(rng.standard_normal(shape).astype(dtype) for shape in shapes)
    return ImageEmbeddings(tensors, original_size, model_id)


def head_end(blob: bytes | bytearray) -> int:
    """Where the payload starts: after the header, both ids and the shape records."""
    count, model_length, image_length = blob[7], *struct.unpack_from("<HH", blob, 16)
    offset = HEADER.size + model_length + image_length
    for _ in range(count):
        offset += 1 + 4 * blob[offset]
    return offset


def checksums(blob: bytes | bytearray) -> tuple[int, int]:
    """The documented CRC-32s: the head one over the header (both crcs zeroed) + ids + shapes; the
    payload one over the tensors."""
    end = head_end(blob)
    return zlib.crc32(blob[HEADER.size : end], zlib.crc32(bytes(blob[:20]) + bytes(8))), zlib.crc32(blob[end:])


def recrc(blob: bytes | bytearray) -> bytes:
    """The blob with its checksums recomputed: lets a test reach the checks behind the CRCs."""
    blob = bytearray(blob)
    struct.pack_into("<II", blob, 20, *checksums(blob))
    return bytes(blob)


@pytest.fixture(scope="module")
def blob() -> bytes:
    return serialize(make(), IMAGE_ID)


def assert_same(a: ImageEmbeddings, b: ImageEmbeddings) -> None:
    assert a.original_size == b.original_size
    assert a.model_id == b.model_id
    assert len(a.tensors) == len(b.tensors)
    for x, y in zip(a.tensors, b.tensors, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_round_trip(dtype):
    original = make(dtype)
    restored = deserialize(serialize(original))
    assert_same(original, restored)
    assert all(t.dtype == np.dtype(dtype) for t in restored.tensors)


def test_round_trip_sam3_shapes():
    shapes = [(1, 32, 288, 288), (1, 64, 144, 144), (1, 256, 72, 72)]
    original = make(np.float16, shapes=shapes, original_size=(3000, 4000))
    data = serialize(original, IMAGE_ID)
    assert len(data) == original.nbytes + head_size(MODEL_ID, IMAGE_ID, shapes)
    assert head_size(MODEL_ID, IMAGE_ID, shapes) == HEADER.size + len(MODEL_ID) + len(IMAGE_ID) + 3 * (1 + 4 * 4)
    assert_same(original, deserialize(data))


def test_header_fields_as_documented(blob):
    magic, version, dtype, count, height, width, id_length, image_id_length, head_crc, crc = HEADER.unpack_from(blob)
    assert (magic, version, dtype, count) == (b"S3EM", 2, 1, 3)
    assert (height, width) == (480, 640)
    assert blob[HEADER.size : HEADER.size + id_length].decode() == MODEL_ID
    assert blob[HEADER.size + id_length : HEADER.size + id_length + image_id_length].decode() == IMAGE_ID
    assert (head_crc, crc) == checksums(blob)


def test_read_head_needs_only_the_head(blob):
    size = head_size(MODEL_ID, IMAGE_ID, SHAPES)
    head = read_head(blob[:size])
    assert (head.original_size, head.model_id, head.image_id, head.shapes) == ((480, 640), MODEL_ID, IMAGE_ID,
                                                                               tuple(SHAPES))  # fmt: skip
    head.check(model_id=MODEL_ID, image_id=IMAGE_ID, shapes=[(1, 4, 12, 12), ("batch", 6, 6, 6), (None, 8, 3, 3)])
    with pytest.raises(EmbeddingFormatError):
        read_head(blob[: size - 1])


def test_another_images_value_is_refused(blob):
    """A value carries its image id: found under another image's key, it is refused, not served."""
    assert deserialize(blob, expected_image_id=IMAGE_ID).original_size == (480, 640)
    with pytest.raises(EmbeddingFormatError, match="for image"):
        deserialize(blob, expected_image_id="cd" * 32)


def test_shapes_the_model_cannot_take_are_refused(blob):
    """A value with a valid checksum but shapes the loaded model does not take is refused like a corrupt one."""
    with pytest.raises(EmbeddingFormatError, match="shapes"):
        deserialize(blob, expected_shapes=[(1, 4, 12, 12), (1, 6, 6, 6)])
    with pytest.raises(EmbeddingFormatError, match="shapes"):
        deserialize(blob, expected_shapes=[(1, 4, 12, 12), (1, 6, 6, 6), (1, 8, 4, 4)])
    with pytest.raises(EmbeddingFormatError, match="shapes"):
        read_head(blob).check(shapes=[(1, 4, 12, 12), (1, 6, 6, 6), (1, 8, 3, 3, 1)])


@pytest.mark.parametrize("size", [(0, 640), (480, 0), (480, 2**31), (2**32 - 1, 1)])
def test_impossible_sizes_with_valid_checksums_are_refused(blob, size):
    """A checksummed header can still claim a size no image has (or one int32 cannot carry)."""
    crafted = bytearray(blob)
    struct.pack_into("<II", crafted, 8, *size)
    with pytest.raises(EmbeddingFormatError, match="size"):
        deserialize(recrc(crafted))


def test_unicode_model_id_and_odd_sizes():
    original = make(model_id="modèle-✓", original_size=(1, 65537), shapes=[(3,), (1, 0, 5), ()])
    assert_same(original, deserialize(serialize(original, "ïmage")))


def test_big_endian_and_non_contiguous_inputs():
    rng = np.random.default_rng(3)
    big = rng.standard_normal((1, 2, 5, 5)).astype(">f4")
    strided = np.asfortranarray(rng.standard_normal((1, 3, 4, 4)).astype(np.float32))[:, :, ::2]
    restored = deserialize(serialize(ImageEmbeddings((big, strided), (5, 5), "m")))
    np.testing.assert_array_equal(restored.tensors[0], big)
    np.testing.assert_array_equal(restored.tensors[1], strided)
    assert restored.tensors[0].dtype == np.dtype("<f4")


def test_deserialize_views_a_bytearray_without_copying(blob):
    source = bytearray(blob)
    restored = deserialize(source)
    raw = np.frombuffer(source, np.uint8)
    assert all(np.shares_memory(t, raw) for t in restored.tensors)


def test_deserialize_bytes_gives_read_only_views(blob):
    restored = deserialize(blob)
    assert all(not t.flags.writeable for t in restored.tensors)


def test_deserialize_accepts_memoryview(blob):
    assert_same(deserialize(memoryview(blob)), make())


def test_expected_model_id(blob):
    assert deserialize(blob, expected_model_id=MODEL_ID).model_id == MODEL_ID
    with pytest.raises(EmbeddingFormatError, match="other-model") as info:
        deserialize(blob, expected_model_id="other-model")
    assert MODEL_ID in str(info.value)


# ------------------------------------------------------------------------------------------------
# serialize refusals, astype
# ------------------------------------------------------------------------------------------------


def test_mixed_dtypes_refused():
    embeddings = make()
    mixed = ImageEmbeddings((embeddings.tensors[0].astype(np.float16), *embeddings.tensors[1:]), (1, 1), "m")
    with pytest.raises(ValueError, match="float32 or all float16"):
        serialize(mixed)


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.uint8])
def test_other_dtypes_refused(dtype):
    with pytest.raises(ValueError):
        serialize(ImageEmbeddings((np.zeros((1, 2), dtype),), (1, 1), "m"))


def test_no_tensors_refused():
    with pytest.raises(ValueError):
        serialize(ImageEmbeddings((), (1, 1), "m"))


def test_astype_float16_halves_nbytes():
    embeddings = make()
    half = embeddings.astype(np.float16)
    assert half.nbytes * 2 == embeddings.nbytes
    assert all(t.dtype == np.float16 for t in half.tensors)
    assert (half.original_size, half.model_id) == (embeddings.original_size, embeddings.model_id)
    np.testing.assert_allclose(half.tensors[0], embeddings.tensors[0], rtol=1e-3, atol=1e-4)
    assert len(serialize(half)) < len(serialize(embeddings)) * 0.6


def test_astype_same_dtype_does_not_copy():
    embeddings = make()
    same = embeddings.astype(np.float32)
    assert all(a is b for a, b in zip(same.tensors, embeddings.tensors, strict=True))


# ------------------------------------------------------------------------------------------------
# Corruption: always EmbeddingFormatError, never another exception or a silently wrong value
# ------------------------------------------------------------------------------------------------


def _flips(blob: bytes, position: int):
    for mask in (0x01, 0x80, 0xFF):
        corrupted = bytearray(blob)
        corrupted[position] ^= mask
        yield f"byte {position} ^ {mask:#04x}", bytes(corrupted)


def _assert_rejected(where: str, data: bytes) -> None:
    try:
        restored = deserialize(data)
    except EmbeddingFormatError:
        return
    except Exception as error:
        pytest.fail(f"{where}: {type(error).__name__} instead of EmbeddingFormatError: {error}")
    pytest.fail(
        f"{where}: corrupted value accepted as original_size={restored.original_size}, model_id={restored.model_id!r}"
    )


@pytest.mark.parametrize("field", list(HEADER_FIELDS))
def test_header_corruption_rejected(blob, field):
    """A flipped bit anywhere in the header (height and width included) is caught by the head CRC,
    which `read_head` checks without the payload: a corrupted width is a miss, never a wrong size."""
    offset, size = HEADER_FIELDS[field]
    for position in range(offset, offset + size):
        for where, corrupted in _flips(blob, position):
            _assert_rejected(where, corrupted)


def test_body_corruption_rejected(blob):
    body_positions = np.linspace(HEADER.size, len(blob) - 1, 50).astype(int).tolist()
    shape_records = HEADER.size + len(MODEL_ID)
    positions = sorted({*body_positions, *range(HEADER.size, shape_records + 3 * 17), len(blob) - 1})
    for position in positions:
        for where, corrupted in _flips(blob, position):
            _assert_rejected(where, corrupted)


def test_truncation_rejected(blob):
    lengths = sorted({*range(0, 40), *np.linspace(40, len(blob) - 1, 60).astype(int).tolist(), len(blob) - 1})
    for length in lengths:
        with pytest.raises(EmbeddingFormatError):
            deserialize(blob[:length])
        if length < head_size(MODEL_ID, IMAGE_ID, SHAPES):
            with pytest.raises(EmbeddingFormatError):
                read_head(blob[:length])


def test_trailing_garbage_rejected(blob):
    with pytest.raises(EmbeddingFormatError):
        deserialize(blob + b"\0")
    # Even with a matching checksum, the shapes must account for every byte.
    with pytest.raises(EmbeddingFormatError, match="trailing"):
        deserialize(recrc(blob + b"\0\0\0\0"))


def test_wrong_magic(blob):
    with pytest.raises(EmbeddingFormatError, match="magic"):
        deserialize(b"XXXX" + blob[4:])


def test_wrong_version_message(blob):
    newer = bytearray(blob)
    struct.pack_into("<H", newer, 4, 3)
    with pytest.raises(EmbeddingFormatError, match=r"version 3.*reads 2"):
        deserialize(bytes(newer))


def test_unknown_dtype_code(blob):
    corrupted = bytearray(blob)
    corrupted[6] = 9
    with pytest.raises(EmbeddingFormatError, match="dtype"):
        deserialize(recrc(corrupted))


def _crafted(shape_records: bytes, payload: bytes = b"", count: int = 1) -> bytes:
    body = b"m" + shape_records + payload
    header = HEADER.pack(b"S3EM", 2, 1, count, 1, 1, 1, 0, 0, 0)
    if len(shape_records) < 1 or len(shape_records) < 1 + 4 * shape_records[0]:  # no head to checksum
        return header + body
    return recrc(header + body)


@pytest.mark.parametrize(
    "records",
    [
        struct.pack("<B3I", 3, 2**32 - 1, 2**32 - 1, 2**32 - 1),
        struct.pack("<B4I", 4, 2**16, 2**16, 2**16, 2**16),  # 2**64 elements: wraps to 0 in int64
        struct.pack("<B2I", 2, 2**31, 4),
        struct.pack("<B", 200),  # ndim larger than the value
        b"",  # count says one tensor, no record
    ],
    ids=["huge", "int64-wrap", "large", "ndim-overrun", "missing-record"],
)
def test_crafted_shapes_with_valid_checksum_rejected(records):
    """A value with a matching CRC but impossible shapes is still only an EmbeddingFormatError.

    BUG (embeddings.py, deserialize): `int(np.prod(shape))` overflows int64 for 2**64 elements, giving a
    size of 0, and `reshape` raises a plain ValueError (use math.prod, which does not overflow).
    """
    with pytest.raises(EmbeddingFormatError):
        deserialize(_crafted(records, b"\0" * 16))
