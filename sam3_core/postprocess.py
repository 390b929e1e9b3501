"""The decoder's low-resolution mask logits -> masks at the original size, as transformers computes them.

transformers upscales the logits with ``F.interpolate(mode="bilinear", align_corners=False)`` (no
antialias) and a pixel is in the mask where the upsampled logit is above 0. That is linear, so we
gather two source taps per output pixel in torch's arithmetic order; `upsample_logits_to_rle` goes
further and solves for where each column crosses the threshold, so a smooth mask is never built at
full size.
"""

from __future__ import annotations

import functools

import numpy as np

from sam3_core.masks import CocoRle, to_coco_rle
from sam3_core.preprocess import checked_size

__all__ = [
    "MASK_LOGIT_THRESHOLD",
    "MASK_PROBABILITY_THRESHOLD",
    "upsample_logits",
    "upsample_logits_to_mask",
    "upsample_logits_to_rle",
]

# SAM's click-mask rule: foreground where the resized logit is above 0 (the RLE solver below relies on it being 0).
MASK_LOGIT_THRESHOLD = 0.0
# SAM3's concept-mask rule (Sam3Processor.post_process_instance_segmentation): the sigmoid is resized, then
# kept above 0.5. Not the same masks as resizing the logits: bilinear resizing does not commute with the sigmoid.
MASK_PROBABILITY_THRESHOLD = 0.5


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
    height, width = checked_size(height, width)

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
    """Upsample one ``[h, w]`` logit map to ``[height, width]`` and threshold it (SAM's mask rule)."""
    if not isinstance(logits2d, np.ndarray) or logits2d.ndim != 2:
        shape = getattr(logits2d, "shape", None)
        raise ValueError(f"logits2d must be a 2-D numpy array, got shape {shape}")
    return upsample_logits(logits2d, height, width) > MASK_LOGIT_THRESHOLD


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
    height, width = checked_size(height, width)
    x = logits2d.astype(np.float32, copy=False)
    vertical_sign_changes = int(np.count_nonzero((x[1:] > MASK_LOGIT_THRESHOLD) != (x[:-1] > MASK_LOGIT_THRESHOLD)))
    if height < h or width < w or vertical_sign_changes > SMOOTH_MASK_SIGN_CHANGES:
        # Downscaling, or a speckled mask (random weights make these): thresholding the full image is cheaper.
        return to_coco_rle(upsample_logits_to_mask(x, height, width))
    _, c0, c1, lam_x = _source_taps(w, width)
    src_y, r0, r1, lam_y = _source_taps(h, height)
    # Horizontal pass, one row per output column: columns[j, r] = logit at (source row r, output column j).
    xt = np.ascontiguousarray(x.T)
    columns = xt[c0] * (np.float32(1.0) - lam_x)[:, None] + xt[c1] * lam_x[:, None]
    first = columns[:, r0[0]] * (np.float32(1.0) - lam_y[0]) + columns[:, r1[0]] * lam_y[0]
    starts_inside = first > MASK_LOGIT_THRESHOLD  # state of each column's first output row

    positive = columns > MASK_LOGIT_THRESHOLD
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
