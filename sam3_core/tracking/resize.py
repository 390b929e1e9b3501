"""torch's antialiased bilinear resize of float images (`F.interpolate(..., antialias=True)`) in numpy.

transformers resizes a mask prompt with it twice: the user's mask to the model's input size (then >= 0.5),
and the prompt's logits (+-10) down to the low-res mask it answers with. Separable: one weight matrix per axis,
built as torch builds its taps (a triangle filter widened by the scale factor when shrinking, normalised).
"""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=16)
def _weights(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] taps of torch's `_compute_indices_min_size_weights_aa` for bilinear, in its float32
    arithmetic (float64 taps put a 1080 -> 1008 resize 2e-3 off torch; these agree to 2e-6)."""
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    support = scale if scale >= 1 else f32(1.0)
    inverse = f32(1.0) / scale if scale >= 1 else f32(1.0)
    weights = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        center = scale * f32(i + 0.5)
        low = max(int(center - support + f32(0.5)), 0)
        high = min(int(center + support + f32(0.5)), in_size)
        distance = np.abs((np.arange(low, high, dtype=np.float32) - center + f32(0.5)) * inverse)
        taps = np.where(distance < 1, f32(1.0) - distance, f32(0.0)).astype(np.float32)
        total = f32(0.0)
        for tap in taps:  # torch sums the taps one by one
            total = f32(total + tap)
        weights[i, low:high] = taps / total if total else taps
    weights.setflags(write=False)
    return weights


def resize_antialiased(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """float [h, w] -> float32 [height, width], width first as torch's separable kernel runs."""
    image = np.asarray(image, np.float32)
    resized = image @ _weights(image.shape[1], width).T
    return _weights(image.shape[0], height) @ resized
