"""Pixels and clicks in original-image coordinates -> the model's inputs, as transformers prepares them.

transformers' Sam3ImageProcessor resizes the uint8 image straight to the model size with torchvision's
antialiased bilinear kernel (fixed point, width first), then normalises with mean and std scaled by
255 in float32; its prompt encoder scales clicks by model size / image size per axis.
`resize_uint8_antialiased` is a bit-exact numpy port of that kernel: the resize is where mask parity is
won or lost (docs/model-contract.md, "Preprocessing").
"""

from __future__ import annotations

import functools

import numpy as np

from sam3_core.model import Preprocessing

__all__ = ["checked_size", "pixel_values", "resize_uint8_antialiased", "scale_points"]


def pixel_values(rgb: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """H x W x 3 uint8 -> float32 [1, 3, size_h, size_w], normalised as the model was trained."""
    height, width = preprocessing.size
    resized = resize_uint8_antialiased(rgb, height, width)
    mean = np.array(preprocessing.mean, np.float32) * np.float32(255.0)
    std = np.array(preprocessing.std, np.float32) * np.float32(255.0)
    normalised = (resized.astype(np.float32) - mean) / std
    return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None])


def scale_points(points: np.ndarray, original_size: tuple[int, int], model_size: tuple[int, int]) -> np.ndarray:
    """[..., 2] (x, y) in original-image pixels -> model-input pixels: x * model_w / W, y * model_h / H."""
    height, width = original_size
    scale = np.array([model_size[1] / width, model_size[0] / height], np.float32)
    return np.asarray(points, np.float32) * scale


def checked_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) as Python ints, or ValueError: a size must be a positive integer."""
    out = []
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an int, got {type(value).__name__}")
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
        out.append(int(value))
    return out[0], out[1]


# --------------------------------------------------------------------------------------------------
# uint8 antialiased bilinear resize (torch's AVX / generic uint8 `_upsample_bilinear2d_aa` kernel)
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _aa_int16_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Fixed-point filter taps for one axis, computed exactly like torch.

    Mirrors ``HelperInterpBase::_compute_indices_min_size_weights_aa`` and
    ``_compute_index_ranges_int16_weights`` (aten/src/ATen/native/cpu/UpSampleKernel.cpp), all in float64
    with the same operation order, because a one-ulp difference in a float weight can flip its int16
    rounding and with it an output byte.

    Returns ``(indices, weights, precision)``: ``indices`` [out, K] source positions (padded taps are
    clamped in range and carry weight 0), ``weights`` [out, K] int32 holding the int16 weights, and the
    number of fractional bits.
    """
    scale = in_size / out_size  # area_pixel_compute_scale: (double)in / out (no explicit scale factor)
    support = scale if scale >= 1.0 else 1.0  # (interp_size * 0.5) * scale, interp_size = 2
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    ksize = int(np.ceil(support)) * 2 + 1

    center = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    # static_cast<int64_t> truncates toward zero (the value may be negative before the max with 0).
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size)
    xsize = np.clip(xmax - xmin, 0, ksize)

    taps = np.arange(ksize, dtype=np.int64)
    pos = xmin[:, None] + taps[None, :]
    valid = taps[None, :] < xsize[:, None]
    x = np.abs((pos.astype(np.float64) - center[:, None] + 0.5) * invscale)
    w = np.where(valid & (x < 1.0), 1.0 - x, 0.0)

    # Sequential left-to-right sum, as the C loop does (np.sum may use pairwise summation).
    total = np.zeros(out_size, dtype=np.float64)
    for j in range(ksize):
        total += w[:, j]
    nonzero = total != 0.0
    w[nonzero] /= total[nonzero, None]
    w_max = float(w.max()) if w.size else 0.0

    precision = 0
    while precision < 22:
        if int(0.5 + w_max * (1 << (precision + 1))) >= (1 << 15):
            break
        precision += 1

    # (int)(0.5 + v) truncation == floor(v + 0.5) for the non-negative bilinear weights.
    weights = np.trunc(w * float(1 << precision) + 0.5).astype(np.int32)
    indices = np.minimum(pos, in_size - 1)
    indices.setflags(write=False)
    weights.setflags(write=False)
    return indices, weights, precision


# Work in row blocks whose int32 accumulator is about this many bytes, so the temporaries stay in cache.
_BLOCK_BYTES = 1 << 20


def _finish_block(acc: np.ndarray, precision: int, out: np.ndarray) -> None:
    """``out = clamp(acc >> precision, 0, 255)``; acc already holds the +0.5 rounding term."""
    np.right_shift(acc, precision, out=acc)
    np.minimum(acc, 255, out=acc)  # bilinear weights are >= 0, so acc is never negative
    out[...] = acc


def _aa_horizontal(src: np.ndarray, out_w: int) -> np.ndarray:
    """Width pass of an HxWxC uint8 array: ``clamp((sum_k w_k * p_k + 2**(prec-1)) >> prec, 0, 255)``."""
    h, w, c = src.shape
    indices, weights, precision = _aa_int16_weights(w, out_w)
    taps = [
        (indices[:, j], np.repeat(weights[:, j], c)[None, :]) for j in range(weights.shape[1]) if weights[:, j].any()
    ]
    out = np.empty((h, out_w, c), dtype=np.uint8)
    rows = max(1, _BLOCK_BYTES // (4 * out_w * c))
    acc_buf = np.empty((rows, out_w * c), dtype=np.int32)
    tmp_buf = np.empty_like(acc_buf)
    gather_buf = np.empty((rows, out_w, c), dtype=np.uint8)
    for r0 in range(0, h, rows):
        n = min(rows, h - r0)
        acc, tmp, gathered = acc_buf[:n], tmp_buf[:n], gather_buf[:n]
        acc.fill(1 << (precision - 1))
        block = src[r0 : r0 + n]
        for idx, wk in taps:
            np.take(block, idx, axis=1, out=gathered)
            np.multiply(gathered.reshape(n, -1), wk, out=tmp)
            acc += tmp
        _finish_block(acc, precision, out[r0 : r0 + n].reshape(n, -1))
    return out


def _aa_vertical(src: np.ndarray, out_h: int) -> np.ndarray:
    """Height pass of an HxWxC uint8 array (same integer arithmetic as the width pass)."""
    h, w, c = src.shape
    indices, weights, precision = _aa_int16_weights(h, out_h)
    live = [j for j in range(weights.shape[1]) if weights[:, j].any()]
    flat = src.reshape(h, w * c)
    out = np.empty((out_h, w * c), dtype=np.uint8)
    rows = max(1, _BLOCK_BYTES // (4 * w * c))
    acc_buf = np.empty((rows, w * c), dtype=np.int32)
    tmp_buf = np.empty_like(acc_buf)
    gather_buf = np.empty((rows, w * c), dtype=np.uint8)
    for o0 in range(0, out_h, rows):
        n = min(rows, out_h - o0)
        acc, tmp, gathered = acc_buf[:n], tmp_buf[:n], gather_buf[:n]
        acc.fill(1 << (precision - 1))
        for j in live:
            np.take(flat, indices[o0 : o0 + n, j], axis=0, out=gathered)
            np.multiply(gathered, weights[o0 : o0 + n, j, None], out=tmp)
            acc += tmp
        _finish_block(acc, precision, out[o0 : o0 + n])
    return out.reshape(out_h, w, c)


def resize_uint8_antialiased(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an HxWxC uint8 image exactly as the SAM3 image processor does (bit-exact with torch).

    Emulates ``torchvision.transforms.v2.functional.resize(chw_uint8, [height, width], BILINEAR,
    antialias=True)`` on CPU: triangle filter widened by the scale when downscaling, weights normalised
    and quantised to int16 with a precision picked from the largest weight, horizontal (width) pass first,
    then the vertical pass, each rounded and clamped to uint8; an axis whose size is unchanged is skipped,
    and an unchanged size returns a copy of the input. The result does not depend on memory layout.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got dtype {image.dtype}")
    if image.ndim != 3 or not 1 <= image.shape[2] <= 4:
        raise ValueError(f"image must have shape (H, W, C) with 1 <= C <= 4, got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must be non-empty, got shape {image.shape}")
    height, width = checked_size(height, width)

    out = np.ascontiguousarray(image)
    if out.shape[1] != width:
        out = _aa_horizontal(out, width)
    if out.shape[0] != height:
        out = _aa_vertical(out, height)
    if out is image:
        out = image.copy()
    return out
