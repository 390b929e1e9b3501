"""Binary masks at the original size -> the wire formats they travel in (PNG, COCO RLE, packed bits).

The SDK holds the inverses (sam3_client.masks): only clients read masks back.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class CocoRle:
    """Uncompressed COCO run-length encoding: column-major runs, starting with a background run."""

    counts: list[int]
    size: tuple[int, int]  # (height, width)


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """COCO (x, y, width, height) of the foreground; zeros for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return (0, 0, 0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))


def to_png(mask: np.ndarray) -> bytes:
    """A truly binary 0/255 greyscale PNG at the mask's size."""
    buffer = io.BytesIO()
    Image.fromarray(np.where(mask, np.uint8(255), np.uint8(0)), "L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def to_coco_rle(mask: np.ndarray) -> CocoRle:
    """COCO RLE (what pycocotools' `frPyObjects`/`decode` read) straight from the boolean mask."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    boundaries = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(boundaries).tolist()
    if flat.size and flat[0]:
        counts.insert(0, 0)
    return CocoRle(counts=counts, size=(int(mask.shape[0]), int(mask.shape[1])))


def rle_area_and_box(rle: CocoRle) -> tuple[int, tuple[int, int, int, int]]:
    """Foreground pixel count and COCO (x, y, width, height) box, from the runs alone (no mask needed)."""
    height = rle.size[0]
    counts = np.asarray(rle.counts, dtype=np.int64)
    ends = np.cumsum(counts)
    starts = ends - counts
    first, last = starts[1::2], ends[1::2] - 1  # foreground runs: odd positions
    nonempty = last >= first
    first, last = first[nonempty], last[nonempty]
    if first.size == 0:
        return 0, (0, 0, 0, 0)
    first_col, last_col = first // height, last // height
    same_column = first_col == last_col
    # A run that wraps from the bottom of one column into the next covers the last and first rows.
    top = int(np.min(np.where(same_column, first % height, 0)))
    bottom = int(np.max(np.where(same_column, last % height, height - 1)))
    left, right = int(first_col.min()), int(last_col.max())
    return int((last - first + 1).sum()), (left, top, right - left + 1, bottom - top + 1)


def to_packed_bits(mask: np.ndarray) -> bytes:
    """The whole mask row-major as one bit string, most significant bit first (np.packbits), no row padding."""
    return np.packbits(np.asarray(mask, dtype=bool).reshape(-1)).tobytes()


def label_image(
    masks: Sequence[np.ndarray],
    scores: Sequence[float],
    height: int,
    width: int,
    values: Sequence[int] | None = None,
) -> np.ndarray:
    """uint8 (uint16 beyond 255) H x W: pixel = values[k] (default k + 1) for masks[k], 0 = none; overlaps go to
    the higher score. A video's objects keep their ids as values, so one object has one value on every frame."""
    values = range(1, len(masks) + 1) if values is None else values
    labels = np.zeros((height, width), np.uint8 if max(values, default=0) <= 255 else np.uint16)
    for k in sorted(range(len(masks)), key=lambda k: scores[k]):
        labels[masks[k]] = values[k]
    return labels


def to_label_png(labels: np.ndarray) -> bytes:
    """A label image as an 8- or 16-bit greyscale PNG (values are instance numbers, not intensities)."""
    buffer = io.BytesIO()
    # The mode follows the dtype (L, I;16): Pillow 13 refuses an explicit "I;16" for a uint16 array.
    Image.fromarray(np.ascontiguousarray(labels)).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
