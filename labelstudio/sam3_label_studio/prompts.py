"""Label Studio's interactive `context` -> sam3 prompts in pixels.

While auto-annotation is on, Label Studio sends every "smart" region the annotator has drawn on the
task so far (`context.result`), each in percent of the image (`x`, `y`, `width`, `height` in 0..100)
with the image's `original_width` / `original_height`:

- keypoints (`keypointlabels`) are clicks: foreground, or background when Label Studio marks them
  `is_positive: false` (an Alt-click) or their label is one of the negative labels ("Negative",
  "Background" by default);
- rectangles (`rectanglelabels`) are boxes: with one rectangle every click refines it; with several,
  each rectangle is its own object with the clicks inside it;
- a `textarea` phrase asks for every instance of a concept, rectangles then being example boxes.
  "Label: phrase" picks the answer's label; otherwise the phrase itself must be a label (or the answer
  control has only one).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sam3_client import ObjectPrompt
from sam3_label_studio.errors import BackendError
from sam3_label_studio.labeling import LabelingConfig

__all__ = ["ConceptPrompt", "LabelledObject", "Prompts", "from_context"]

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class LabelledObject:
    """One object to segment, the answer label its mask gets, and the ids of the regions that prompt it."""

    prompt: ObjectPrompt
    label: str
    regions: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ConceptPrompt:
    """Every instance of a phrase (with example boxes), and the answer label they get."""

    phrase: str
    label: str
    exemplars: tuple[tuple[Box, bool], ...] = ()


@dataclass(frozen=True)
class Prompts:
    """What one interactive request asks: objects by clicks and boxes, or concepts by phrase."""

    width: int  # the image's size as Label Studio knows it (the answer must have it too)
    height: int
    objects: list[LabelledObject] = field(default_factory=list)
    concepts: list[ConceptPrompt] = field(default_factory=list)


@dataclass
class _Click:
    x: float
    y: float
    positive: bool
    label: str | None
    region: str


@dataclass
class _Box:
    box: Box
    positive: bool
    label: str | None
    region: str
    clicks: list[_Click] = field(default_factory=list)


def from_context(context: Mapping[str, Any], config: LabelingConfig, negative_labels: Collection[str]) -> Prompts:
    """The prompts in `context.result` that belong to the config's image; BackendError (400) for what cannot be."""
    negatives = {label.casefold() for label in negative_labels}
    clicks: list[_Click] = []
    boxes: list[_Box] = []
    phrases: list[str] = []
    size: tuple[int, int] | None = None
    for region in context.get("result") or ():
        control = config.control(str(region.get("from_name", "")))
        if control is None or region.get("to_name", config.image_name) != config.image_name:
            continue
        size = _check_size(region, size)
        value = region.get("value") or {}
        kind = region.get("type", "").lower()
        label = _first(value.get(kind) or value.get("labels"))
        positive = region.get("is_positive", True) is not False
        if kind == "keypointlabels":
            negative = not positive or (label is not None and label.casefold() in negatives)
            clicks.append(_Click(*_pixel(value, size), not negative, label, str(region.get("id") or "")))
        elif kind == "rectanglelabels":
            boxes.append(_Box(_box(value, size), positive, label, str(region.get("id") or "")))
        elif kind == "textarea":
            phrases += [text.strip() for text in value.get("text") or () if isinstance(text, str) and text.strip()]
    if size is None:
        raise BackendError(400, "the request has no keypoint, rectangle or text prompt on the labelled image")
    width, height = size
    if phrases:
        exemplars = tuple((b.box, b.positive) for b in boxes)
        return Prompts(width, height, concepts=[_concept(text, exemplars, config) for text in phrases])
    return Prompts(width, height, objects=_objects(clicks, boxes, config))


def _check_size(region: Mapping[str, Any], size: tuple[int, int] | None) -> tuple[int, int]:
    if region.get("image_rotation") not in (None, 0, 0.0):
        raise BackendError(400, "sam3 cannot prompt a rotated image: rotate it back to 0 degrees, then click")
    try:
        here = (int(region["original_width"]), int(region["original_height"]))
    except (KeyError, TypeError, ValueError) as error:
        raise BackendError(400, "a prompt region lacks the image's original_width / original_height") from error
    if here[0] <= 0 or here[1] <= 0 or (size is not None and here != size):
        raise BackendError(400, f"prompt regions disagree on the image's size ({size} vs {here})")
    return here


def _first(labels: Any) -> str | None:
    return str(labels[0]) if isinstance(labels, Sequence) and not isinstance(labels, str) and labels else None


def _number(value: Mapping[str, Any], key: str) -> float:
    try:
        number = float(value[key])
    except (KeyError, TypeError, ValueError) as error:
        raise BackendError(400, f"a prompt region's value has no number '{key}'") from error
    if not math.isfinite(number):
        raise BackendError(400, f"a prompt region's '{key}' is {number}")
    return number


def _pixel(value: Mapping[str, Any], size: tuple[int, int]) -> tuple[float, float]:
    """Percent of the image -> pixels of the image as sent (Label Studio's x, y are 0..100)."""
    return _number(value, "x") * size[0] / 100, _number(value, "y") * size[1] / 100


def _box(value: Mapping[str, Any], size: tuple[int, int]) -> Box:
    """A rectangle -> its pixel box x1, y1, x2, y2; a rotated one (about its top-left corner, degrees
    clockwise, as Label Studio draws it) -> the upright box around it; clipped to the image."""
    x, y = _pixel(value, size)
    w, h = _number(value, "width") * size[0] / 100, _number(value, "height") * size[1] / 100
    angle = math.radians(float(value.get("rotation") or 0))
    cos, sin = math.cos(angle), math.sin(angle)
    xs = [x + dx * cos - dy * sin for dx, dy in ((0, 0), (w, 0), (0, h), (w, h))]
    ys = [y + dx * sin + dy * cos for dx, dy in ((0, 0), (w, 0), (0, h), (w, h))]
    return (
        min(max(min(xs), 0.0), size[0]),
        min(max(min(ys), 0.0), size[1]),
        min(max(max(xs), 0.0), size[0]),
        min(max(max(ys), 0.0), size[1]),
    )


def _inside(click: _Click, box: Box) -> bool:
    return box[0] <= click.x <= box[2] and box[1] <= click.y <= box[3]


def _objects(clicks: list[_Click], boxes: list[_Box], config: LabelingConfig) -> list[LabelledObject]:
    loose: list[_Click] = []
    if len(boxes) == 1:
        boxes[0].clicks = clicks
    else:
        for click in clicks:
            owner = next((b for b in boxes if _inside(click, b.box)), None)
            (owner.clicks if owner else loose).append(click)
    groups: list[tuple[list[_Click], Box | None, str | None, list[str]]] = [
        (b.clicks, b.box, b.label, [b.region]) for b in boxes
    ]
    if any(c.positive for c in loose):
        groups.append((loose, None, next(c.label for c in loose if c.positive), []))
    elif not boxes:
        raise BackendError(400, "background clicks alone select nothing: add a foreground click (without Alt)")
    return [
        LabelledObject(
            ObjectPrompt(
                points=[(c.x, c.y) for c in points], labels=[int(c.positive) for c in points] or None, box=box
            ),
            config.answer_label(label, "the prompt"),
            frozenset(r for r in [*extra, *(c.region for c in points)] if r),
        )
        for points, box, label, extra in groups
    ]


def _concept(text: str, exemplars: tuple[tuple[Box, bool], ...], config: LabelingConfig) -> ConceptPrompt:
    prefix, colon, rest = text.partition(":")
    named = colon and rest.strip() and any(prefix.strip().casefold() == a.casefold() for a in config.answer.labels)
    phrase, wanted = (rest.strip(), prefix.strip()) if named else (text, text)
    return ConceptPrompt(phrase, config.answer_label(wanted, f"the phrase '{text}'"), exemplars)
