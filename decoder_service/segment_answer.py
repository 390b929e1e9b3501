"""A Segment answer assembled: for each object its scores and the masks asked for, within its budget.

`segment_budget` reserves every mask the plan asks for before the decoder runs (refused there when the
answer would be over a limit); `object_result` then encodes only the selected masks, one at a time,
spending their encoded bytes.
"""

from __future__ import annotations

from decoder_service.budget import Remedy, ResponseBudget, ResponseLimits
from decoder_service.mask_wire import MaskWire, low_res_logits, low_res_logits_bytes, predicted_mask
from decoder_service.segment_plan import SegmentPlan
from sam3_client.proto import decoder_pb2
from sam3_core.predictor import ObjectPrediction
from sam3_core.timing import StageTimer

__all__ = ["object_result", "remembered_index", "segment_budget", "selected"]

REMEDY = Remedy(
    bytes="ask for fewer objects or masks, or a more compact mask format (RLE)",
    pixels="ask for fewer objects, the best mask only, or mask_format NONE with low-res logits",
)


def segment_budget(
    plan: SegmentPlan, size: tuple[int, int], low_res_size: tuple[int, int], limits: ResponseLimits
) -> ResponseBudget:
    """The budget of the answer about an image of `size`, with every mask the plan asks for reserved."""
    budget = ResponseBudget(limits, size, REMEDY)
    masks = plan.masks
    budget.reserve(
        masks,
        f"{len(plan.prompts)} objects x {plan.masks_per_object} masks",
        mask_format=plan.mask_format,
        full_size=plan.mask_format != decoder_pb2.MASK_FORMAT_NONE,
        extra_bytes=low_res_logits_bytes(masks, low_res_size) if plan.low_res_logits else 0,
    )
    return budget


def object_result(
    plan: SegmentPlan, number: int, prediction: ObjectPrediction, timer: StageTimer, budget: ResponseBudget
) -> decoder_pb2.ObjectResult:
    """The answer for `plan.prompts[number]`."""
    indices = selected(plan, prediction)
    result = decoder_pb2.ObjectResult(
        presence_probability=prediction.presence,
        presence_logit=prediction.object_score_logit,
        iou_scores=prediction.iou_scores.tolist(),
        best_index=prediction.best_index,
        mask_input_used=plan.prompts[number].mask_input is not None,
    )
    wire = MaskWire(plan.mask_format, plan.polygon_tolerance, budget)
    for index in indices:
        message = predicted_mask(prediction, index, timer, wire, f"objects[{number}] mask {index}")
        budget.spend(message.ByteSize())
        result.masks.append(message)
    if plan.low_res_logits:
        result.low_res_logits.CopyFrom(low_res_logits(prediction.low_res_logits[indices]))
    return result


def selected(plan: SegmentPlan, prediction: ObjectPrediction) -> list[int]:
    """The masks the answer returns, in index order."""
    if plan.selection == decoder_pb2.MASK_SELECTION_ALL:
        return list(range(len(prediction.iou_scores)))
    if plan.selection == decoder_pb2.MASK_SELECTION_INDEX:
        return [plan.mask_index]
    return [prediction.best_index]


def remembered_index(plan: SegmentPlan, prediction: ObjectPrediction) -> int:
    """The mask whose logits an object key keeps for the next click: the one returned (the best of three
    with MASK_SELECTION_ALL)."""
    return plan.mask_index if plan.selection == decoder_pb2.MASK_SELECTION_INDEX else prediction.best_index
