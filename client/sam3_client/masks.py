"""Mask wire formats -> numpy: what the SDK needs to read the masks a decoder sends.

The workers encode (sam3_core.masks); these are the inverses. Every decoder returns a boolean
H x W array at the image's original size.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

__all__ = ["decode_packed_bits", "decode_png", "decode_rle"]


def decode_rle(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """Uncompressed COCO RLE: column-major runs, starting with a background run (pycocotools' layout)."""
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, np.asarray(counts, dtype=np.int64))
    if flat.size != height * width:
        raise ValueError(f"RLE runs cover {flat.size} pixels, not {height} x {width}")
    return flat.reshape((width, height)).T


def decode_png(data: bytes) -> np.ndarray:
    """A 0/255 greyscale PNG (any mode Pillow reads): foreground where the grey value is over 127."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("L")) > 127


def decode_packed_bits(data: bytes, height: int, width: int) -> np.ndarray:
    """The whole mask row-major as one bit string, most significant bit first, no row padding."""
    bits = np.unpackbits(np.frombuffer(data, np.uint8), count=height * width)
    return bits.reshape(height, width).astype(bool)
