"""The two resizes against torch goldens (tests/fixtures/make_resize_golden.py) — no torch needed here:
the image resize of sam3_core.preprocess and the logit upsampling of sam3_core.postprocess."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from sam3_core.masks import bounding_box, rle_area_and_box, to_coco_rle
from sam3_core.postprocess import upsample_logits, upsample_logits_to_mask, upsample_logits_to_rle
from sam3_core.preprocess import resize_uint8_antialiased

GOLDEN_PATH = Path(__file__).parent / "fixtures" / "resize_golden.npz"
UPSAMPLE_ATOL = 1e-5


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN_PATH, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _seed(golden: dict[str, np.ndarray]) -> int:
    return int(golden["seed"])


def _resize_case_ids() -> list[str]:
    with np.load(GOLDEN_PATH, allow_pickle=False) as npz:
        return ["{}x{}x{}->{}x{}".format(*case) for case in npz["resize_cases"]]


RESIZE_IDS = _resize_case_ids()


# ----------------------------------------------------------------------------------------------- resize


@pytest.mark.parametrize("index", range(len(RESIZE_IDS)), ids=RESIZE_IDS)
def test_resize_matches_torch_exactly(golden: dict[str, np.ndarray], index: int) -> None:
    h_in, w_in, c, h, w = (int(v) for v in golden["resize_cases"][index])
    image = np.random.default_rng([_seed(golden), index]).integers(0, 256, size=(h_in, w_in, c), dtype=np.uint8)
    assert _sha256(image) == golden["resize_input_sha256"][index], "numpy's RNG stream changed: regenerate"

    out = resize_uint8_antialiased(image, h, w)

    assert out.shape == (h, w, c) and out.dtype == np.uint8
    stored = golden.get(f"resize_{index}_output")
    if stored is not None:
        diff = np.abs(out.astype(np.int16) - stored.astype(np.int16))
        assert diff.max() == 0, f"{int((diff > 0).sum())} bytes differ (max {int(diff.max())})"
    row_sums = out.reshape(h, -1).sum(axis=1, dtype=np.int64)
    bad_rows = np.flatnonzero(row_sums != golden[f"resize_{index}_row_sums"])
    assert bad_rows.size == 0, f"rows differing from torch: {bad_rows[:10].tolist()} ({bad_rows.size} total)"
    assert _sha256(out) == golden["resize_output_sha256"][index]


def test_resize_identity_returns_equal_copy() -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(31, 47, 3), dtype=np.uint8)
    out = resize_uint8_antialiased(image, 31, 47)
    np.testing.assert_array_equal(out, image)
    assert not np.shares_memory(out, image)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("size", [(1, 1), (5, 9), (64, 64), (200, 13)])
def test_resize_shape_dtype_and_constant_image(channels: int, size: tuple[int, int]) -> None:
    # Every normalised fixed-point row sums to ~2**precision, so a flat image must stay exactly flat.
    for value in (0, 1, 77, 128, 254, 255):
        image = np.full((37, 23, channels), value, dtype=np.uint8)
        out = resize_uint8_antialiased(image, *size)
        assert out.shape == (*size, channels)
        assert out.dtype == np.uint8
        assert out.flags.c_contiguous
        assert np.all(out == value), f"constant {value} not preserved"


def test_resize_is_layout_independent() -> None:
    # torch's result does not depend on the memory format; ours must not depend on strides either.
    base = np.random.default_rng(1).integers(0, 256, size=(3, 40, 60), dtype=np.uint8)
    chw_view = base.transpose(1, 2, 0)  # non-contiguous HWC view
    expected = resize_uint8_antialiased(np.ascontiguousarray(chw_view), 25, 90)
    np.testing.assert_array_equal(resize_uint8_antialiased(chw_view, 25, 90), expected)


def test_resize_channels_are_independent() -> None:
    image = np.random.default_rng(2).integers(0, 256, size=(50, 70, 4), dtype=np.uint8)
    out = resize_uint8_antialiased(image, 33, 101)
    for ch in range(4):
        single = resize_uint8_antialiased(image[..., ch : ch + 1], 33, 101)
        np.testing.assert_array_equal(out[..., ch : ch + 1], single)


@pytest.mark.parametrize(
    ("image", "size", "match"),
    [
        (np.zeros((4, 4, 3), dtype=np.float32), (2, 2), "uint8"),
        (np.zeros((4, 4, 3), dtype=np.uint16), (2, 2), "uint8"),
        (np.zeros((4, 4), dtype=np.uint8), (2, 2), r"\(H, W, C\)"),
        (np.zeros((4, 4, 5), dtype=np.uint8), (2, 2), r"\(H, W, C\)"),
        (np.zeros((0, 4, 3), dtype=np.uint8), (2, 2), "non-empty"),
        (np.zeros((4, 4, 3), dtype=np.uint8), (0, 2), "height must be positive"),
        (np.zeros((4, 4, 3), dtype=np.uint8), (2, -1), "width must be positive"),
        (np.zeros((4, 4, 3), dtype=np.uint8), (2.0, 2), "height must be an int"),
        (np.zeros((4, 4, 3), dtype=np.uint8), (2, True), "width must be an int"),
        ([[[0, 0, 0]]], (2, 2), "numpy array"),
    ],
)
def test_resize_rejects_bad_arguments(image: object, size: tuple[object, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resize_uint8_antialiased(image, *size)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- upsample


def _logit_input(golden: dict[str, np.ndarray], index: int, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng([_seed(golden), 1000 + index])
    return (rng.standard_normal(shape) * float(golden["logit_scale"])).astype(np.float32)


@pytest.mark.parametrize("index", range(4))
def test_upsample_matches_torch(golden: dict[str, np.ndarray], index: int) -> None:
    shape = tuple(int(v) for v in golden[f"logits_{index}_shape"])
    h, w = (int(v) for v in golden[f"logits_{index}_size"])
    x = _logit_input(golden, index, shape)
    assert _sha256(x) == golden["logit_input_sha256"][index], "numpy's RNG stream changed: regenerate"

    out = upsample_logits(x, h, w)

    expected = golden[f"logits_{index}_output"]
    assert out.shape == expected.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=UPSAMPLE_ATOL)


def test_upsample_large_matches_torch(golden: dict[str, np.ndarray]) -> None:
    shape = tuple(int(v) for v in golden["big_logits_shape"])
    h, w = (int(v) for v in golden["big_logits_size"])
    stride = int(golden["big_logits_stride"])
    x = _logit_input(golden, 4, shape)
    assert _sha256(x) == str(golden["big_logits_input_sha256"]), "numpy's RNG stream changed: regenerate"

    out = upsample_logits(x, h, w)

    assert out.shape == (h, w) and out.dtype == np.float32
    np.testing.assert_allclose(out[::stride, ::stride], golden["big_logits_sample"], rtol=0, atol=UPSAMPLE_ATOL)
    expected_mask = np.unpackbits(golden["big_logits_mask_bits"], count=h * w).reshape(h, w).astype(bool)
    mask = upsample_logits_to_mask(x, h, w)
    assert mask.dtype == np.bool_ and mask.shape == (h, w)
    # Only values within float rounding of 0 may land on the other side of the threshold.
    differ = mask != expected_mask
    assert np.all(np.abs(out[differ]) <= UPSAMPLE_ATOL), f"{int(differ.sum())} mask pixels differ"


def test_upsample_identity_and_batch_dims() -> None:
    x = np.random.default_rng(3).standard_normal((2, 3, 20, 30)).astype(np.float32)
    np.testing.assert_array_equal(upsample_logits(x, 20, 30), x)
    out = upsample_logits(x, 41, 7)
    assert out.shape == (2, 3, 41, 7) and out.dtype == np.float32
    np.testing.assert_allclose(out[1, 2], upsample_logits(x[1, 2], 41, 7), rtol=0, atol=1e-6)


def test_upsample_constant_and_float64_input() -> None:
    x = np.full((9, 13), -2.5, dtype=np.float64)
    out = upsample_logits(x, 100, 3)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, -2.5, rtol=0, atol=1e-6)
    assert not upsample_logits_to_mask(x, 100, 3).any()


def test_upsample_interpolates_half_pixel_centres() -> None:
    # 2 -> 4 with half-pixel centres: source coords -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1).
    x = np.array([[0.0, 4.0]], dtype=np.float32)
    np.testing.assert_allclose(upsample_logits(x, 1, 4)[0], [0.0, 1.0, 3.0, 4.0], atol=1e-6)


@pytest.mark.parametrize(
    ("logits", "size", "match"),
    [
        (np.zeros(5, dtype=np.float32), (2, 2), r"\(\.\.\., h, w\)"),
        (np.zeros((4, 4), dtype=np.int32), (2, 2), "floating-point"),
        (np.zeros((0, 4), dtype=np.float32), (2, 2), "non-empty"),
        (np.zeros((4, 4), dtype=np.float32), (0, 2), "height must be positive"),
        (np.zeros((4, 4), dtype=np.float32), (2, 1.5), "width must be an int"),
        ([[0.0]], (2, 2), "numpy array"),
    ],
)
def test_upsample_rejects_bad_arguments(logits: object, size: tuple[object, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        upsample_logits(logits, *size)  # type: ignore[arg-type]


def test_mask_requires_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        upsample_logits_to_mask(np.zeros((1, 4, 4), dtype=np.float32), 8, 8)


# --------------------------------------------------------------------------------------------------
# RLE straight from the logits (the decoder's fast path for smooth masks)
# --------------------------------------------------------------------------------------------------


def _smooth_logits(wavy: bool) -> np.ndarray:
    yy, xx = np.mgrid[0:288, 0:288].astype(np.float32)
    logits = (60 - np.hypot(xx - 140, yy - 120)) / 10
    if wavy:
        logits = logits + 3 * np.sin(xx / 9) * np.cos(yy / 13)
    return logits.astype(np.float32)


@pytest.mark.parametrize("wavy", [False, True])
@pytest.mark.parametrize(("height", "width"), [(1080, 1920), (3000, 4000), (300, 301), (289, 5000), (288, 288)])
def test_rle_from_logits_equals_thresholding_the_full_mask(wavy: bool, height: int, width: int) -> None:
    logits = _smooth_logits(wavy)
    expected = upsample_logits_to_mask(logits, height, width)
    rle = upsample_logits_to_rle(logits, height, width)
    assert rle.size == (height, width)
    assert rle.counts == to_coco_rle(expected).counts
    area, box = rle_area_and_box(rle)
    assert area == int(expected.sum()) and box == bounding_box(expected)


@pytest.mark.parametrize(("height", "width"), [(17, 23), (600, 800)])
def test_rle_from_speckled_or_downscaled_logits_falls_back_to_the_full_mask(height: int, width: int) -> None:
    logits = np.random.default_rng(0).standard_normal((288, 288)).astype(np.float32)
    rle = upsample_logits_to_rle(logits, height, width)
    assert rle.counts == to_coco_rle(upsample_logits_to_mask(logits, height, width)).counts


def test_rle_of_empty_and_full_masks() -> None:
    for value, area in ((-1.0, 0), (1.0, 1080 * 1920)):
        rle = upsample_logits_to_rle(np.full((288, 288), value, np.float32), 1080, 1920)
        assert rle_area_and_box(rle)[0] == area
        assert rle.counts == to_coco_rle(np.full((1080, 1920), value > 0)).counts
