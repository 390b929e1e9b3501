"""DecoderService: prompts against stored embeddings, answered in about the decoder's own time.

The prompt path is: the whole request checked (`plan`: everything but the coordinates), embeddings
from the local LRU (else one Redis GET, converted once to what the decoder takes, float32 and on its
device, and cached), the coordinates checked against the image's size, one decoder run per group of
same-shaped objects, then only the masks that were asked for are upsampled and encoded. Nothing here
waits on anything but Redis.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from decoder_service.budget import ResponseBudget, ResponseLimits, check_request
from decoder_service.cache import LOCAL, EmbeddingCache, Loaded
from decoder_service.concepts import (
    Concept,
    ConceptLimits,
    ConceptPlan,
    ConceptSlots,
    MaskWork,
    TextFeatureCache,
    check_budget,
    check_exemplars_inside,
)
from decoder_service.concepts import plan as concept_plan
from decoder_service.fields import check_image_id, enum_problem, invalid_prompt, require_enum
from sam3_client import wire
from sam3_client.proto import common_pb2, decoder_pb2, decoder_pb2_grpc
from sam3_core import masks as mask_codecs
from sam3_core.concept import ConceptModel, DetectorFeatures, has_concept_graphs
from sam3_core.embeddings import ImageEmbeddings
from sam3_core.graphs import MASKS_PER_OBJECT
from sam3_core.model import Sam3Model
from sam3_core.predictor import ObjectPrediction, decode
from sam3_core.prompts import Prompt, PromptError, PromptLimits, check_prompts
from sam3_core.timing import StageTimer
from sam3_serving import metrics
from sam3_serving.auth import tenant_of
from sam3_serving.errors import Reason, ServiceError
from sam3_serving.model_info import model_info
from sam3_serving.roles import Role
from sam3_serving.store import DETECTOR_KIND, EmbeddingStore
from sam3_serving.streams import ReadAhead, StreamLimits

WORKER = Role.DECODER


@dataclass(frozen=True)
class DecoderSettings:
    prompt_limits: PromptLimits = PromptLimits()
    cache_bytes: int = 1024 * 1024 * 1024  # local embedding LRU: ~50 images at float32
    responses: ResponseLimits = ResponseLimits()
    streams: StreamLimits = StreamLimits()
    concepts: ConceptLimits = ConceptLimits()


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
            require_enum(field, enum, getattr(request, field))
        if request.selection == decoder_pb2.MASK_SELECTION_INDEX and not 0 <= request.mask_index < MASKS_PER_OBJECT:
            raise PromptError("mask_index", f"{request.mask_index} is not a mask index (0..{MASKS_PER_OBJECT - 1})")
        prompts = to_prompts(request)
        check_prompts(prompts, limits)
    except PromptError as error:
        raise invalid_prompt(error) from error
    return Plan(prompts, request.mask_format, request.selection, request.mask_index)


def to_prompts(request: decoder_pb2.SegmentRequest) -> list[Prompt]:
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


def selected_indices(plan: Plan, prediction: ObjectPrediction) -> list[int]:
    if plan.selection == decoder_pb2.MASK_SELECTION_ALL:
        return list(range(len(prediction.iou_scores)))
    if plan.selection == decoder_pb2.MASK_SELECTION_INDEX:
        return [plan.mask_index]
    return [prediction.best_index]


def empty_mask(index: int, score: float, fmt: int, size: tuple[int, int]) -> decoder_pb2.Mask:
    """A Mask with everything but the pixels: what MASK_FORMAT_NONE returns."""
    height, width = size
    return decoder_pb2.Mask(
        index=index,
        iou_score=score,
        format=fmt,  # type: ignore[arg-type]
        width=width,
        height=height,
        bbox=decoder_pb2.BoundingBox(),  # present even when empty, as the contract promises
    )


def fill_mask(message: decoder_pb2.Mask, mask: np.ndarray, timer: StageTimer) -> None:
    """The pixels of a boolean H x W mask into `message`, in its format, with area and box."""
    height, width = mask.shape
    with timer.stage("encode_mask"):
        if message.format == decoder_pb2.MASK_FORMAT_RLE:
            rle = mask_codecs.to_coco_rle(mask)
            message.rle.CopyFrom(decoder_pb2.RleMask(counts=rle.counts, height=height, width=width))
        elif message.format == decoder_pb2.MASK_FORMAT_PACKED_BITS:
            message.data = mask_codecs.to_packed_bits(mask)
        else:
            message.data = mask_codecs.to_png(mask)
        x, y, w, h = mask_codecs.bounding_box(mask)
        message.area = int(np.count_nonzero(mask))
        message.bbox.CopyFrom(decoder_pb2.BoundingBox(x=x, y=y, width=w, height=h))


def mask_message(
    prediction: ObjectPrediction, index: int, fmt: int, timer: StageTimer, budget: ResponseBudget
) -> decoder_pb2.Mask:
    """One mask on the wire. RLE comes straight from the logits (no H x W mask for smooth masks); with
    MASK_FORMAT_NONE nothing at full size is computed at all."""
    message = empty_mask(index, float(prediction.iou_scores[index]), fmt, prediction.original_size)
    if fmt == decoder_pb2.MASK_FORMAT_NONE:
        return message
    if fmt == decoder_pb2.MASK_FORMAT_RLE:
        height, width = prediction.original_size
        with timer.stage("postprocess"):
            rle = prediction.mask_rle(index)
            area, (x, y, w, h) = mask_codecs.rle_area_and_box(rle)
        with timer.stage("encode_mask"):
            message.rle.CopyFrom(decoder_pb2.RleMask(counts=rle.counts, height=height, width=width))
        message.area = area
        message.bbox.CopyFrom(decoder_pb2.BoundingBox(x=x, y=y, width=w, height=h))
    else:
        with timer.stage("postprocess"):
            mask = prediction.mask(index)
        fill_mask(message, mask, timer)
    budget.spend(message.ByteSize())
    return message


def not_encoded(image_id: str, model_id: str, what: str = "embeddings") -> ServiceError:
    return ServiceError(
        grpc.StatusCode.NOT_FOUND,
        f"no {what} for image {image_id} under model {model_id}; call Encode first",
        Reason.EMBEDDING_NOT_FOUND,
        image_id=image_id,
        model_id=model_id,
    )


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
        self.serves_concepts = has_concept_graphs(model.folder)
        self._concepts: ConceptModel | None = None  # loaded on the first concept query (clicks never pay)
        self._concepts_lock = threading.Lock()
        self._concept_slots = ConceptSlots(settings.concepts.max_concurrent)
        self._text_cache = TextFeatureCache(settings.concepts.text_cache_entries)

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

    def SegmentConcept(
        self, request: decoder_pb2.SegmentConceptRequest, context: grpc.ServicerContext
    ) -> decoder_pb2.SegmentConceptResponse:
        """Every instance of each concept, on the detector features the encoder stored with the embeddings."""
        if not self.serves_concepts:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model folder {self.model.folder.name} serves clicks and boxes only: concept prompts need a folder "
                "exported with `sam3 models export` (text_encoder.onnx, exemplar_encoder.onnx, concept_decoder.onnx)",
                Reason.CONCEPTS_NOT_SUPPORTED,
                model_id=self.model.model_id,
            )
        timer = StageTimer()
        with timer.stage("total"):
            checked = concept_plan(request, self.settings.concepts)
            store = self.store.for_tenant(tenant_of(context))
            # The slot first: a refused query must not fetch (and cache) 56-112 MB of features either.
            with self._concept_slots.taken():
                with timer.stage("load"):  # the concept sessions, on a worker's first concept query only
                    concepts = self._concept_model()
                features = self._detector_features(store, concepts, request.image_id, timer)
                check_exemplars_inside(checked, features.original_size)
                check_budget(checked, features.original_size, self.settings.responses)
                budget = ResponseBudget(self.settings.responses)
                work = MaskWork(features.original_size, self.settings.responses)
                results = [
                    self._concept_result(concepts, store, features, checked, concept, timer, budget, work)
                    for concept in checked.concepts
                ]
        return decoder_pb2.SegmentConceptResponse(
            concepts=results, **self._answered(request, features.original_size, timer)
        )

    def _concept_model(self) -> ConceptModel:
        with self._concepts_lock:
            if self._concepts is None:
                self._concepts = ConceptModel(self.model.folder, runtime=self.model.runtime)
            return self._concepts

    def _detector_features(
        self, store: EmbeddingStore, concepts: ConceptModel, image_id: str, timer: StageTimer
    ) -> DetectorFeatures:
        """The image's detector features: local cache, else the store (NOT_FOUND: Encode first)."""
        detector_store = store.for_kind(DETECTOR_KIND, concepts.detector_shapes)
        value, outcome = self._cached(detector_store, image_id, lambda stored: stored.astype(np.float32), timer)
        metrics.CONCEPT_LOOKUPS.labels(kind="features", result=outcome).inc()
        if value is None:
            raise not_encoded(
                image_id, self.model.model_id, "concept features (an encoder with concepts on stores them)"
            )
        return DetectorFeatures.from_embeddings(value)

    def _concept_result(
        self,
        concepts: ConceptModel,
        store: EmbeddingStore,
        features: DetectorFeatures,
        checked: ConceptPlan,
        concept: Concept,
        timer: StageTimer,
        budget: ResponseBudget,
        work: MaskWork,
    ) -> decoder_pb2.ConceptResult:
        with timer.stage("text"):
            text = self._text_cache.get(concepts, store, concept.text)
        with timer.stage("concept_decoder"):
            answer = concepts.detect(features, concept.text, concept.exemplars, checked.threshold, text_features=text)
        metrics.MODEL_RUNS.labels(WORKER).inc()
        found = answer.instances
        if len(found) > checked.instances_cap:  # the best ones, still in query order
            best = {id(i) for i in sorted(found, key=lambda i: i.score, reverse=True)[: checked.instances_cap]}
            found = [instance for instance in found if id(instance) in best]
        if checked.computes_masks:  # before any mask: their number is only known now
            work.add(len(found))
        result = decoder_pb2.ConceptResult(text=concept.text or "", presence=answer.presence)
        masks = []  # kept only for the label image; otherwise one full-size mask at a time
        for index, instance in enumerate(found):
            x1, y1, x2, y2 = instance.box
            message = decoder_pb2.ConceptInstance(score=instance.score, box=decoder_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2))
            message.mask.CopyFrom(empty_mask(index, instance.score, checked.mask_format, features.original_size))
            if checked.computes_masks:
                with timer.stage("postprocess"):
                    mask = instance.mask()
                if checked.mask_format != decoder_pb2.MASK_FORMAT_NONE:
                    fill_mask(message.mask, mask, timer)
                if checked.label_image:
                    masks.append(mask)
            budget.spend(message.ByteSize())
            result.instances.append(message)
        if checked.label_image:
            with timer.stage("encode_mask"):
                height, width = features.original_size
                result.label_png = mask_codecs.to_label_png(
                    mask_codecs.label_image(masks, [i.score for i in found], height, width)
                )
            budget.spend(len(result.label_png))
        return result

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
        return decoder_pb2.SegmentResponse(objects=objects, **self._answered(request, embeddings.original_size, timer))

    def _answered(self, request: Any, size: tuple[int, int], timer: StageTimer) -> dict[str, Any]:
        """The fields every answer about an image carries; records the call's stages in the metrics."""
        metrics.observe_stages(WORKER, timer.milliseconds)
        height, width = size
        return {
            "width": width,
            "height": height,
            "model_id": self.model.model_id,
            "timings": common_pb2.Timings(milliseconds=timer.milliseconds),
            "request_id": request.request_id,
            "image_id": request.image_id,
        }

    def _cached(
        self,
        store: EmbeddingStore,
        image_id: str,
        convert: Callable[[ImageEmbeddings], ImageEmbeddings],
        timer: StageTimer,
    ) -> Loaded:
        """A stored value through the local cache, keyed by its store key (tenants and kinds never share an
        entry), converted once on its way in; (None, why) when the store has none."""

        def load() -> Loaded:
            lookup = store.get(image_id)
            if lookup.embeddings is None:
                return None, lookup.outcome
            return convert(lookup.embeddings), "redis"

        with timer.stage("fetch"):
            return self.cache.get_or_load(store.key(image_id), load)

    def _embeddings(self, store: EmbeddingStore, image_id: str, timer: StageTimer) -> tuple[ImageEmbeddings, str]:
        """(embeddings, where from: LOCAL or "redis"): the local cache, else Redis, converted once to what the
        decoder takes (float32; on its device with I/O binding). NOT_FOUND tells the client to Encode.

        The local cache is keyed by the value's store key, so tenants never share a local copy either.
        """
        embeddings, outcome = self._cached(store, image_id, self.model.decoder_embeddings, timer)
        metrics.CACHE_LOOKUPS.labels(outcome).inc()
        if embeddings is None:
            raise not_encoded(image_id, self.model.model_id)
        return embeddings, outcome
