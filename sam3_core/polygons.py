"""COCO RLE masks -> polygons along the pixels' edges: every part and every hole its own ring.

Pixel (row r, column c) is the unit square [c, c + 1] x [r, r + 1], so a ring's vertices are pixel
corners (whole numbers from 0 to width and 0 to height) and, before simplification, the rings enclose
exactly the mask's pixels: filling them with the even-odd rule at pixel centres gives the mask back bit
for bit (`sam3_client.masks.rasterize_polygons`). Outer boundaries run clockwise on screen (y down) and
holes counter-clockwise, the object always on the walker's right; a ring is marked `hole` either way.
Pixels that touch only at a corner belong to different rings (4-connected parts): rings never cross, though
one may touch itself at such a corner.

Rings are traced from the runs, never from H x W pixels, so a smooth object at 4000x3000 costs about as
much as at 640x480: a column's runs give its horizontal edges; the vertical edges between two columns
lie where exactly one of them is object, the symmetric difference of their run ends; each edge's
successor is looked up at its end corner (turning right where two diagonal parts meet), and the rings
are the cycles of that successor map, ordered by pointer jumping. Only corners where the boundary turns
are kept. Simplification is Douglas-Peucker per ring with a tolerance in pixels; a ring it would reduce
below three corners is kept as traced, so no part of the mask disappears.

`Outline` computes the edges once: `corners` (the traced rings' vertices: callers check it against their
budget before paying for the rings) and `rings()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from sam3_core.masks import CocoRle

__all__ = ["Outline", "Ring", "simplify"]

# Edge directions in screen coordinates (y down), clockwise: a right turn is +1.
_RIGHT, _DOWN, _LEFT, _UP = 0, 1, 2, 3
_STEPS = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.int64)
_ORDER = (_RIGHT, _LEFT, _UP, _DOWN)  # the edge kinds in the order `_edges` lists them


@dataclass(frozen=True)
class Ring:
    """One closed boundary: corners [n, 2] as (x, y) pixel-corner coordinates, the first not repeated at the end."""

    points: np.ndarray  # int32 [n, 2]
    hole: bool


@dataclass(frozen=True)
class _Edges:
    """Boundary edges with the object on their right: start corner, direction, length in pixels."""

    x: np.ndarray
    y: np.ndarray
    direction: np.ndarray
    length: np.ndarray


class Outline:
    """The boundary of one COCO RLE mask: its corner count at once, its rings on demand."""

    def __init__(self, rle: CocoRle) -> None:
        self.height, self.width = rle.size
        self._edges = _edges(rle)

    @property
    def corners(self) -> int:
        """Vertices of the traced rings (an upper bound after simplification): both ends of every vertical edge."""
        return 2 * int(np.count_nonzero(self._edges.direction % 2))

    @cached_property
    def traced(self) -> list[Ring]:
        """Every ring, outer boundaries and holes, as traced (tolerance 0)."""
        edges = self._edges
        if edges.x.size == 0:
            return []
        order, lengths = _cycles(_successors(edges, self.width))
        x, y, direction = edges.x[order], edges.y[order], edges.direction[order]
        first = np.cumsum(lengths) - lengths
        previous = np.roll(direction, 1)
        previous[first] = direction[first + lengths - 1]  # each ring's first edge follows its last
        turns = direction != previous  # keep only corners where the boundary turns
        corners = np.stack([x, y], axis=1)[turns].astype(np.int32)
        counts = np.add.reduceat(turns.astype(np.int64), first)
        starts = np.cumsum(counts) - counts
        # Shoelace sign per ring: with the object on the right, outer rings are clockwise on screen (positive).
        cx, cy = corners[:, 0].astype(np.int64), corners[:, 1].astype(np.int64)
        following = np.arange(cx.size) + 1
        following[starts + counts - 1] = starts
        area2 = np.add.reduceat(cx * cy[following] - cx[following] * cy, starts)
        bounds = np.append(starts, cx.size)
        return [Ring(corners[bounds[k] : bounds[k + 1]], bool(area2[k] < 0)) for k in range(counts.size)]

    def rings(self, tolerance: float = 0.0) -> list[Ring]:
        """The rings simplified to `tolerance` pixels (`simplify`)."""
        return simplify(self.traced, tolerance)


def _column_pieces(rle: CocoRle) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The object runs cut at column ends: (column, first row, end row) per piece, column by column."""
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
    return column, top, bottom


def _edges(rle: CocoRle) -> _Edges:
    """Horizontal edges from each column's runs; vertical edges where exactly one of two neighbouring
    columns is object (split where both change at one row with the parity kept: two diagonal parts)."""
    height = rle.size[0]
    column, top, bottom = _column_pieces(rle)
    stride = height + 1  # rows 0..height of one column (or of one line between columns)
    flips = np.sort(np.concatenate([column * stride + top, column * stride + bottom]))  # where each column changes
    # Line p lies between columns p - 1 and p: a column's change counts for the lines on both its sides.
    on_lines = np.concatenate([flips, flips + stride])
    points, repeats = np.unique(on_lines, return_counts=True)
    single, both = points[repeats % 2 == 1], points[repeats % 2 == 0]
    inside = np.searchsorted(single, both) % 2 == 1  # both columns change within a stretch where one is object
    cuts = np.sort(np.concatenate([single, both[inside], both[inside]]))
    line, start = np.divmod(cuts[0::2], stride)
    end = cuts[1::2] % stride
    # The right column (line p's column p) is object on [start, end) when it changed an odd number of times.
    right_changes = np.searchsorted(flips, line * stride + start, side="right") - np.searchsorted(flips, line * stride)
    up = right_changes % 2 == 1  # the object on the right of a line going up, on its left going down
    ones = np.ones(top.size, np.int64)
    xs = [column, column + 1, line[up], line[~up]]
    ys = [top, bottom, end[up], start[~up]]
    lengths = [ones, ones, (end - start)[up], (end - start)[~up]]
    return _Edges(
        x=np.concatenate(xs).astype(np.int64),
        y=np.concatenate(ys).astype(np.int64),
        direction=np.concatenate([np.full(len(a), d, np.int64) for a, d in zip(xs, _ORDER, strict=True)]),
        length=np.concatenate(lengths),
    )


def _successors(edges: _Edges, width: int) -> np.ndarray:
    """Index of the edge that follows each edge: the one leaving its end corner, turning right where two
    leave it (diagonal parts stay apart), else going straight, else turning left."""
    stride = width + 1
    keys = (edges.y * stride + edges.x) * 4 + edges.direction  # (start corner, direction): unique per edge
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    end_x = edges.x + _STEPS[edges.direction, 0] * edges.length
    end_y = edges.y + _STEPS[edges.direction, 1] * edges.length
    end = (end_y * stride + end_x) * 4
    successor = np.full(keys.size, -1, np.int64)
    for turn in (1, 0, 3):  # right, straight, left (never back)
        wanted = end + (edges.direction + turn) % 4
        at = np.minimum(np.searchsorted(sorted_keys, wanted), keys.size - 1)
        found = (sorted_keys[at] == wanted) & (successor < 0)
        successor[found] = order[at[found]]
    return successor


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
    closed = np.concatenate([np.concatenate([ring.points, ring.points[:1]]) for ring in rings]).astype(np.float64)
    first = np.cumsum(sizes + 1) - (sizes + 1)  # each ring's first corner, repeated after its last
    keep = np.zeros(len(closed), bool)
    keep[first] = keep[first + sizes] = True
    # Split each ring at its first corner and the corner farthest from it, then recurse on both halves.
    far = first + np.array([np.argmax(np.hypot(*(ring.points - ring.points[0]).T)) for ring in rings])
    keep[far] = True
    starts, ends = np.concatenate([first, far]), np.concatenate([far, first + sizes])
    while starts.size:
        starts, ends = _split(closed, starts, ends, tolerance, keep)
    result = []
    for ring, offset, size in zip(rings, first, sizes, strict=True):
        kept = keep[offset : offset + size]
        result.append(Ring(ring.points[kept], ring.hole) if np.count_nonzero(kept) >= 3 else ring)
    return result


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
    hits = np.flatnonzero(off_middle == best[stretch])
    _, first_hit = np.unique(stretch[hits], return_index=True)
    split = index[hits[first_hit]]
    over = farthest > tolerance
    split, starts, ends = split[over], starts[over], ends[over]
    keep[split] = True
    return np.concatenate([starts, split]), np.concatenate([split, ends])
