"""User prompts (clicks and boxes per object) and the decoder tensors that reproduce transformers.

Every object becomes a row of point tokens, built exactly as transformers' prompt encoder builds them:
clicks (label 1 foreground, 0 background); a box as its two corners labelled 2 and 3 followed by a
"not a point" token (label -1); and, for clicks without a box, one trailing "not a point" pad, which
transformers adds in Python and the exported graph does not (unless the model says it does).

Passing boxes as corner points (never through `input_boxes`) is exactly what transformers computes for
a box, and it lets objects with and without boxes share one request. Objects are batched only with
objects of the same token count, so no object ever sees padding: each object's result is what it
would get alone (transformers pads unequal objects with zero tokens, which changes their masks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sam3_core.preprocess import scale_points

FOREGROUND, BACKGROUND = 1, 0
_BOX_CORNER_LABELS = (2, 3)
_NOT_A_POINT = -1


class PromptError(ValueError):
    """A prompt the model cannot use; `field` names the offending part, e.g. objects[1].points[0].x."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Prompt:
    """One object to segment: clicks (x, y in original-image pixels) with labels, and/or a box."""

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None

    @classmethod
    def of(
        cls,
        points: Sequence[Sequence[float]] | np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        box: Sequence[float] | np.ndarray | None = None,
    ) -> Prompt:
        """Builds a prompt from lists or arrays; labels default to foreground for every point."""
        pts = tuple((float(p[0]), float(p[1])) for p in (points if points is not None else ()))
        lbl = tuple(int(v) for v in labels) if labels is not None else (FOREGROUND,) * len(pts)
        return cls(pts, lbl, None if box is None else tuple(float(v) for v in box))  # type: ignore[arg-type]


@dataclass(frozen=True)
class PromptLimits:
    """Bounds that keep one request from monopolising a worker."""

    max_objects: int = 32
    max_points: int = 32


@dataclass(frozen=True)
class DecoderBatch:
    """One decoder call: the objects (by request index) and their point/label tensors."""

    object_indices: tuple[int, ...]
    points: np.ndarray  # float32 [1, P, N, 2], in model-input pixels
    labels: np.ndarray  # int64 [1, P, N]
    empty_boxes: np.ndarray = field(default_factory=lambda: np.zeros((1, 0, 4), np.float32))


def validate(prompts: Sequence[Prompt], original_size: tuple[int, int], limits: PromptLimits = PromptLimits()) -> None:
    """Raises PromptError naming the first bad field; a valid request passes silently."""
    check_prompts(prompts, limits)
    check_coordinates(prompts, original_size)


def check_prompts(prompts: Sequence[Prompt], limits: PromptLimits = PromptLimits()) -> None:
    """Everything that does not need the image's size: counts, labels, finite numbers, box corner order.

    A worker runs this before it fetches the image's embeddings, so a bad request costs nothing.
    """
    if not prompts:
        raise PromptError("objects", "give at least one object with a point or a box")
    if len(prompts) > limits.max_objects:
        raise PromptError("objects", f"{len(prompts)} objects, at most {limits.max_objects} per request")
    for i, prompt in enumerate(prompts):
        where = f"objects[{i}]"
        if not prompt.points and prompt.box is None:
            raise PromptError(where, "give at least one point or a box")
        if len(prompt.points) > limits.max_points:
            raise PromptError(f"{where}.points", f"{len(prompt.points)} points, at most {limits.max_points}")
        if len(prompt.labels) != len(prompt.points):
            raise PromptError(f"{where}.labels", f"{len(prompt.labels)} labels for {len(prompt.points)} points")
        for j, ((x, y), label) in enumerate(zip(prompt.points, prompt.labels, strict=True)):
            _check_finite(f"{where}.points[{j}].x", x)
            _check_finite(f"{where}.points[{j}].y", y)
            if label not in (FOREGROUND, BACKGROUND):
                raise PromptError(f"{where}.points[{j}].label", f"{label} is not 1 (foreground) or 0 (background)")
        if prompt.box is not None:
            check_box(f"{where}.box", prompt.box)


def check_coordinates(prompts: Sequence[Prompt], original_size: tuple[int, int]) -> None:
    """Coordinates are pixels of the oriented image: 0..size inclusive (a click on the far edge is fine)."""
    height, width = original_size
    for i, prompt in enumerate(prompts):
        for j, (x, y) in enumerate(prompt.points):
            _check_inside(f"objects[{i}].points[{j}].x", x, width)
            _check_inside(f"objects[{i}].points[{j}].y", y, height)
        if prompt.box is not None:
            check_box_inside(f"objects[{i}].box", prompt.box, original_size)


def check_box(field: str, box: Sequence[float]) -> None:
    """Four finite numbers x1, y1, x2, y2 with x2 > x1 and y2 > y1 (a click box or a concept's exemplar)."""
    x1, y1, x2, y2 = box
    for name, value in (("x1", x1), ("y1", y1), ("x2", x2), ("y2", y2)):
        _check_finite(f"{field}.{name}", value)
    if not (x2 > x1 and y2 > y1):
        raise PromptError(field, f"({x1}, {y1}, {x2}, {y2}) needs x2 > x1 and y2 > y1")


def check_box_inside(field: str, box: Sequence[float], original_size: tuple[int, int]) -> None:
    """Every corner within the oriented image, 0..size inclusive."""
    height, width = original_size
    for name, value, limit in zip(("x1", "y1", "x2", "y2"), box, (width, height) * 2, strict=True):
        _check_inside(f"{field}.{name}", value, limit)


def _check_inside(name: str, value: float, limit: int) -> None:
    if not 0 <= value <= limit:
        raise PromptError(name, f"{value:g} is outside the image (0..{limit})")


def _check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise PromptError(name, f"{value} is not a finite number")


def object_tokens(prompt: Prompt, appends_pad_point: bool) -> tuple[list[tuple[float, float]], list[int]]:
    """The (x, y, label) tokens transformers builds for one object, in original-image pixels."""
    points = list(prompt.points)
    labels = list(prompt.labels)
    if prompt.box is not None:
        x1, y1, x2, y2 = prompt.box
        points += [(x1, y1), (x2, y2)]
        labels += list(_BOX_CORNER_LABELS)
    if not appends_pad_point:  # a box ends in this token too (transformers' _embed_boxes)
        points.append((0.0, 0.0))
        labels.append(_NOT_A_POINT)
    return points, labels


def build_batches(
    prompts: Sequence[Prompt],
    original_size: tuple[int, int],
    model_size: tuple[int, int],
    *,
    appends_pad_point: bool = False,
) -> list[DecoderBatch]:
    """Groups objects by token count, in model-input pixels (`preprocess.scale_points`)."""
    groups: dict[int, list[int]] = {}
    tokens = [object_tokens(p, appends_pad_point) for p in prompts]
    for index, (points, _) in enumerate(tokens):
        groups.setdefault(len(points), []).append(index)
    batches = []
    for indices in groups.values():
        scaled = scale_points(np.array([tokens[i][0] for i in indices], np.float32), original_size, model_size)
        labels = np.array([tokens[i][1] for i in indices], np.int64)
        batches.append(DecoderBatch(tuple(indices), scaled[None], labels[None]))
    return batches
