"""RGB pixels -> the encoder's `pixel_values`, reproducing transformers' Sam3ImageProcessor exactly.

transformers resizes the uint8 image straight to the model size with torchvision's antialiased
bilinear kernel (fixed point, width first), then normalises with mean and std scaled by 255 in
float32. `resize_uint8_antialiased` is a bit-exact numpy port of that kernel: the resize is where
mask parity is won or lost (DESIGN §2).
"""

from __future__ import annotations

import numpy as np

from sam3_core.model import Preprocessing
from sam3_core.resize import resize_uint8_antialiased


def pixel_values(rgb: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """H x W x 3 uint8 -> float32 [1, 3, size_h, size_w], normalised as the model was trained."""
    height, width = preprocessing.size
    resized = resize_uint8_antialiased(rgb, height, width)
    mean = np.array(preprocessing.mean, np.float32) * np.float32(255.0)
    std = np.array(preprocessing.std, np.float32) * np.float32(255.0)
    normalised = (resized.astype(np.float32) - mean) / std
    return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None])
