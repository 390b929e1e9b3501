"""A Segment request checked in full before any embedding is fetched: what to run and what to return.

Everything but the coordinates is checked without the image (id, enums, labels, counts, finite numbers,
box corner order, mask index), so a bad request costs no fetch; the coordinates wait for the image's size
(`sam3_core.predictor.decode` checks them). A problem is INVALID_ARGUMENT / INVALID_PROMPT naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass

from decoder_service.fields import check_image_id, enum_problem, invalid_prompt, require_enum
from sam3_client import wire
from sam3_client.proto import decoder_pb2
from sam3_core.graphs import MASKS_PER_OBJECT
from sam3_core.prompts import Prompt, PromptError, PromptLimits, check_prompts

__all__ = ["SegmentPlan", "segment_plan"]


@dataclass(frozen=True)
class SegmentPlan:
    prompts: list[Prompt]
    mask_format: int
    selection: int
    mask_index: int
    low_res_logits: bool

    @property
    def masks_per_object(self) -> int:
        return MASKS_PER_OBJECT if self.selection == decoder_pb2.MASK_SELECTION_ALL else 1

    @property
    def masks(self) -> int:
        """Masks in the answer."""
        return len(self.prompts) * self.masks_per_object


def segment_plan(request: decoder_pb2.SegmentRequest, limits: PromptLimits) -> SegmentPlan:
    """Everything that can be wrong with a request without knowing the image: id, enums, prompts, mask index."""
    try:
        check_image_id(request.image_id)
        for field, enum in (("selection", decoder_pb2.MaskSelection), ("mask_format", decoder_pb2.MaskFormat)):
            require_enum(field, enum, getattr(request, field))
        if request.selection == decoder_pb2.MASK_SELECTION_INDEX and not 0 <= request.mask_index < MASKS_PER_OBJECT:
            raise PromptError("mask_index", f"{request.mask_index} is not a mask index (0..{MASKS_PER_OBJECT - 1})")
        prompts = _prompts(request)
        check_prompts(prompts, limits)
    except PromptError as error:
        raise invalid_prompt(error) from error
    return SegmentPlan(
        prompts, request.mask_format, request.selection, request.mask_index, request.return_low_res_logits
    )


def _prompts(request: decoder_pb2.SegmentRequest) -> list[Prompt]:
    """Wire prompts -> core prompts (unset or unknown labels are reported with their field name)."""
    prompts = []
    for i, obj in enumerate(request.objects):
        labels = []
        for j, point in enumerate(obj.points):
            label = wire.label_from_wire(point.label)
            if label is None:
                raise PromptError(f"objects[{i}].points[{j}].label", enum_problem(decoder_pb2.PointLabel, point.label))
            labels.append(label)
        box = (obj.box.x1, obj.box.y1, obj.box.x2, obj.box.y2) if obj.HasField("box") else None
        prompts.append(Prompt(tuple((p.x, p.y) for p in obj.points), tuple(labels), box))
    return prompts
