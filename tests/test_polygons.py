"""Masks -> polygons (sam3_core.polygons) and back (sam3_client.masks.rasterize_polygons)."""

from __future__ import annotations

import numpy as np
import pytest

import references
from sam3_client.masks import rasterize_polygons
from sam3_core.masks import to_coco_rle
from sam3_core.polygons import Outline, Ring, simplify


def rings_of(mask: np.ndarray, tolerance: float = 0.0) -> list[Ring]:
    return Outline(to_coco_rle(mask)).rings(tolerance)


def raster(rings: list[Ring], shape: tuple[int, ...]) -> np.ndarray:
    return rasterize_polygons([ring.points.reshape(-1) for ring in rings], shape[0], shape[1])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def disc(height: int, width: int, cx: float, cy: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return np.hypot(xx + 0.5 - cx, yy + 0.5 - cy) < radius


def test_random_masks_come_back_bit_for_bit() -> None:
    """Every shape of part, hole, diagonal touch and image edge a random mask can have, at tolerance 0."""
    rng = np.random.default_rng(7)
    for _ in range(500):
        height, width = rng.integers(1, 40, 2)
        mask = rng.random((height, width)) < rng.random()
        outline = Outline(to_coco_rle(mask))
        rings = outline.rings()
        assert np.array_equal(raster(rings, mask.shape), mask)
        assert sum(len(ring.points) for ring in rings) == outline.corners


def test_a_hole_and_an_island_in_it_are_rings_of_their_own() -> None:
    mask = disc(200, 300, 150, 100, 80) & ~disc(200, 300, 150, 100, 50)
    mask |= disc(200, 300, 150, 100, 30)
    rings = rings_of(mask)
    assert sorted(ring.hole for ring in rings) == [False, False, True]
    assert np.array_equal(raster(rings, mask.shape), mask)
    outer = max(rings, key=lambda ring: np.ptp(ring.points[:, 0]))
    assert outer.points[:, 0].min() == np.flatnonzero(mask.any(axis=0))[0]  # pixel-edge coordinates
    assert outer.points[:, 0].max() == np.flatnonzero(mask.any(axis=0))[-1] + 1


def test_orientation_marks_holes() -> None:
    """Outer rings run clockwise on screen, holes counter-clockwise: the object is always on the right."""
    square = np.zeros((6, 6), bool)
    square[1:5, 1:5] = True
    square[2:4, 2:4] = False
    outer, hole = sorted(rings_of(square), key=lambda ring: ring.hole)
    assert cyclic(outer.points) == cyclic(np.array([[1, 1], [5, 1], [5, 5], [1, 5]]))  # right, down, left, up
    assert hole.hole and cyclic(hole.points) == cyclic(np.array([[2, 2], [2, 4], [4, 4], [4, 2]]))


def cyclic(points: np.ndarray) -> list[list[int]]:
    """A ring's corners from its smallest one: rings compare whatever corner they start at."""
    start = min(range(len(points)), key=lambda k: tuple(points[k]))
    return np.roll(points, -start, axis=0).tolist()


def test_parts_touching_at_a_corner_are_separate_rings() -> None:
    mask = np.array([[1, 0], [0, 1]], bool)
    rings = rings_of(mask)
    assert len(rings) == 2 and not any(ring.hole for ring in rings)
    assert np.array_equal(raster(rings, mask.shape), mask)


def test_empty_and_full_masks() -> None:
    assert rings_of(np.zeros((4, 5), bool)) == []
    (full,) = rings_of(np.ones((4, 5), bool), 2.0)
    assert cyclic(full.points) == [[0, 0], [5, 0], [5, 4], [0, 4]]


@pytest.mark.parametrize(("image", "case"), references.all_cases(), ids=lambda v: str(v))
def test_the_fixtures_masks_round_trip(image: str, case: str) -> None:
    """The acceptance bar: IoU >= 0.99 at tolerance 0, holes included (here: exact), on every best mask."""
    reference = references.load(image, case)
    for masks, scores in zip(reference.masks, reference.iou_scores, strict=True):
        mask = masks[int(np.argmax(scores))]
        rings = rings_of(mask)
        assert iou(raster(rings, mask.shape), mask) == 1.0
        assert any(ring.hole for ring in rings) or mask.size < 10_000  # random weights make holes


@pytest.mark.parametrize("tolerance", [0.5, 1.0, 2.5])
def test_simplification_keeps_within_the_tolerance(tolerance: float) -> None:
    mask = disc(300, 400, 200, 150, 120) & ~disc(300, 400, 230, 140, 25)
    traced = rings_of(mask)
    simplified = simplify(traced, tolerance)
    for before, after in zip(traced, simplified, strict=True):
        assert after.hole == before.hole and 3 <= len(after.points) <= len(before.points)
        assert farthest_dropped_corner(before.points, after.points) <= tolerance + 1e-9
    assert iou(raster(simplified, mask.shape), mask) > (0.99 if tolerance <= 1 else 0.98)  # a 120-pixel disc


def farthest_dropped_corner(traced: np.ndarray, kept: np.ndarray) -> float:
    """Distance of the worst dropped corner from the simplified edge that replaced it."""
    positions = [int(np.flatnonzero((traced == point).all(axis=1))[0]) for point in kept]
    worst = 0.0
    for k, start in enumerate(positions):
        end = positions[(k + 1) % len(positions)]
        a, b = traced[start].astype(float), traced[end].astype(float)
        between = np.roll(traced, -start, axis=0)[1 : (end - start) % len(traced)].astype(float)
        if len(between):
            chord = b - a
            cross = np.abs(chord[0] * (between[:, 1] - a[1]) - chord[1] * (between[:, 0] - a[0]))
            worst = max(worst, float((cross / np.hypot(*chord)).max()))
    return worst


def test_no_part_disappears_at_any_tolerance() -> None:
    mask = np.zeros((50, 50), bool)
    mask[3, 3] = mask[10:12, 20:22] = True
    mask |= disc(50, 50, 30, 35, 10)
    rings = rings_of(mask, 100.0)
    assert len(rings) == 3 and all(len(ring.points) >= 3 for ring in rings)


@pytest.mark.parametrize("tolerance", [-1.0, float("nan")])
def test_a_bad_tolerance_is_refused(tolerance: float) -> None:
    with pytest.raises(ValueError, match="tolerance"):
        simplify(rings_of(disc(10, 10, 5, 5, 3)), tolerance)


def test_rasterize_accepts_coco_lists_and_ignores_degenerate_rings() -> None:
    square = [1.0, 1.0, 4.0, 1.0, 4.0, 3.0, 1.0, 3.0]
    mask = rasterize_polygons([square, [0.0, 0.0, 2.0, 2.0]], 4, 5)
    expected = np.zeros((4, 5), bool)
    expected[1:3, 1:4] = True
    assert np.array_equal(mask, expected)
    assert not rasterize_polygons([], 3, 3).any()
