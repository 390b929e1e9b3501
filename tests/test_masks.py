"""Bounding boxes and the three wire formats: sam3_core.masks encodes, sam3_client.masks decodes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sam3_client.masks import decode_packed_bits, decode_png, decode_rle, encode_rle
from sam3_core.masks import CocoRle, bounding_box, to_coco_rle, to_packed_bits, to_png

try:
    from pycocotools import mask as pycocotools_mask
except ImportError:  # optional: only the cross-check against the reference reader needs it
    pycocotools_mask = None

needs_pycocotools = pytest.mark.skipif(pycocotools_mask is None, reason="pycocotools is not installed")
# pycocotools 2.0.x calls np.array(copy=False) on numpy 2: a warning about them, not about us.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

ODD_SIZES = [(1, 1), (17, 23), (3, 1000), (1000, 3), (1, 9), (64, 64)]


def random_mask(height: int, width: int, seed: int = 0, density: float = 0.5) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width)) < density


def blobby_mask(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Long runs, like real masks (random masks are all short runs)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    return (y - cy) ** 2 / max(height, 1) ** 2 + (x - cx) ** 2 / max(width, 1) ** 2 < 0.1


# ------------------------------------------------------------------------------------------------
# bounding_box (COCO x, y, width, height)
# ------------------------------------------------------------------------------------------------


def test_bounding_box_empty():
    assert bounding_box(np.zeros((5, 7), bool)) == (0, 0, 0, 0)


def test_bounding_box_full():
    assert bounding_box(np.ones((5, 7), bool)) == (0, 0, 7, 5)


def test_bounding_box_single_pixel():
    mask = np.zeros((5, 7), bool)
    mask[3, 6] = True
    assert bounding_box(mask) == (6, 3, 1, 1)


def test_bounding_box_l_shape():
    mask = np.zeros((10, 12), bool)
    mask[2:8, 3] = True  # vertical bar x=3, y=2..7
    mask[7, 3:10] = True  # foot y=7, x=3..9
    assert bounding_box(mask) == (3, 2, 7, 6)


def test_bounding_box_types_are_python_ints():
    mask = np.zeros((4, 4), bool)
    mask[1, 2] = True
    assert all(type(v) is int for v in bounding_box(mask))


def test_bounding_box_matches_brute_force():
    for seed in range(5):
        mask = random_mask(13, 29, seed, density=0.02)
        ys, xs = np.nonzero(mask)
        expected = (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) if xs.size else (0,) * 4
        assert bounding_box(mask) == tuple(int(v) for v in expected)


# ------------------------------------------------------------------------------------------------
# PNG
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ODD_SIZES)
def test_png_is_binary_greyscale_at_size(size):
    mask = random_mask(*size)
    data = to_png(mask)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.mode == "L"
        assert image.size == (size[1], size[0])
        values = np.asarray(image)
    assert set(np.unique(values).tolist()) <= {0, 255}
    np.testing.assert_array_equal(values == 255, mask)
    np.testing.assert_array_equal(decode_png(data), mask)


def test_png_accepts_non_bool_masks():
    mask = np.array([[0, 1], [2, 0]], np.uint8)
    np.testing.assert_array_equal(decode_png(to_png(mask)), mask > 0)


# ------------------------------------------------------------------------------------------------
# COCO RLE
# ------------------------------------------------------------------------------------------------


def _check_rle(mask: np.ndarray) -> CocoRle:
    rle = to_coco_rle(mask)
    assert rle.size == mask.shape
    assert sum(rle.counts) == mask.size
    assert all(type(c) is int for c in rle.counts)
    assert all(c > 0 for c in rle.counts[1:])  # only the first run may be empty
    assert sum(rle.counts[1::2]) == int(mask.sum())
    np.testing.assert_array_equal(decode_rle(rle.counts, *rle.size), mask)
    # The SDK's own encoder (for masks that arrived as PNG or bits) gives the same runs.
    assert encode_rle(mask) == {"size": list(mask.shape), "counts": rle.counts}
    return rle


@pytest.mark.parametrize("size", ODD_SIZES)
@pytest.mark.parametrize("kind", ["random", "blobby"])
def test_rle_round_trip(size, kind):
    mask = random_mask(*size, seed=size[0]) if kind == "random" else blobby_mask(*size)
    _check_rle(mask)


def test_rle_is_column_major():
    mask = np.array([[0, 1], [0, 0]], bool)  # column-major order: 0, 0, 1, 0
    assert to_coco_rle(mask).counts == [2, 1, 1]


def test_rle_starting_with_foreground():
    mask = np.zeros((4, 5), bool)
    mask[0, 0] = mask[1, 0] = True
    rle = _check_rle(mask)
    assert rle.counts[:2] == [0, 2]


def test_rle_all_zero_and_all_one():
    assert _check_rle(np.zeros((3, 4), bool)).counts == [12]
    assert _check_rle(np.ones((3, 4), bool)).counts == [0, 12]


def test_rle_of_non_contiguous_mask():
    mask = random_mask(20, 30)[::2, ::3]
    _check_rle(mask)


# pycocotools is the reader every COCO tool uses: our counts must mean the same to it.
@needs_pycocotools
@pytest.mark.parametrize("size", ODD_SIZES)
@pytest.mark.parametrize("kind", ["random", "blobby", "zeros", "ones", "first-pixel"])
def test_rle_read_by_pycocotools(size, kind):
    height, width = size
    mask = {
        "random": lambda: random_mask(height, width, seed=width),
        "blobby": lambda: blobby_mask(height, width),
        "zeros": lambda: np.zeros(size, bool),
        "ones": lambda: np.ones(size, bool),
        "first-pixel": lambda: np.pad(np.ones((1, 1), bool), ((0, height - 1), (0, width - 1))),
    }[kind]()
    rle = to_coco_rle(mask)
    compressed = pycocotools_mask.frPyObjects({"counts": rle.counts, "size": [height, width]}, height, width)
    decoded = pycocotools_mask.decode(compressed)
    assert decoded.shape == size
    np.testing.assert_array_equal(decoded.astype(bool), mask)
    assert int(pycocotools_mask.area(compressed)) == int(mask.sum())
    if mask.any():
        np.testing.assert_array_equal(pycocotools_mask.toBbox(compressed), bounding_box(mask))
    # Same runs as pycocotools' own encoder: their compressed strings are identical.
    theirs = pycocotools_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert compressed["counts"] == theirs["counts"]


# ------------------------------------------------------------------------------------------------
# Packed bits
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (3, 9), (17, 23), (4, 8), (2, 16), (3, 1001)])
def test_packed_bits_round_trip(size):
    mask = random_mask(*size, seed=size[1])
    data = to_packed_bits(mask)
    height, width = size
    assert len(data) == (height * width + 7) // 8
    np.testing.assert_array_equal(decode_packed_bits(data, height, width), mask)


def test_packed_bits_layout_row_major_msb_first_no_row_padding():
    mask = np.zeros((2, 9), bool)
    mask[0, 0] = True  # bit 0: top bit of byte 0
    mask[1, 8] = True  # bit 9 + 8 = 17: second bit of byte 2 (rows are not padded to bytes)
    assert to_packed_bits(mask) == bytes([0b1000_0000, 0, 0b0100_0000])


def test_packed_bits_of_non_contiguous_mask():
    mask = random_mask(12, 30)[::3, ::2]
    np.testing.assert_array_equal(decode_packed_bits(to_packed_bits(mask), *mask.shape), mask)
