"""Torch-free image resizing that reproduces the SAM3 reference pipeline exactly.

Two operations matter for matching transformers' SAM3 outputs without torch:

* ``resize_uint8_antialiased``: the image processor resizes the uint8 image to 1008x1008 with
  ``torchvision.transforms.v2.functional.resize(..., BILINEAR, antialias=True)``. On CPU that runs torch's
  uint8 ``_upsample_bilinear2d_aa`` kernel (a port of Pillow-SIMD): separable, integer fixed-point
  arithmetic. We re-implement that arithmetic bit for bit, so the encoder sees the same pixels.
* ``upsample_logits``: mask logits are upscaled to the image size with
  ``F.interpolate(mode="bilinear", align_corners=False)`` (no antialias). That is linear, so it is two
  small dense interpolation matrices applied on each side (``Wy @ X @ Wx.T``), which BLAS does fast.
"""

from __future__ import annotations

import functools

import numpy as np

from sam3_core.masks import CocoRle, to_coco_rle

__all__ = ["resize_uint8_antialiased", "upsample_logits", "upsample_logits_to_mask"]


def _check_size(height: int, width: int) -> tuple[int, int]:
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
    height, width = _check_size(height, width)

    out = np.ascontiguousarray(image)
    if out.shape[1] != width:
        out = _aa_horizontal(out, width)
    if out.shape[0] != height:
        out = _aa_vertical(out, height)
    if out is image:
        out = image.copy()
    return out


# --------------------------------------------------------------------------------------------------
# float bilinear upsampling of mask logits (F.interpolate, align_corners=False, antialias=False)
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _source_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torch's 1-D bilinear taps per output index: (source coordinate, i0, i1, lambda1), all read-only.

    Index/lambda arithmetic follows ``compute_source_index_and_lambda`` in float32 (torch's opmath for
    float32 input): ``src = max(scale * (i + 0.5) - 0.5, 0)`` rounded once, ``i0 = min(floor(src), in - 1)``,
    ``i1 = i0 + (i0 < in - 1)``, ``l1 = clamp(src - i0, 0, 1)``. Cached: the same image size is reused
    for every click.
    """
    rows = np.arange(out_size)
    f32 = np.float32
    if in_size == out_size:
        src = rows.astype(np.float32)
    else:
        scale = f32(in_size) / f32(out_size)
        # torch's build contracts scale * (i + 0.5) - 0.5 into one FMA: a single float32 rounding. The
        # float64 evaluation is exact here, so casting it once reproduces that rounding.
        src = np.maximum((float(scale) * (rows + 0.5) - 0.5).astype(np.float32), f32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = i0 + (i0 < in_size - 1)
    lam1 = np.clip(src - i0.astype(np.float32), f32(0.0), f32(1.0))
    for array in (src, i0, i1, lam1):
        array.setflags(write=False)
    return src, i0, i1, lam1


def upsample_logits(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinearly resize float logits ``[..., h, w]`` to ``[..., height, width]`` like torch.

    Matches ``F.interpolate(x, (height, width), mode="bilinear", align_corners=False)`` (no antialias)
    to ~1e-6, for both up- and downscaling, with cached per-size tap tables.
    """
    if not isinstance(logits, np.ndarray):
        raise ValueError(f"logits must be a numpy array, got {type(logits).__name__}")
    if logits.ndim < 2:
        raise ValueError(f"logits must have shape (..., h, w), got {logits.shape}")
    if not np.issubdtype(logits.dtype, np.floating):
        raise ValueError(f"logits must be a floating-point array, got dtype {logits.dtype}")
    h, w = logits.shape[-2:]
    if h == 0 or w == 0:
        raise ValueError(f"logits must be non-empty, got shape {logits.shape}")
    height, width = _check_size(height, width)

    x = logits.astype(np.float32, copy=False)
    _, c0, c1, lam_x = _source_taps(w, width)
    _, r0, r1, lam_y = _source_taps(h, height)
    one = np.float32(1.0)
    # Two-tap gathers, width first then height, in torch's arithmetic order. No BLAS: its spinning
    # worker threads would steal the cores the next decoder run needs (measured: 2x slower clicks).
    columns = x[..., c0] * (one - lam_x) + x[..., c1] * lam_x
    out = columns[..., r0, :] * (one - lam_y)[:, None]
    out += columns[..., r1, :] * lam_y[:, None]
    return out


def upsample_logits_to_mask(logits2d: np.ndarray, height: int, width: int) -> np.ndarray:
    """Upsample one ``[h, w]`` logit map to ``[height, width]`` and threshold at 0 (SAM's mask rule)."""
    if not isinstance(logits2d, np.ndarray) or logits2d.ndim != 2:
        shape = getattr(logits2d, "shape", None)
        raise ValueError(f"logits2d must be a 2-D numpy array, got shape {shape}")
    return upsample_logits(logits2d, height, width) > 0


# Above this many sign changes between vertically adjacent logits, solving for crossings costs more
# than thresholding the full image. A real object's mask has a few hundred; random weights, ~46,000.
SMOOTH_MASK_SIGN_CHANGES = 4000


def upsample_logits_to_rle(logits2d: np.ndarray, height: int, width: int) -> CocoRle:
    """COCO RLE of ``upsample_logits_to_mask(logits2d, height, width)`` without building the mask.

    Along an output column the upsampled logit is a piecewise-linear function of the source row
    coordinate, so its sign changes can be solved for exactly: the cost grows with width x h (the
    288 source rows), not width x height. At 4000x3000 that is ~10x cheaper than thresholding the full
    image, which is what lets a click on a photo cost little more than the decoder run itself. Used for
    upscaling; a target smaller than the logits falls back to the full mask.
    """
    h, w = logits2d.shape
    height, width = _check_size(height, width)
    x = logits2d.astype(np.float32, copy=False)
    vertical_sign_changes = int(np.count_nonzero((x[1:] > 0) != (x[:-1] > 0)))
    if height < h or width < w or vertical_sign_changes > SMOOTH_MASK_SIGN_CHANGES:
        # Downscaling, or a speckled mask (random weights make these): thresholding the full image is cheaper.
        return to_coco_rle(upsample_logits_to_mask(x, height, width))
    _, c0, c1, lam_x = _source_taps(w, width)
    src_y, r0, r1, lam_y = _source_taps(h, height)
    # Horizontal pass, one row per output column: columns[j, r] = logit at (source row r, output column j).
    xt = np.ascontiguousarray(x.T)
    columns = xt[c0] * (np.float32(1.0) - lam_x)[:, None] + xt[c1] * lam_x[:, None]
    first = columns[:, r0[0]] * (np.float32(1.0) - lam_y[0]) + columns[:, r1[0]] * lam_y[0]
    starts_inside = first > 0  # state of each column's first output row

    positive = columns > 0
    col, seg = np.nonzero(positive[:, 1:] != positive[:, :-1])  # sign changes between source rows seg, seg + 1
    upper, lower = columns[col, seg], columns[col, seg + 1]
    crossing = seg + upper / (upper - lower)  # source coordinate where the line through them hits 0
    falling = upper > 0  # inside above the crossing: the first output row at or past it is outside
    boundary = np.where(
        falling, np.searchsorted(src_y, crossing, side="left"), np.searchsorted(src_y, crossing, side="right")
    )
    keep = (boundary > 0) & (boundary < height)
    toggles = col[keep] * height + boundary[keep]
    # Two crossings between the same pair of output rows cancel out.
    toggles, repeats = np.unique(toggles, return_counts=True)
    toggles = toggles[repeats % 2 == 1]

    per_column = np.bincount(toggles // height, minlength=width)
    ends_inside = starts_inside ^ (per_column % 2 == 1)
    previous_end = np.concatenate(([False], ends_inside[:-1]))
    column_starts = np.flatnonzero(starts_inside != previous_end) * height
    positions = np.sort(np.concatenate((column_starts, toggles)))
    counts = np.diff(np.concatenate(([0], positions, [height * width]))).tolist()
    return CocoRle(counts=counts, size=(height, width))
