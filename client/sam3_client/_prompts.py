"""What a caller asks for: objects (clicks, a box), concepts (phrases, example boxes), and each call's options.

Plain values, checked when they become messages (`_messages`); the public ones are re-exported by
`sam3_client`. A new way to prompt is a field here and a line in `_messages.object_prompt`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import numpy as np

from sam3_client.proto import decoder_pb2

# The names of SegmentOptions.mask_format / ConceptOptions.mask_format (and of Mask.format).
MASK_FORMATS = {
    "png": decoder_pb2.MASK_FORMAT_PNG,
    "rle": decoder_pb2.MASK_FORMAT_RLE,
    "bits": decoder_pb2.MASK_FORMAT_PACKED_BITS,
    "none": decoder_pb2.MASK_FORMAT_NONE,
    "polygon": decoder_pb2.MASK_FORMAT_POLYGON,
}
# ObjectPrompt.mask_input: the logits the worker remembered for the prompt's object_key.
PREVIOUS = "previous"
# What ObjectPrompt.mask_input takes: one mask's low-res logits, "previous", or nothing.
MaskInput = np.ndarray | Literal["previous"] | None

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the (EXIF-oriented) image


@dataclass(frozen=True)
class ObjectPrompt:
    """One object to segment: clicks and/or a box, in pixels of the image as sent, and/or a previous mask.

    points: [[x, y], ...]; labels: 1 foreground / 0 background per point (default: all 1);
    box: [x1, y1, x2, y2]; at least one of them or a mask input.
    mask_input: refine an earlier answer (send it with every click so far plus the new ones): the low-res
        logits of one of its masks (ObjectResult.low_res_logits[k], [h, w] or [1, h, w]), or "previous"
        for the ones the worker remembered under `object_key`. `Client.refine` does all this for you.
    object_key: a name for this object on its image (at most 128 bytes, unique within a request): the
        worker remembers its answer's logits for a few minutes, so `mask_input="previous"` finds them.
    """

    points: Sequence[Sequence[float]] = ()
    labels: Sequence[int] | None = None
    box: Sequence[float] | None = None
    mask_input: MaskInput = field(default=None, compare=False)
    object_key: str = ""


def object_prompts(objects: ObjectPrompt | Sequence[ObjectPrompt]) -> Sequence[ObjectPrompt]:
    """One prompt or several -> several."""
    return [objects] if isinstance(objects, ObjectPrompt) else objects


@dataclass(frozen=True)
class ConceptQuery:
    """One concept: a noun phrase, example boxes, or both. An exemplar is a box (positive: "more like
    this") or a (box, positive) pair; `negative=` boxes mean "not this"."""

    text: str | None = None
    exemplars: Sequence[Box | tuple[Box, bool]] = ()

    def pairs(self) -> list[tuple[Box, bool]]:
        """Every exemplar as (box, positive)."""
        pairs = []
        for exemplar in self.exemplars:
            if len(exemplar) == 2 and isinstance(exemplar[1], bool | np.bool_):
                box, positive = exemplar
            else:
                box, positive = exemplar, True
            coordinates = tuple(float(v) for v in box)
            if len(coordinates) != 4:
                raise ValueError(f"an exemplar box is x1, y1, x2, y2; got {box!r}")
            pairs.append((coordinates, bool(positive)))
        return pairs


def concept_queries(
    text: str | Sequence[str] | None, exemplars: Sequence[Any], negative: Sequence[Box]
) -> list[ConceptQuery]:
    """segment_concept's arguments as concepts: one per phrase, each with every exemplar; or one of
    exemplars only when no phrase is given."""
    boxes = [*exemplars, *((tuple(box), False) for box in negative)]
    phrases = [text] if isinstance(text, str) else list(text or [])
    if not phrases and not boxes:
        raise ValueError("give text (a phrase or a list of phrases), exemplars, or both")
    return [ConceptQuery(phrase, boxes) for phrase in phrases] if phrases else [ConceptQuery(None, boxes)]


class SegmentOptions(TypedDict, total=False):
    """Keyword options of segment, segment_objects and segment_stream (all optional).

    mask: "best" (default: the mask with the highest predicted IoU), "all" (three, index order) or an index 0..2.
    mask_format: how masks travel: "rle" (default, compact), "png", "bits", "polygon" (the outline: every
        part and hole a ring, Mask.polygons), or "none" (scores only, faster).
    polygon_tolerance: with "polygon", how far in pixels the simplified outline may stray (default 1; 0 exact).
    low_res_logits: also return the model's 288 x 288 mask logits (ObjectResult.low_res_logits).
    timeout: seconds for the whole call, encode included (segment_stream: the whole session);
        default: the client's Deadlines.
    """

    mask: int | str
    mask_format: str
    polygon_tolerance: float
    low_res_logits: bool
    timeout: float | None


class ConceptOptions(TypedDict, total=False):
    """Keyword options of segment_concept (all optional).

    threshold: keep instances scoring above this, in [0, 1] (default 0.5, SAM3's usual).
    mask_format: "rle" (default), "png", "bits", "polygon" or "none" (scores and boxes only).
    polygon_tolerance: with "polygon", how far in pixels the simplified outline may stray (default 1; 0 exact).
    label_image: also return one label PNG per concept (ConceptAnswer.label_image).
    max_instances: keep at most this many instances per concept, the best scores (default: all).
    timeout: seconds for the whole call, encode included; default: the client's Deadlines.
    """

    threshold: float
    mask_format: str
    polygon_tolerance: float
    label_image: bool
    max_instances: int | None
    timeout: float | None


# A segment_stream request: (image, objects) or (image, objects, object_key).
StreamRequest = (
    tuple[Any, ObjectPrompt | Sequence[ObjectPrompt]] | tuple[Any, ObjectPrompt | Sequence[ObjectPrompt], str]
)
