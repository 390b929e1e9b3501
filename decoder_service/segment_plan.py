"""A Segment request checked in full before any embedding is fetched: what to run and what to return.

Everything but the coordinates is checked without the image (id, enums, labels, counts, finite numbers,
box corner order, mask index, mask inputs against the model's mask size, object keys), so a bad request
costs no fetch; the coordinates wait for the image's size (`sam3_core.predictor.decode` checks them). A
problem is INVALID_ARGUMENT / INVALID_PROMPT naming the field; a mask input on a model folder that cannot
take one is FAILED_PRECONDITION / MASK_INPUT_NOT_SUPPORTED.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import grpc
import numpy as np

from decoder_service.fields import check_image_id, enum_problem, invalid_prompt, polygon_tolerance, require_enum
from sam3_client import wire
from sam3_client.proto import decoder_pb2
from sam3_core.graphs import MASKS_PER_OBJECT
from sam3_core.model import Sam3Model
from sam3_core.prompts import Prompt, PromptError, PromptLimits, check_prompts
from sam3_serving.errors import Reason, ServiceError

__all__ = ["MAX_OBJECT_KEY_BYTES", "SegmentPlan", "segment_plan"]

MAX_OBJECT_KEY_BYTES = 128


@dataclass(frozen=True)
class SegmentPlan:
    prompts: list[Prompt]  # the mask inputs sent as logits already in; remembered ones join via `with_masks`
    mask_format: int
    selection: int
    mask_index: int
    low_res_logits: bool
    polygon_tolerance: float
    object_keys: tuple[str, ...]  # per object, "" for none: where its answer's logits are remembered
    remembered: tuple[bool, ...]  # per object: its mask input is the logits remembered under its object key

    def with_masks(self, masks: dict[int, np.ndarray]) -> SegmentPlan:
        """The plan with the remembered logits found (object index -> logits) as those objects' mask inputs."""
        prompts = [replace(p, mask_input=masks[i]) if i in masks else p for i, p in enumerate(self.prompts)]
        return replace(self, prompts=prompts)

    @property
    def masks_per_object(self) -> int:
        return MASKS_PER_OBJECT if self.selection == decoder_pb2.MASK_SELECTION_ALL else 1

    @property
    def masks(self) -> int:
        """Masks in the answer."""
        return len(self.prompts) * self.masks_per_object


def segment_plan(request: decoder_pb2.SegmentRequest, limits: PromptLimits, model: Sam3Model) -> SegmentPlan:
    """Everything that can be wrong with a request without knowing the image: id, enums, prompts, mask index,
    mask inputs (against `model`'s mask size), object keys."""
    try:
        check_image_id(request.image_id)
        for field, enum in (("selection", decoder_pb2.MaskSelection), ("mask_format", decoder_pb2.MaskFormat)):
            require_enum(field, enum, getattr(request, field))
        if request.selection == decoder_pb2.MASK_SELECTION_INDEX and not 0 <= request.mask_index < MASKS_PER_OBJECT:
            raise PromptError("mask_index", f"{request.mask_index} is not a mask index (0..{MASKS_PER_OBJECT - 1})")
        tolerance = polygon_tolerance(request)
        object_keys = _object_keys(request)
        remembered = tuple(obj.mask_input.WhichOneof("source") == "previous" for obj in request.objects)
        if any(obj.HasField("mask_input") for obj in request.objects) and not model.accepts_mask_input:
            raise _mask_input_not_supported(model)
        prompts = _prompts(request, model.mask_size)
        for i, (key, previous, prompt) in enumerate(zip(object_keys, remembered, prompts, strict=True)):
            if previous and not key:
                raise PromptError(f"objects[{i}].mask_input.previous", "needs the object's object_key")
            if previous and not prompt.points and prompt.box is None:
                raise PromptError(
                    f"objects[{i}]",
                    "send the object's clicks or box with `previous`: they are what is decoded "
                    "if its remembered mask has expired",
                )
        check_prompts(prompts, limits, model.mask_size)
    except PromptError as error:
        raise invalid_prompt(error) from error
    return SegmentPlan(
        prompts,
        request.mask_format,
        request.selection,
        request.mask_index,
        request.return_low_res_logits,
        tolerance,
        object_keys,
        remembered,
    )


def _mask_input_not_supported(model: Sam3Model) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"model folder {model.folder.name} cannot take mask inputs (it has no mask-prompt graph, "
        "mask_decoder_mask_prompt.onnx, e.g. an onnx-community folder): send the clicks alone, or serve a folder "
        "exported with `sam3 models export`",
        Reason.MASK_INPUT_NOT_SUPPORTED,
        model_id=model.model_id,
    )


def _object_keys(request: decoder_pb2.SegmentRequest) -> tuple[str, ...]:
    """Each object's key ("" for none): at most MAX_OBJECT_KEY_BYTES, none twice in one request."""
    seen: dict[str, int] = {}
    for i, obj in enumerate(request.objects):
        key = obj.object_key
        if len(key.encode()) > MAX_OBJECT_KEY_BYTES:
            raise PromptError(f"objects[{i}].object_key", f"{len(key.encode())} bytes, at most {MAX_OBJECT_KEY_BYTES}")
        if key and key in seen:
            raise PromptError(f"objects[{i}].object_key", f"{key!r} is objects[{seen[key]}]'s too: one key per object")
        seen.setdefault(key, i)
    return tuple(obj.object_key for obj in request.objects)


def _prompts(request: decoder_pb2.SegmentRequest, mask_size: tuple[int, int]) -> list[Prompt]:
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
        mask = _mask_logits(f"objects[{i}].mask_input", obj, mask_size)
        prompts.append(Prompt(tuple((p.x, p.y) for p in obj.points), tuple(labels), box, mask))
    return prompts


def _mask_logits(field: str, obj: decoder_pb2.ObjectPrompt, mask_size: tuple[int, int]) -> np.ndarray | None:
    """The logits an object sent as its mask input (None: none, or the remembered ones), checked on the wire:
    one map of the model's mask size, its bytes exactly that many float32 values (finiteness: check_prompts)."""
    if not obj.HasField("mask_input"):
        return None
    source = obj.mask_input.WhichOneof("source")
    if source is None:
        raise PromptError(field, "set `logits` (a previous answer's low-res logits) or `previous`; or leave it unset")
    if source == "previous":
        if not obj.mask_input.previous:
            raise PromptError(f"{field}.previous", "false: set it true, or leave mask_input unset")
        return None
    logits = obj.mask_input.logits
    height, width = mask_size
    if logits.count != 1:
        raise PromptError(f"{field}.logits.count", f"{logits.count}: send the logits of one mask (count 1)")
    if (logits.height, logits.width) != (height, width):
        raise PromptError(
            f"{field}.logits.height",
            f"{logits.height} x {logits.width}: the model's low-res masks are {height} x {width} (ModelInfo.mask_size)",
        )
    if len(logits.data) != 4 * height * width:
        raise PromptError(f"{field}.logits.data", f"{len(logits.data)} bytes, not {height} x {width} float32 values")
    return np.frombuffer(logits.data, "<f4").astype(np.float32).reshape(height, width)
