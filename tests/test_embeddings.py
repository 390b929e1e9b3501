"""sam3_core.embeddings: the store's binary value round-trips exactly and never lets corruption through."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from sam3_core.embeddings import (
    ImageEmbeddings,
    StoredValue,
    ValueFormatError,
    deserialize,
    head_size,
    read_head,
    serialize,
)

# The documented layout: magic, version, dtype code, tensor count, height, width, kind length, model-id
# length, subject length, head crc32, payload crc32.
HEADER = struct.Struct("<4sHBBIIBHHII")
HEADER_FIELDS = {  # name -> (offset, size)
    "magic": (0, 4),
    "version": (4, 2),
    "dtype": (6, 1),
    "count": (7, 1),
    "height": (8, 4),
    "width": (12, 4),
    "kind_length": (16, 1),
    "model_id_length": (17, 2),
    "subject_length": (19, 2),
    "head_crc": (21, 4),
    "crc": (25, 4),
}
CRCS = HEADER_FIELDS["head_crc"][0]
SHAPES = [(1, 4, 12, 12), (1, 6, 6, 6), (1, 8, 3, 3)]
KIND = "emb"
MODEL_ID = "fp32-0123456789abcdef"
IMAGE_ID = "ab" * 32


def make(
    dtype=np.float32, shapes=SHAPES, size=(480, 640), model_id=MODEL_ID, seed=0, kind=KIND, subject=IMAGE_ID
) -> StoredValue:
    rng = np.random.default_rng(seed)
    tensors = tuple(rng.standard_normal(shape).astype(dtype) for shape in shapes)
    return StoredValue(kind, model_id, subject, tensors, size)


def head_end(blob: bytes | bytearray) -> int:
    """Where the payload starts: after the header, the three names and the shape records."""
    count, kind_length, model_length, subject_length = blob[7], blob[16], *struct.unpack_from("<HH", blob, 17)
    offset = HEADER.size + kind_length + model_length + subject_length
    for _ in range(count):
        offset += 1 + 4 * blob[offset]
    return offset


def checksums(blob: bytes | bytearray) -> tuple[int, int]:
    """The documented CRC-32s: the head one over the header (both crcs zeroed) + names + shapes; the
    payload one over the tensors."""
    end = head_end(blob)
    return zlib.crc32(blob[HEADER.size : end], zlib.crc32(bytes(blob[:CRCS]) + bytes(8))), zlib.crc32(blob[end:])


def recrc(blob: bytes | bytearray) -> bytes:
    """The blob with its checksums recomputed: lets a test reach the checks behind the CRCs."""
    blob = bytearray(blob)
    struct.pack_into("<II", blob, CRCS, *checksums(blob))
    return bytes(blob)


@pytest.fixture(scope="module")
def blob() -> bytes:
    return serialize(make())


def assert_same(a: StoredValue, b: StoredValue) -> None:
    assert (a.kind, a.model_id, a.subject, a.size) == (b.kind, b.model_id, b.subject, b.size)
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
    original = make(np.float16, shapes=shapes, size=(3000, 4000))
    data = serialize(original)
    assert len(data) == original.nbytes + head_size(KIND, MODEL_ID, IMAGE_ID, shapes)
    names = len(KIND) + len(MODEL_ID) + len(IMAGE_ID)
    assert head_size(KIND, MODEL_ID, IMAGE_ID, shapes) == HEADER.size + names + 3 * (1 + 4 * 4)
    assert_same(original, deserialize(data))


def test_header_fields_as_documented(blob):
    magic, version, dtype, count, height, width, *lengths, head_crc, crc = HEADER.unpack_from(blob)
    assert (magic, version, dtype, count) == (b"S3EM", 3, 1, 3)
    assert (height, width) == (480, 640)
    names, start = [], HEADER.size
    for length in lengths:
        names.append(blob[start : start + length].decode())
        start += length
    assert names == [KIND, MODEL_ID, IMAGE_ID]
    assert (head_crc, crc) == checksums(blob)


def test_read_head_needs_only_the_head(blob):
    size = head_size(KIND, MODEL_ID, IMAGE_ID, SHAPES)
    head = read_head(blob[:size])
    assert (head.kind, head.model_id, head.subject, head.size) == (KIND, MODEL_ID, IMAGE_ID, (480, 640))
    assert head.shapes == tuple(SHAPES) and head.length == size
    head.check(
        kind=KIND,
        model_id=MODEL_ID,
        subject=IMAGE_ID,
        shapes=[(1, 4, 12, 12), ("batch", 6, 6, 6), (None, 8, 3, 3)],
        sized=True,
    )
    with pytest.raises(ValueFormatError):
        read_head(blob[: size - 1])


def test_another_images_value_is_refused(blob):
    """A value carries its subject: found under another image's key, it is refused, not served."""
    assert deserialize(blob, subject=IMAGE_ID).size == (480, 640)
    with pytest.raises(ValueFormatError, match="is about"):
        deserialize(blob, subject="cd" * 32)


def test_another_kinds_value_is_refused(blob):
    """A value says what it is: an image's embeddings are never read as its detector features."""
    assert deserialize(blob, kind=KIND).kind == KIND
    with pytest.raises(ValueFormatError, match="'emb', expected 'det'"):
        deserialize(blob, kind="det")


def test_a_value_about_no_image_has_no_size():
    """Text features describe a phrase, not an image: no size is stored, and none is made up."""
    text = make(shapes=[(1, 32, 8), (1, 32)], size=None, kind="txt", subject="0f" * 32)
    data = serialize(text)
    assert HEADER.unpack_from(data)[4:6] == (0, 0)
    restored = deserialize(data, sized=False)
    assert restored.size is None
    assert_same(text, restored)
    with pytest.raises(ValueFormatError, match="without an image size"):
        deserialize(data, sized=True)
    with pytest.raises(ValueFormatError, match="with an image size"):
        read_head(serialize(make())).check(sized=False)


def test_shapes_the_model_cannot_take_are_refused(blob):
    """A value with a valid checksum but shapes the loaded model does not take is refused like a corrupt one."""
    with pytest.raises(ValueFormatError, match="shapes"):
        deserialize(blob, shapes=[(1, 4, 12, 12), (1, 6, 6, 6)])
    with pytest.raises(ValueFormatError, match="shapes"):
        deserialize(blob, shapes=[(1, 4, 12, 12), (1, 6, 6, 6), (1, 8, 4, 4)])
    with pytest.raises(ValueFormatError, match="shapes"):
        read_head(blob).check(shapes=[(1, 4, 12, 12), (1, 6, 6, 6), (1, 8, 3, 3, 1)])


@pytest.mark.parametrize("size", [(0, 640), (480, 0), (480, 2**31), (2**32 - 1, 1)])
def test_impossible_sizes_with_valid_checksums_are_refused(blob, size):
    """A checksummed header can still claim a size no image has (or one int32 cannot carry)."""
    crafted = bytearray(blob)
    struct.pack_into("<II", crafted, 8, *size)
    with pytest.raises(ValueFormatError, match="size"):
        deserialize(recrc(crafted))


def test_unicode_names_and_odd_sizes():
    original = make(model_id="modèle-✓", size=(1, 65537), shapes=[(3,), (1, 0, 5), ()], subject="ïmage")
    assert_same(original, deserialize(serialize(original)))


def test_big_endian_and_non_contiguous_inputs():
    rng = np.random.default_rng(3)
    big = rng.standard_normal((1, 2, 5, 5)).astype(">f4")
    strided = np.asfortranarray(rng.standard_normal((1, 3, 4, 4)).astype(np.float32))[:, :, ::2]
    restored = deserialize(serialize(StoredValue("emb", "m", "i", (big, strided), (5, 5))))
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
    assert deserialize(blob, model_id=MODEL_ID).model_id == MODEL_ID
    with pytest.raises(ValueFormatError, match="other-model") as info:
        deserialize(blob, model_id="other-model")
    assert MODEL_ID in str(info.value)


# ------------------------------------------------------------------------------------------------
# serialize refusals, astype
# ------------------------------------------------------------------------------------------------


def test_mixed_dtypes_refused():
    value = make()
    mixed = StoredValue("emb", "m", "i", (value.tensors[0].astype(np.float16), *value.tensors[1:]))
    with pytest.raises(ValueError, match="float32 or all float16"):
        serialize(mixed)


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.uint8])
def test_other_dtypes_refused(dtype):
    with pytest.raises(ValueError):
        serialize(StoredValue("emb", "m", "i", (np.zeros((1, 2), dtype),)))


@pytest.mark.parametrize(
    "value",
    [StoredValue("emb", "m", "i", ()), StoredValue("", "m", "i", (np.zeros(2, np.float32),))],
    ids=["no tensors", "no kind"],
)
def test_values_without_tensors_or_kind_refused(value):
    with pytest.raises(ValueError):
        serialize(value)


@pytest.mark.parametrize("make_one", [make, lambda: ImageEmbeddings(make().tensors, (480, 640), MODEL_ID)])
def test_astype_float16_halves_nbytes(make_one):
    value = make_one()
    half = value.astype(np.float16)
    assert half.nbytes * 2 == value.nbytes
    assert all(t.dtype == np.float16 for t in half.tensors)
    assert half == type(value)(**{**vars(value), "tensors": half.tensors})  # everything else unchanged
    np.testing.assert_allclose(half.tensors[0], value.tensors[0], rtol=1e-3, atol=1e-4)
    assert all(a is b for a, b in zip(value.astype(np.float32).tensors, value.tensors, strict=True))  # no copy


def test_float16_values_are_half_the_bytes():
    value = make()
    assert len(serialize(value.astype(np.float16))) < len(serialize(value)) * 0.6


# ------------------------------------------------------------------------------------------------
# Corruption: always ValueFormatError, never another exception or a silently wrong value
# ------------------------------------------------------------------------------------------------


def _flips(blob: bytes, position: int):
    for mask in (0x01, 0x80, 0xFF):
        corrupted = bytearray(blob)
        corrupted[position] ^= mask
        yield f"byte {position} ^ {mask:#04x}", bytes(corrupted)


def _assert_rejected(where: str, data: bytes) -> None:
    try:
        restored = deserialize(data)
    except ValueFormatError:
        return
    except Exception as error:
        pytest.fail(f"{where}: {type(error).__name__} instead of ValueFormatError: {error}")
    pytest.fail(f"{where}: corrupted value accepted as size={restored.size}, model_id={restored.model_id!r}")


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
    shape_records = HEADER.size + len(KIND) + len(MODEL_ID)
    positions = sorted({*body_positions, *range(HEADER.size, shape_records + 3 * 17), len(blob) - 1})
    for position in positions:
        for where, corrupted in _flips(blob, position):
            _assert_rejected(where, corrupted)


def test_truncation_rejected(blob):
    lengths = sorted({*range(0, 40), *np.linspace(40, len(blob) - 1, 60).astype(int).tolist(), len(blob) - 1})
    for length in lengths:
        with pytest.raises(ValueFormatError):
            deserialize(blob[:length])
        if length < head_size(KIND, MODEL_ID, IMAGE_ID, SHAPES):
            with pytest.raises(ValueFormatError):
                read_head(blob[:length])


def test_trailing_garbage_rejected(blob):
    with pytest.raises(ValueFormatError):
        deserialize(blob + b"\0")
    # Even with a matching checksum, the shapes must account for every byte.
    with pytest.raises(ValueFormatError, match="trailing"):
        deserialize(recrc(blob + b"\0\0\0\0"))


def test_wrong_magic(blob):
    with pytest.raises(ValueFormatError, match="magic"):
        deserialize(b"XXXX" + blob[4:])


@pytest.mark.parametrize("version", [2, 4])
def test_another_version_is_refused_by_name(blob, version):
    """Keys carry the version, so this never meets a fleet's other version; if it did, it is a miss."""
    other = bytearray(blob)
    struct.pack_into("<H", other, 4, version)
    with pytest.raises(ValueFormatError, match=rf"version {version}.*reads 3"):
        deserialize(bytes(other))


def test_unknown_dtype_code(blob):
    corrupted = bytearray(blob)
    corrupted[6] = 9
    with pytest.raises(ValueFormatError, match="dtype"):
        deserialize(recrc(corrupted))


def _crafted(shape_records: bytes, payload: bytes = b"", count: int = 1) -> bytes:
    body = b"em" + shape_records + payload
    header = HEADER.pack(b"S3EM", 3, 1, count, 1, 1, 1, 1, 0, 0, 0)
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
    """A value with a matching CRC but impossible shapes is still only a ValueFormatError.

    BUG (embeddings.py, deserialize): `int(np.prod(shape))` overflows int64 for 2**64 elements, giving a
    size of 0, and `reshape` raises a plain ValueError (use math.prod, which does not overflow).
    """
    with pytest.raises(ValueFormatError):
        deserialize(_crafted(records, b"\0" * 16))
