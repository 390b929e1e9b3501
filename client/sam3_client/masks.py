"""Mask wire formats -> numpy: what the SDK needs to read the masks a decoder sends.

The workers encode (sam3_core.masks); these are the inverses. Every decoder returns a boolean
H x W array at the image's original size.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["decode_label_png", "decode_packed_bits", "decode_png", "decode_rle", "encode_rle", "rasterize_polygons"]


def decode_rle(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """Uncompressed COCO RLE: column-major runs, starting with a background run (pycocotools' layout)."""
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, np.asarray(counts, dtype=np.int64))
    if flat.size != height * width:
        raise ValueError(f"RLE runs cover {flat.size} pixels, not {height} x {width}")
    return flat.reshape((width, height)).T


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """A boolean H x W mask -> the pycocotools dict {"size": [h, w], "counts": [...]} (uncompressed runs).

    For masks that arrived as PNG or bits; an RLE mask is handed over as it arrived.
    """
    height, width = mask.shape
    column_major = np.concatenate(([False], np.asarray(mask, dtype=bool).T.reshape(-1), [False]))
    edges = np.flatnonzero(column_major[1:] != column_major[:-1])  # where runs start, after a leading 0
    counts = np.diff(np.concatenate(([0], edges, [height * width]))).tolist()
    return {"size": [height, width], "counts": counts if counts[-1] else counts[:-1]}


def decode_png(data: bytes) -> np.ndarray:
    """A 0/255 greyscale PNG (any mode Pillow reads): foreground where the grey value is over 127."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("L")) > 127


def decode_label_png(data: bytes) -> np.ndarray:
    """A label PNG (8- or 16-bit greyscale): pixel value k = instance k, 0 = background."""
    from PIL import Image

    labels = np.asarray(Image.open(io.BytesIO(data)))
    return labels.astype(np.uint8 if labels.max(initial=0) <= 255 and labels.dtype.itemsize == 1 else np.uint16)


def decode_packed_bits(data: bytes, height: int, width: int) -> np.ndarray:
    """The whole mask row-major as one bit string, most significant bit first, no row padding."""
    bits = np.unpackbits(np.frombuffer(data, np.uint8), count=height * width)
    return bits.reshape(height, width).astype(bool)


def rasterize_polygons(rings: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """COCO-style polygons (flat [x0, y0, x1, y1, ...] rings in pixel-edge coordinates) -> boolean H x W mask.

    A pixel is in the mask when its centre lies inside an odd number of rings (the even-odd rule), so holes
    and parts inside holes come out right whatever order the rings are in. Polygons a decoder traced with
    tolerance 0 give the mask back exactly; pycocotools fills every ring instead, holes included.
    """
    starts, ends = [], []
    for ring in rings:
        points = np.asarray(ring, np.float64).reshape(-1, 2)
        if len(points) >= 3:
            starts.append(points)
            ends.append(np.roll(points, -1, axis=0))
    if not starts:
        return np.zeros((height, width), bool)
    (x0, y0), (x1, y1) = np.concatenate(starts).T, np.concatenate(ends).T
    # Rows whose pixel centres (y = r + 0.5) each edge crosses, half-open so a shared corner counts once.
    top = np.clip(np.ceil(np.minimum(y0, y1) - 0.5), 0, height).astype(np.int64)
    bottom = np.clip(np.ceil(np.maximum(y0, y1) - 0.5), 0, height).astype(np.int64)
    crossings = bottom - top
    edge = np.repeat(np.arange(x0.size), crossings)
    rows = np.arange(edge.size) - np.repeat(np.cumsum(crossings) - crossings, crossings) + top[edge]
    x = x0[edge] + (rows + 0.5 - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    columns = np.clip(np.ceil(x - 0.5), 0, width).astype(np.int64)  # the first pixel whose centre is right of it
    toggles = np.bincount(rows * (width + 1) + columns, minlength=height * (width + 1)).reshape(height, width + 1)
    return (np.cumsum(toggles & 1, axis=1)[:, :width] & 1).astype(bool)
