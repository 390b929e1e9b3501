"""DecoderService: prompts against stored embeddings, answered in about the decoder's own time.

The prompt path is: the whole request checked (`plan`: everything but the coordinates), embeddings
from the local LRU (else one Redis GET, converted once to what the decoder takes, float32 and on its
device, and cached), the coordinates checked against the image's size, one decoder run per group of
same-shaped objects, then only the masks that were asked for are upsampled and encoded. Nothing here
waits on anything but Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from decoder_service.budget import ResponseBudget, ResponseLimits, check_request
from decoder_service.cache import LOCAL, EmbeddingCache, Loaded
from sam3_client import wire
from sam3_client.proto import common_pb2, decoder_pb2, decoder_pb2_grpc
from sam3_core import masks as mask_codecs
from sam3_core.embeddings import ImageEmbeddings
from sam3_core.graphs import MASKS_PER_OBJECT
from sam3_core.model import Sam3Model
from sam3_core.predictor import ObjectPrediction, decode
from sam3_core.prompts import Prompt, PromptError, PromptLimits, check_prompts
from sam3_core.timing import StageTimer
from sam3_serving import metrics
from sam3_serving.errors import Reason, ServiceError
from sam3_serving.model_info import model_info
from sam3_serving.server import tenant_of
from sam3_serving.store import EmbeddingStore
from sam3_serving.streams import ReadAhead, StreamLimits

WORKER = "decoder"


@dataclass(frozen=True)
class DecoderSettings:
    prompt_limits: PromptLimits = PromptLimits()
    cache_bytes: int = 1024 * 1024 * 1024  # local embedding LRU: ~50 images at float32
    responses: ResponseLimits = ResponseLimits()
    streams: StreamLimits = StreamLimits()


@dataclass(frozen=True)
class Plan:
    """A Segment request checked in full before any embedding is fetched: what to run and what to return."""

    prompts: list[Prompt]
    mask_format: int
    selection: int
    mask_index: int


def plan(request: decoder_pb2.SegmentRequest, limits: PromptLimits) -> Plan:
    """Everything that can be wrong with a request without knowing the image: id, enums, prompts, mask index.

    Only the coordinates wait for the image's size (`decode` checks them). Raises INVALID_PROMPT naming the field.
    """
    try:
        check_image_id(request.image_id)
        for field, enum in (("selection", decoder_pb2.MaskSelection), ("mask_format", decoder_pb2.MaskFormat)):
            value = getattr(request, field)
            if value == 0 or value not in enum.values():  # unset, or from a newer (or broken) client: never a default
                raise PromptError(field, _enum_problem(enum, value))
        if request.selection == decoder_pb2.MASK_SELECTION_INDEX and not 0 <= request.mask_index < MASKS_PER_OBJECT:
            raise PromptError("mask_index", f"{request.mask_index} is not a mask index (0..{MASKS_PER_OBJECT - 1})")
        prompts = to_prompts(request)
        check_prompts(prompts, limits)
    except PromptError as error:
        raise invalid_prompt(error) from error
    return Plan(prompts, request.mask_format, request.selection, request.mask_index)


def check_image_id(image_id: str) -> None:
    if not wire.is_image_id(image_id):
        raise PromptError("image_id", "expected the 64 lowercase hex digits of the image's sha256")


def invalid_prompt(error: PromptError) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(error), Reason.INVALID_PROMPT, field=error.field)


def to_prompts(request: decoder_pb2.SegmentRequest) -> list[Prompt]:
    """Wire prompts -> core prompts (unset or unknown labels are reported with their field name)."""
    prompts = []
    for i, obj in enumerate(request.objects):
        labels = []
        for j, point in enumerate(obj.points):
            label = wire.label_from_wire(point.label)
            if label is None:
                raise PromptError(f"objects[{i}].points[{j}].label", _enum_problem(decoder_pb2.PointLabel, point.label))
            labels.append(label)
        box = (obj.box.x1, obj.box.y1, obj.box.x2, obj.box.y2) if obj.HasField("box") else None
        prompts.append(Prompt(tuple((p.x, p.y) for p in obj.points), tuple(labels), box))
    return prompts


def _enum_problem(enum: Any, value: int) -> str:
    """Why an enum value is refused: never set (the zero value), or unknown to this server."""
    choices = ", ".join(name for name, number in enum.items() if number != 0)
    if value == 0:
        return f"not set (an enum name your library did not know also arrives as 0); send one of {choices}"
    return f"unknown value {value}; send one of {choices}"


def selected_indices(plan: Plan, prediction: ObjectPrediction) -> list[int]:
    if plan.selection == decoder_pb2.MASK_SELECTION_ALL:
        return list(range(len(prediction.iou_scores)))
    if plan.selection == decoder_pb2.MASK_SELECTION_INDEX:
        return [plan.mask_index]
    return [prediction.best_index]


def mask_message(
    prediction: ObjectPrediction, index: int, fmt: int, timer: StageTimer, budget: ResponseBudget
) -> decoder_pb2.Mask:
    """One mask on the wire. RLE comes straight from the logits (no H x W mask for smooth masks); with
    MASK_FORMAT_NONE nothing at full size is computed at all."""
    height, width = prediction.original_size
    message = decoder_pb2.Mask(
        index=index,
        iou_score=float(prediction.iou_scores[index]),
        format=fmt,
        width=width,
        height=height,
        bbox=decoder_pb2.BoundingBox(),  # present even when empty, as the contract promises
    )
    if fmt == decoder_pb2.MASK_FORMAT_NONE:
        return message
    if fmt == decoder_pb2.MASK_FORMAT_RLE:
        with timer.stage("postprocess"):
            rle = prediction.mask_rle(index)
            area, (x, y, w, h) = mask_codecs.rle_area_and_box(rle)
        with timer.stage("encode_mask"):
            message.rle.CopyFrom(decoder_pb2.RleMask(counts=rle.counts, height=height, width=width))
    else:
        with timer.stage("postprocess"):
            mask = prediction.mask(index)
            area, (x, y, w, h) = int(np.count_nonzero(mask)), mask_codecs.bounding_box(mask)
        with timer.stage("encode_mask"):
            packed = fmt == decoder_pb2.MASK_FORMAT_PACKED_BITS
            message.data = mask_codecs.to_packed_bits(mask) if packed else mask_codecs.to_png(mask)
    budget.spend(message.ByteSize())
    message.area = area
    message.bbox.CopyFrom(decoder_pb2.BoundingBox(x=x, y=y, width=w, height=h))
    return message


def object_result(
    request: decoder_pb2.SegmentRequest,
    plan: Plan,
    prediction: ObjectPrediction,
    timer: StageTimer,
    budget: ResponseBudget,
) -> decoder_pb2.ObjectResult:
    indices = selected_indices(plan, prediction)
    result = decoder_pb2.ObjectResult(
        presence_probability=prediction.presence,
        presence_logit=prediction.object_score_logit,
        iou_scores=prediction.iou_scores.tolist(),
        best_index=prediction.best_index,
    )
    result.masks.extend(mask_message(prediction, index, plan.mask_format, timer, budget) for index in indices)
    if request.return_low_res_logits:
        logits = prediction.low_res_logits[indices]
        result.low_res_logits.CopyFrom(
            decoder_pb2.LowResLogits(
                data=logits.astype("<f4").tobytes(),
                count=len(indices),
                height=logits.shape[1],
                width=logits.shape[2],
            )
        )
    return result


class DecoderServicer(decoder_pb2_grpc.DecoderServiceServicer):
    def __init__(
        self,
        model: Sam3Model,
        store: EmbeddingStore,
        cache: EmbeddingCache,
        settings: DecoderSettings = DecoderSettings(),
    ) -> None:
        self.model = model
        self.store = store
        self.cache = cache
        self.settings = settings

    def GetModelInfo(
        self, request: common_pb2.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> common_pb2.ModelInfo:
        return model_info(self.model, self.store)

    def Segment(
        self, request: decoder_pb2.SegmentRequest, context: grpc.ServicerContext
    ) -> decoder_pb2.SegmentResponse:
        return self._segment(request, self.store.for_tenant(tenant_of(context)))

    def Prefetch(
        self, request: decoder_pb2.PrefetchRequest, context: grpc.ServicerContext
    ) -> decoder_pb2.PrefetchResponse:
        """The first click's Redis fetch, paid ahead of it (the SDK sends this after an Encode)."""
        try:
            check_image_id(request.image_id)
        except PromptError as error:
            raise invalid_prompt(error) from error
        timer = StageTimer()
        with timer.stage("total"):
            _, outcome = self._embeddings(self.store.for_tenant(tenant_of(context)), request.image_id, timer)
        return decoder_pb2.PrefetchResponse(
            already_cached=outcome == LOCAL, timings=common_pb2.Timings(milliseconds=timer.milliseconds)
        )

    def SegmentStream(
        self, request_iterator: Iterator[decoder_pb2.SegmentRequest], context: grpc.ServicerContext
    ) -> Iterator[decoder_pb2.SegmentResponse]:
        """Answers in order. A request whose non-empty object_key has a newer request already waiting
        is answered `skipped` without running the model: an interactive client only cares about the
        latest click on an object. Per-request failures become `error` items; the session goes on."""
        store = self.store.for_tenant(tenant_of(context))
        with ReadAhead(request_iterator, self.settings.streams) as requests:
            for request in requests:
                key = request.object_key
                if key and requests.waiting(lambda later: later.object_key == key):  # noqa: B023 (used at once)
                    yield decoder_pb2.SegmentResponse(
                        request_id=request.request_id, image_id=request.image_id, skipped=True
                    )
                    continue
                try:
                    yield self._segment(request, store)
                except ServiceError as error:
                    yield decoder_pb2.SegmentResponse(
                        request_id=request.request_id, image_id=request.image_id, error=error.to_item_error()
                    )

    def _segment(self, request: decoder_pb2.SegmentRequest, store: EmbeddingStore) -> decoder_pb2.SegmentResponse:
        timer = StageTimer()
        with timer.stage("total"):
            checked = plan(request, self.settings.prompt_limits)
            embeddings, _ = self._embeddings(store, request.image_id, timer)
            limits = self.settings.responses
            check_request(request, embeddings.original_size, self.model.mask_size, limits)
            try:
                predictions = decode(
                    self.model, embeddings, checked.prompts, limits=self.settings.prompt_limits, timer=timer
                )
            except PromptError as error:  # a coordinate outside the image: only now is its size known
                raise invalid_prompt(error) from error
            budget = ResponseBudget(limits)
            objects = [object_result(request, checked, p, timer, budget) for p in predictions]
        metrics.observe_stages(WORKER, timer.milliseconds)
        height, width = embeddings.original_size
        return decoder_pb2.SegmentResponse(
            objects=objects,
            width=width,
            height=height,
            model_id=self.model.model_id,
            timings=common_pb2.Timings(milliseconds=timer.milliseconds),
            request_id=request.request_id,
            image_id=request.image_id,
        )

    def _embeddings(self, store: EmbeddingStore, image_id: str, timer: StageTimer) -> tuple[ImageEmbeddings, str]:
        """(embeddings, where from: LOCAL or "redis"): the local cache, else Redis, converted once to what the
        decoder takes (float32; on its device with I/O binding). NOT_FOUND tells the client to Encode.

        The local cache is keyed by the value's store key, so tenants never share a local copy either.
        """

        def load() -> Loaded:
            lookup = store.get(image_id)
            if lookup.embeddings is None:
                return None, lookup.outcome
            return self.model.decoder_embeddings(lookup.embeddings), "redis"

        with timer.stage("fetch"):
            embeddings, outcome = self.cache.get_or_load(store.key(image_id), load)
        metrics.CACHE_LOOKUPS.labels(outcome).inc()
        if embeddings is None:
            raise ServiceError(
                grpc.StatusCode.NOT_FOUND,
                f"no embeddings for image {image_id} under model {self.model.model_id}; call Encode first",
                Reason.EMBEDDING_NOT_FOUND,
                image_id=image_id,
                model_id=self.model.model_id,
            )
        return embeddings, outcome
