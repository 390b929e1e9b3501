"""User prompts (clicks and boxes per object) and the decoder tensors that reproduce transformers.

Every object becomes a row of point tokens, built exactly as transformers' prompt encoder builds them:
clicks (label 1 foreground, 0 background); a box as its two corners labelled 2 and 3 followed by a
"not a point" token (label -1); and, for clicks without a box, one trailing "not a point" pad, which
transformers adds in Python and the exported graph does not (unless the model says it does).

Passing boxes as corner points (never through `input_boxes`) is exactly what transformers computes for
a box, and it lets objects with and without boxes share one request. Objects are batched only with
objects of the same token count, so no object ever sees padding: each object's result is what it
would get alone (transformers pads unequal objects with zero tokens, which changes their masks).

An object may also carry a mask prompt: the low-res logits of one mask a previous answer returned
(SAM's `mask_input`, transformers' `input_masks`), clamped to +-32 as SAM3 feeds them back. Such an
object is decoded alone (its mask changes the image side of the decoder, docs/model-contract.md).
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
# SAM3 clamps the logits it feeds back as a mask prompt to +-32 (facebookresearch/sam3: the image
# predictor's `_predict` returns `torch.clamp(low_res_masks, -32.0, 32.0)` for the next `mask_input`; the
# tracking predictor clamps `prev_sam_mask_logits` the same way, "to avoid rare numerical issues").
# transformers' Sam3TrackerModel takes `input_masks` as given, so its result equals ours for clamped input.
MASK_INPUT_LIMIT = 32.0


class PromptError(ValueError):
    """A prompt the model cannot use; `field` names the offending part, e.g. objects[1].points[0].x."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Prompt:
    """One object to segment: clicks (x, y in original-image pixels) with labels, and/or a box, and/or a
    mask prompt (one mask's low-res logits from an earlier answer, [h, w] at the model's mask size)."""

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None
    mask_input: np.ndarray | None = field(default=None, compare=False)

    @classmethod
    def of(
        cls,
        points: Sequence[Sequence[float]] | np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        box: Sequence[float] | np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
    ) -> Prompt:
        """Builds a prompt from lists or arrays; labels default to foreground for every point. `mask_input`
        may also be [1, h, w] (SamPredictor's layout), e.g. `prediction.low_res_logits[[best]]`."""
        pts = tuple((float(p[0]), float(p[1])) for p in (points if points is not None else ()))
        lbl = tuple(int(v) for v in labels) if labels is not None else (FOREGROUND,) * len(pts)
        mask = None
        if mask_input is not None:
            mask = np.asarray(mask_input)
            mask = mask[0] if mask.ndim == 3 and mask.shape[0] == 1 else mask
        return cls(pts, lbl, None if box is None else tuple(float(v) for v in box), mask)  # type: ignore[arg-type]


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
    mask_input: np.ndarray | None = None  # float32 [1, 1, h, w], clamped: then P = 1


def validate(
    prompts: Sequence[Prompt],
    original_size: tuple[int, int],
    limits: PromptLimits = PromptLimits(),
    mask_size: tuple[int, int] | None = None,
) -> None:
    """Raises PromptError naming the first bad field; a valid request passes silently."""
    check_prompts(prompts, limits, mask_size)
    check_coordinates(prompts, original_size)


def check_prompts(
    prompts: Sequence[Prompt], limits: PromptLimits = PromptLimits(), mask_size: tuple[int, int] | None = None
) -> None:
    """Everything that does not need the image's size: counts, labels, finite numbers, box corner order,
    and mask prompts against the model's `mask_size` ((h, w) of its low-res logits; None: any size).

    A worker runs this before it fetches the image's embeddings, so a bad request costs nothing.
    """
    if not prompts:
        raise PromptError("objects", "give at least one object with a point or a box")
    if len(prompts) > limits.max_objects:
        raise PromptError("objects", f"{len(prompts)} objects, at most {limits.max_objects} per request")
    for i, prompt in enumerate(prompts):
        where = f"objects[{i}]"
        if not prompt.points and prompt.box is None and prompt.mask_input is None:
            raise PromptError(where, "give at least one point, a box or a mask input")
        if prompt.mask_input is not None:
            check_mask_input(f"{where}.mask_input", prompt.mask_input, mask_size)
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


def check_mask_input(field: str, mask: np.ndarray, mask_size: tuple[int, int] | None) -> None:
    """One mask's low-res logits exactly as the decoder returned them: float32 [h, w] at the model's mask
    size, every value finite (a NaN would spread through the whole mask embedding)."""
    if not isinstance(mask, np.ndarray) or mask.dtype != np.float32:
        kind = getattr(mask, "dtype", type(mask).__name__)
        raise PromptError(field, f"expected float32 logits, got {kind}: send low_res_logits as they were returned")
    expected = "any size" if mask_size is None else f"{mask_size[0]} x {mask_size[1]}"
    if mask.ndim != 2 or (mask_size is not None and tuple(mask.shape) != tuple(mask_size)) or mask.size == 0:
        raise PromptError(field, f"shape {mask.shape}: one mask's low-res logits are {expected} (the mask size)")
    if not np.isfinite(mask).all():
        raise PromptError(field, "holds NaN or infinite values; send the logits a previous answer returned")


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
    """The (x, y, label) tokens transformers builds for one object, in original-image pixels.

    A mask prompt alone gets transformers' "empty point" ((0, 0) labelled -1, in place of any click) before
    the clicks-only pad, so it carries two "not a point" tokens as in `Sam3TrackerModel.forward`.
    """
    points = list(prompt.points)
    labels = list(prompt.labels)
    if not points and prompt.box is None:
        points.append((0.0, 0.0))
        labels.append(_NOT_A_POINT)
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
    """Groups objects by token count, in model-input pixels (`preprocess.scale_points`); an object with a
    mask prompt is a batch of its own, its logits clamped to +-MASK_INPUT_LIMIT as SAM3 feeds them back."""
    groups: dict[int | tuple[str, int], list[int]] = {}
    tokens = [object_tokens(p, appends_pad_point) for p in prompts]
    for index, (points, _) in enumerate(tokens):
        groups.setdefault(len(points) if prompts[index].mask_input is None else ("mask", index), []).append(index)
    batches = []
    for indices in groups.values():
        scaled = scale_points(np.array([tokens[i][0] for i in indices], np.float32), original_size, model_size)
        labels = np.array([tokens[i][1] for i in indices], np.int64)
        mask = prompts[indices[0]].mask_input
        if mask is not None:
            mask = np.clip(mask, -MASK_INPUT_LIMIT, MASK_INPUT_LIMIT, dtype=np.float32)[None, None]
        batches.append(DecoderBatch(tuple(indices), scaled[None], labels[None], mask_input=mask))
    return batches
