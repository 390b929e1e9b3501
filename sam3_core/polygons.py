"""COCO RLE masks -> polygons along the pixels' edges: every part and every hole its own ring.

Pixel (row r, column c) is the unit square [c, c + 1] x [r, r + 1], so a ring's vertices are pixel
corners (whole numbers from 0 to width and 0 to height) and, before simplification, the rings enclose
exactly the mask's pixels: filling them with the even-odd rule at pixel centres gives the mask back bit
for bit (`sam3_client.masks.rasterize_polygons`). Outer boundaries run clockwise on screen (y down) and
holes counter-clockwise, the object always on the walker's right; a ring is marked `hole` either way.
Pixels that touch only at a corner belong to different rings (4-connected parts): rings never cross, though
one may touch itself at such a corner.

Rings are traced from the runs, never from H x W pixels, so a smooth object at 4000x3000 costs about as
much as at 640x480. The vertical edges between two columns lie where exactly one of them is object: the
symmetric difference of their run ends. Every corner of the outline is an end of one of them, and along
each row line the corners, in order, pair up into the horizontal edges (a corner where two diagonal parts
touch counts twice). Linking each edge to the next is then plain indexing (turning right where two
diagonal parts meet), and the rings are the cycles of that successor map, ordered by pointer jumping.
Simplification is Douglas-Peucker per ring with a tolerance in pixels; a ring it would reduce below
three corners is kept as traced, so no part of the mask disappears.

`Outline` computes the edges once: `corners` (the traced rings' vertices: callers check it against their
budget before paying for the rings) and `rings()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from sam3_core.masks import CocoRle

__all__ = ["DEFAULT_TOLERANCE", "Outline", "Ring", "simplify"]

# The API's default simplification, in pixels (SegmentRequest.polygon_tolerance unset): ~10x fewer corners
# than the pixel staircase at IoU >= 0.998 on a real-looking 1080p object (docs/api.md has the numbers).
DEFAULT_TOLERANCE = 1.0


@dataclass(frozen=True)
class Ring:
    """One closed boundary: corners [n, 2] as (x, y) pixel-corner coordinates, the first not repeated at the end."""

    points: np.ndarray  # int32 [n, 2]
    hole: bool


@dataclass(frozen=True)
class _Segments:
    """The outline's vertical edges on line x (between columns x - 1 and x), rows [top, bottom); `up` when the
    object is on the line's right (the edge then runs up, from bottom to top), else it runs down."""

    x: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    up: np.ndarray


class Outline:
    """The boundary of one COCO RLE mask: its corner count at once, its rings on demand."""

    def __init__(self, rle: CocoRle) -> None:
        self.height, self.width = rle.size
        self._segments = _vertical_edges(rle)

    @property
    def corners(self) -> int:
        """Vertices of the traced rings (an upper bound after simplification): both ends of every vertical edge."""
        return 2 * int(self._segments.x.size)

    @property
    def corner_coordinates(self) -> np.ndarray:
        """Every corner's x and y, [corners, 2], in no particular order: what the traced rings hold."""
        segments = self._segments
        return np.stack([np.repeat(segments.x, 2), np.stack([segments.top, segments.bottom], axis=1).reshape(-1)], 1)

    @cached_property
    def traced(self) -> list[Ring]:
        """Every ring, outer boundaries and holes, as traced (tolerance 0)."""
        if self._segments.x.size == 0:
            return []
        starts_x, starts_y, successor = _link(self._segments, self.width)
        order, lengths = _cycles(successor)
        corners = np.stack([starts_x[order], starts_y[order]], axis=1).astype(np.int32)
        first = np.cumsum(lengths) - lengths
        # Shoelace sign per ring: with the object on the right, outer rings are clockwise on screen (positive).
        x, y = corners[:, 0].astype(np.int64), corners[:, 1].astype(np.int64)
        following = np.arange(x.size) + 1
        following[first + lengths - 1] = first
        area2 = np.add.reduceat(x * y[following] - x[following] * y, first)
        bounds = np.append(first, x.size)
        return [Ring(corners[bounds[k] : bounds[k + 1]], bool(area2[k] < 0)) for k in range(lengths.size)]

    def rings(self, tolerance: float = 0.0) -> list[Ring]:
        """The rings simplified to `tolerance` pixels (`simplify`)."""
        return simplify(self.traced, tolerance)


def _column_flips(rle: CocoRle) -> np.ndarray:
    """Sorted keys column * (height + 1) + row of every row where a column changes (object runs' first and end
    rows, cut at column ends)."""
    height = rle.size[0]
    counts = np.asarray(rle.counts, np.int64)
    ends = np.cumsum(counts)
    starts = ends - counts
    first, last = starts[1::2], ends[1::2]  # object runs: odd positions, [first, last) in column-major order
    nonempty = last > first
    first, last = first[nonempty], last[nonempty]
    column_first, column_last = first // height, (last - 1) // height
    pieces = column_last - column_first + 1
    run = np.repeat(np.arange(first.size), pieces)
    column = column_first[run] + np.arange(run.size) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    top = np.maximum(first[run] - column * height, 0)
    bottom = np.minimum(last[run] - column * height, height)
    stride = height + 1
    return np.sort(np.concatenate([column * stride + top, column * stride + bottom]))


def _vertical_edges(rle: CocoRle) -> _Segments:
    """Where exactly one of two neighbouring columns is object; split where both change at one row and one
    of them stays object (two diagonal parts touch there)."""
    stride = rle.size[0] + 1  # rows 0..height of one column, or of one line between columns
    flips = _column_flips(rle)
    # Line p lies between columns p - 1 and p: a column's change counts for the lines on both its sides.
    points, repeats = np.unique(np.concatenate([flips, flips + stride]), return_counts=True)
    single, both = points[repeats % 2 == 1], points[repeats % 2 == 0]
    inside = np.searchsorted(single, both) % 2 == 1  # both columns change within a stretch where one is object
    cuts = np.sort(np.concatenate([single, both[inside], both[inside]]))
    line, top = np.divmod(cuts[0::2], stride)
    bottom = cuts[1::2] % stride
    # The right column (line p's column p) is object on [top, bottom) when it changed an odd number of times.
    right_changes = np.searchsorted(flips, cuts[0::2], side="right") - np.searchsorted(flips, line * stride)
    return _Segments(line, top, bottom, right_changes % 2 == 1)


def _link(segments: _Segments, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start x, start y, successor) of every edge: the vertical ones (0..n-1), then the horizontal ones
    (n..2n-1), each the stretch between two consecutive corners on a row line.

    Corner 2k is segment k's top end and 2k + 1 its bottom end. A horizontal edge runs right when its left
    corner is where a vertical edge ends (an upward edge's top, a downward edge's bottom), else left. Where
    two diagonal parts touch, the downward edge's corner sorts first, which pairs each vertical edge with
    the horizontal one it turns right into.
    """
    n = segments.x.size
    corner_x = np.repeat(segments.x, 2)
    corner_y = np.stack([segments.top, segments.bottom], axis=1).reshape(-1)
    up = np.repeat(segments.up, 2)
    is_top = np.tile([True, False], n)
    ends_here = up == is_top  # the vertical edge ends at this corner (else it starts here)
    order = np.argsort((corner_y * (width + 1) + corner_x) * 2 + up, kind="stable")
    left, right = order[0::2], order[1::2]
    rightward = ends_here[left]
    horizontal = n + np.arange(n)
    successor = np.empty(2 * n, np.int64)
    # Rightward: left corner's vertical edge -> this edge -> right corner's vertical edge; leftward mirrored.
    successor[np.where(rightward, left, right) // 2] = horizontal
    successor[horizontal] = np.where(rightward, right, left) // 2
    vertical_start_y = np.where(segments.up, segments.bottom, segments.top)
    horizontal_start = np.where(rightward, left, right)
    starts_x = np.concatenate([segments.x, corner_x[horizontal_start]])
    starts_y = np.concatenate([vertical_start_y, corner_y[horizontal_start]])
    return starts_x, starts_y, successor


def _cycles(successor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The successor map's cycles: (edge indices ring after ring, each ring from its lowest edge index,
    in walking order; ring lengths)."""
    n = successor.size
    leader, jump = np.arange(n), successor.copy()
    span = 1
    while span < n:  # leader = the smallest index on each cycle, by doubling
        leader = np.minimum(leader, leader[jump])
        jump = jump[jump]
        span *= 2
    # Cut each cycle before its leader and rank the resulting lists: steps from the leader.
    tail = leader[successor] == successor
    link = np.where(tail, np.arange(n), successor)
    rank = (~tail).astype(np.int64)  # steps to the end of the list
    span = 1
    while span < n:
        rank = rank + rank[link]
        link = link[link]
        span *= 2
    length = np.bincount(leader, minlength=n)[leader]
    order = np.lexsort((length - 1 - rank, leader))
    starts = np.flatnonzero(np.diff(leader[order], prepend=-1))
    return order, np.diff(np.append(starts, n))


def simplify(rings: list[Ring], tolerance: float) -> list[Ring]:
    """Douglas-Peucker on each closed ring: no dropped corner lies farther than `tolerance` pixels from the
    simplified outline. 0 returns the rings as traced; a ring that would fall below three corners stays whole.

    All rings at once, one level of the recursion per pass over the corners still in play; among equally
    far corners the one nearest the middle of the stretch splits it, so a pixel staircase (whose corners
    are all equally far from its chord) takes log n passes, not n.
    """
    if not (tolerance >= 0):  # also refuses NaN
        raise ValueError(f"tolerance must be a number of pixels >= 0, got {tolerance}")
    if tolerance == 0 or not rings:
        return rings
    sizes = np.array([len(ring.points) for ring in rings])
    points = np.concatenate([ring.points for ring in rings])
    ring_of = np.repeat(np.arange(sizes.size), sizes)
    offsets = np.cumsum(sizes) - sizes
    # Each ring closed by a copy of its first corner: ring k occupies closed[first[k] : first[k] + sizes[k] + 1].
    first = offsets + np.arange(sizes.size)
    closed = np.empty((points.shape[0] + sizes.size, 2))
    closed[first[ring_of] + np.arange(points.shape[0]) - offsets[ring_of]] = points
    closed[first + sizes] = points[offsets]
    keep = np.zeros(len(closed), bool)
    keep[first] = keep[first + sizes] = True
    # Split each ring at its first corner and the corner farthest from it, then recurse on both halves.
    reach = np.hypot(*(points - points[offsets][ring_of]).T)
    farthest = np.maximum.reduceat(reach, offsets)
    position = np.where(reach == farthest[ring_of], np.arange(reach.size), reach.size)
    far = first + np.minimum.reduceat(position, offsets) - offsets  # the first farthest corner of each ring
    keep[far] = True
    starts, ends = np.concatenate([first, far]), np.concatenate([far, first + sizes])
    while starts.size:
        starts, ends = _split(closed, starts, ends, tolerance, keep)
    kept = np.delete(keep, first + sizes)  # back to one entry per corner
    counts = np.add.reduceat(kept.astype(np.int64), offsets)
    return [
        Ring(ring.points[kept[offset : offset + size]], ring.hole) if count >= 3 else ring
        for ring, offset, size, count in zip(rings, offsets, sizes, counts, strict=True)
    ]


def _split(
    points: np.ndarray, starts: np.ndarray, ends: np.ndarray, tolerance: float, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One Douglas-Peucker level for every stretch [start, end]: marks the splitting corner of each stretch
    with a corner farther than `tolerance` from its chord, and returns the stretches left to examine."""
    inner = ends - starts - 1
    busy = inner > 0
    starts, ends, inner = starts[busy], ends[busy], inner[busy]
    if starts.size == 0:
        return starts, ends
    stretch = np.repeat(np.arange(starts.size), inner)
    index = np.arange(stretch.size) - np.repeat(np.cumsum(inner) - inner, inner) + starts[stretch] + 1
    a, b = points[starts[stretch]], points[ends[stretch]]
    chord = b - a
    length = np.hypot(chord[:, 0], chord[:, 1])
    offset = points[index] - a
    cross = np.abs(chord[:, 0] * offset[:, 1] - chord[:, 1] * offset[:, 0])
    distance = np.where(length > 0, cross / np.where(length > 0, length, 1), np.hypot(offset[:, 0], offset[:, 1]))
    bounds = np.cumsum(inner) - inner
    farthest = np.maximum.reduceat(distance, bounds)
    # Among the farthest (ties are the rule on a pixel grid), the one nearest the stretch's middle.
    middle = (starts + ends) / 2
    candidate = distance >= farthest[stretch] - 1e-9
    off_middle = np.where(candidate, np.abs(index - middle[stretch]), np.inf)
    best = np.minimum.reduceat(off_middle, bounds)
    position = np.where(off_middle == best[stretch], np.arange(stretch.size), stretch.size)
    split = index[np.minimum.reduceat(position, bounds)]
    over = farthest > tolerance
    split, starts, ends = split[over], starts[over], ends[over]
    keep[split] = True
    return np.concatenate([starts, split]), np.concatenate([split, ends])
