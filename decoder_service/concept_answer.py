"""A SegmentConcept answer assembled: per concept, the best instances, their masks and the label image,
within the answer's budget.

`concept_budget` checks the worst case (every concept returning `max_instances` masks) before the concept
decoder runs; `concept_result` keeps the `max_instances` best instances of what the model found, reserves
their masks before the first one is computed, then makes them one at a time (all of them only for a
label image).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from decoder_service.budget import Remedy, ResponseBudget, ResponseLimits
from decoder_service.concepts import ConceptPlan
from decoder_service.mask_wire import MaskWire, empty_mask, encode
from sam3_client.proto import decoder_pb2
from sam3_core import masks as mask_codecs
from sam3_core.concept import ConceptAnswer, ConceptInstance
from sam3_core.timing import StageTimer

__all__ = ["best_instances", "concept_budget", "concept_result"]

REMEDY = Remedy(
    bytes="set a smaller max_instances, raise the threshold, ask for fewer concepts, or use RLE",
    pixels="set a smaller max_instances, raise the threshold, ask for fewer concepts, or use mask_format NONE "
    "for scores and boxes only",
)


def concept_budget(plan: ConceptPlan, size: tuple[int, int], limits: ResponseLimits, queries: int) -> ResponseBudget:
    """The budget of the answer about an image of `size`; with `max_instances` set, refused at once when the
    worst case (each concept finding `queries` instances, the model's most) is over it. (Without, the
    instances found are reserved as they are known.)"""
    budget = ResponseBudget(limits, size, REMEDY)
    if plan.max_instances is not None:
        budget.check(
            len(plan.concepts) * plan.instances_cap(queries),
            f"{len(plan.concepts)} concepts x max_instances {plan.max_instances}",
            mask_format=plan.mask_format,
            full_size=plan.computes_masks,
        )
    return budget


def best_instances(found: Sequence[ConceptInstance], cap: int) -> list[ConceptInstance]:
    """The `cap` highest-scoring instances (the earlier query on a tie), in the model's query order."""
    return sorted(heapq.nlargest(cap, found, key=lambda instance: instance.score), key=lambda i: i.query)


def concept_result(
    plan: ConceptPlan,
    index: int,
    answer: ConceptAnswer,
    size: tuple[int, int],
    timer: StageTimer,
    budget: ResponseBudget,
) -> decoder_pb2.ConceptResult:
    """The answer for `plan.concepts[index]`, from what the concept decoder found on an image of `size`."""
    concept = plan.concepts[index]
    found = best_instances(answer.instances, plan.instances_cap(len(answer.instances)))
    budget.reserve(  # before any mask: their number is only known now
        len(found),
        f"concepts[{index}] found {len(found)} instances",
        mask_format=plan.mask_format,
        full_size=plan.computes_masks,
    )
    result = decoder_pb2.ConceptResult(text=concept.text or "", presence=answer.presence)
    wire = MaskWire(plan.mask_format, plan.polygon_tolerance, budget)
    masks = []  # kept only for the label image; otherwise one full-size mask at a time
    for number, instance in enumerate(found):
        x1, y1, x2, y2 = instance.box
        message = decoder_pb2.ConceptInstance(score=instance.score, box=decoder_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2))
        message.mask.CopyFrom(empty_mask(number, instance.score, plan.mask_format, size))
        if plan.computes_masks:
            with timer.stage("postprocess"):
                mask = instance.mask()
            if plan.mask_format != decoder_pb2.MASK_FORMAT_NONE:
                encode(message.mask, mask, timer, wire, f"concepts[{index}].instances[{number}]")
            if plan.label_image:
                masks.append(mask)
        budget.spend(message.ByteSize())
        result.instances.append(message)
    if plan.label_image:
        with timer.stage("encode_mask"):
            height, width = size
            labels = mask_codecs.label_image(masks, [instance.score for instance in found], height, width)
            result.label_png = mask_codecs.to_label_png(labels)
        budget.spend(len(result.label_png))
    return result
