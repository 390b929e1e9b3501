"""A Segment answer assembled: for each object its scores and the masks asked for, within its budget.

`segment_budget` reserves every mask the plan asks for before the decoder runs (refused there when the
answer would be over a limit); `object_result` then encodes only the selected masks, one at a time,
spending their encoded bytes.
"""

from __future__ import annotations

from decoder_service.budget import Remedy, ResponseBudget, ResponseLimits
from decoder_service.mask_wire import low_res_logits, low_res_logits_bytes, predicted_mask
from decoder_service.segment_plan import SegmentPlan
from sam3_client.proto import decoder_pb2
from sam3_core.predictor import ObjectPrediction
from sam3_core.timing import StageTimer

__all__ = ["object_result", "segment_budget"]

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
    plan: SegmentPlan, prediction: ObjectPrediction, timer: StageTimer, budget: ResponseBudget
) -> decoder_pb2.ObjectResult:
    indices = _selected(plan, prediction)
    result = decoder_pb2.ObjectResult(
        presence_probability=prediction.presence,
        presence_logit=prediction.object_score_logit,
        iou_scores=prediction.iou_scores.tolist(),
        best_index=prediction.best_index,
    )
    for index in indices:
        message = predicted_mask(prediction, index, plan.mask_format, timer)
        budget.spend(message.ByteSize())
        result.masks.append(message)
    if plan.low_res_logits:
        result.low_res_logits.CopyFrom(low_res_logits(prediction.low_res_logits[indices]))
    return result


def _selected(plan: SegmentPlan, prediction: ObjectPrediction) -> list[int]:
    if plan.selection == decoder_pb2.MASK_SELECTION_ALL:
        return list(range(len(prediction.iou_scores)))
    if plan.selection == decoder_pb2.MASK_SELECTION_INDEX:
        return [plan.mask_index]
    return [prediction.best_index]
