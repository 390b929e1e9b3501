"""DecoderService: prompts against stored embeddings, answered in about the decoder's own time.

The click path is: the whole request checked (`segment_plan`: everything but the coordinates),
embeddings from the local LRU (else one Redis GET, converted once to what the decoder takes, float32
and on its device, and cached), the answer's masks budgeted (`segment_budget`), the coordinates checked
against the image's size, one decoder run per group of same-shaped objects, then only the masks that
were asked for are upsampled and encoded (`segment_answer`, `mask_wire`). A click waits on nothing but
Redis, and on another call's fetch of the same image (the cache loads an image once).

A concept query (`SegmentConcept`) takes a concept slot first: never a wait, a busy worker refuses it
at once (OVERLOADED). Inside the slot it may wait for the concept sessions to load (a worker's first
concept query) and for the phrase's text features (the local LRU, Redis, else the text encoder), then
runs the concept decoder once per concept (`concept_answer` assembles the answer).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from decoder_service.budget import ResponseBudget, ResponseLimits
from decoder_service.cache import LocalCache
from decoder_service.concept_answer import concept_budget, concept_result
from decoder_service.concepts import (
    ConceptLimits,
    ConceptPlan,
    ConceptSlots,
    TextFeatureCache,
    check_exemplars_inside,
    concept_plan,
)
from decoder_service.fields import check_image_id, invalid_prompt
from decoder_service.mask_memory import DEFAULT_SECONDS, MaskMemory
from decoder_service.segment_answer import object_result, remembered_index, segment_budget
from decoder_service.segment_plan import segment_plan
from sam3_client.proto import common_pb2, decoder_pb2, decoder_pb2_grpc
from sam3_core.concept import ConceptModel, DetectorFeatures
from sam3_core.embeddings import ImageEmbeddings
from sam3_core.graphs import missing_concept_files
from sam3_core.model import Sam3Model
from sam3_core.predictor import decode
from sam3_core.prompts import PromptError, PromptLimits
from sam3_core.timing import StageTimer
from sam3_serving import metrics
from sam3_serving.auth import tenant_of
from sam3_serving.errors import Reason, ServiceError
from sam3_serving.model_info import model_info
from sam3_serving.outcome import Outcome
from sam3_serving.roles import Role
from sam3_serving.store import DETECTOR_FEATURES, EMBEDDINGS, ValueStore
from sam3_serving.streams import ReadAhead, StreamLimits

WORKER = Role.DECODER


@dataclass(frozen=True)
class DecoderSettings:
    prompt_limits: PromptLimits = PromptLimits()
    # Local LRU of stored values: 36 images in 1 GiB, 29.2 MB each in the split click decoder's prepared
    # form (decoder_service/cache.py).
    cache_bytes: int = 1024 * 1024 * 1024
    responses: ResponseLimits = ResponseLimits()
    streams: StreamLimits = StreamLimits()
    concepts: ConceptLimits = ConceptLimits()
    mask_memory_seconds: int = DEFAULT_SECONDS  # how long an object key's last logits are remembered


def not_encoded(image_id: str, model_id: str, what: str = "embeddings") -> ServiceError:
    return ServiceError(
        grpc.StatusCode.NOT_FOUND,
        f"no {what} for image {image_id} under model {model_id}; call Encode first",
        Reason.EMBEDDING_NOT_FOUND,
        image_id=image_id,
        model_id=model_id,
    )


class DecoderServicer(decoder_pb2_grpc.DecoderServiceServicer):
    def __init__(
        self,
        model: Sam3Model,
        store: ValueStore,
        cache: LocalCache,
        settings: DecoderSettings = DecoderSettings(),
    ) -> None:
        self.model = model
        self.store = store
        self.cache = cache
        self.settings = settings
        self._missing_concept_files = missing_concept_files(model.folder)
        self.serves_concepts = not self._missing_concept_files
        self._concepts: ConceptModel | None = None  # loaded on the first concept query (clicks never pay)
        self._concepts_lock = threading.Lock()
        self._concept_slots = ConceptSlots(settings.concepts.max_concurrent)
        self._text_cache = TextFeatureCache(cache)
        self._embeddings_kind = EMBEDDINGS.expecting(model.embedding_shapes())

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
            already_cached=outcome == Outcome.LOCAL, timings=common_pb2.Timings(milliseconds=timer.milliseconds)
        )

    def SegmentConcept(
        self, request: decoder_pb2.SegmentConceptRequest, context: grpc.ServicerContext
    ) -> decoder_pb2.SegmentConceptResponse:
        """Every instance of each concept, on the detector features the encoder stored with the embeddings."""
        if not self.serves_concepts:
            raise ServiceError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model folder {self.model.folder.name} serves clicks and boxes only: concept prompts need a folder "
                f"exported with `sam3 models export` (it lacks {', '.join(self._missing_concept_files)})",
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
                budget = concept_budget(checked, features.original_size, self.settings.responses, concepts.queries)
                results = [
                    self._concept_result(concepts, store, features, checked, index, timer, budget)
                    for index in range(len(checked.concepts))
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
        self, store: ValueStore, concepts: ConceptModel, image_id: str, timer: StageTimer
    ) -> DetectorFeatures:
        """The image's detector features: local cache, else the store (NOT_FOUND: Encode first)."""
        kind = DETECTOR_FEATURES.expecting(concepts.detector_shapes)
        with timer.stage("fetch"):
            features, outcome = self.cache.fetch(store, kind, image_id, lambda features: features)
        metrics.CONCEPT_LOOKUPS.labels(kind="features", result=outcome).inc()
        if features is None:
            raise not_encoded(
                image_id, self.model.model_id, "concept features (an encoder with concepts on stores them)"
            )
        return features

    def _concept_result(
        self,
        concepts: ConceptModel,
        store: ValueStore,
        features: DetectorFeatures,
        checked: ConceptPlan,
        index: int,
        timer: StageTimer,
        budget: ResponseBudget,
    ) -> decoder_pb2.ConceptResult:
        concept = checked.concepts[index]
        with timer.stage("text"):
            text = self._text_cache.get(concepts, store, concept.text)
        with timer.stage("concept_decoder"):
            answer = concepts.detect(features, concept.text, concept.exemplars, checked.threshold, text_features=text)
        metrics.MODEL_RUNS.labels(WORKER).inc()
        return concept_result(checked, index, answer, features.original_size, timer, budget)

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

    def _segment(self, request: decoder_pb2.SegmentRequest, store: ValueStore) -> decoder_pb2.SegmentResponse:
        timer = StageTimer()
        with timer.stage("total"):
            checked = segment_plan(request, self.settings.prompt_limits, self.model)
            embeddings, _ = self._embeddings(store, request.image_id, timer)
            size = embeddings.original_size
            budget = segment_budget(checked, size, self.model.mask_size, self.settings.responses)
            memory = MaskMemory(store, self.model.mask_size, self.settings.mask_memory_seconds)
            if any(checked.remembered):
                with timer.stage("fetch"):
                    wanted = {i: checked.object_keys[i] for i, previous in enumerate(checked.remembered) if previous}
                    checked = checked.with_masks(memory.recall(request.image_id, wanted))
            try:
                predictions = decode(
                    self.model, embeddings, checked.prompts, limits=self.settings.prompt_limits, timer=timer
                )
            except PromptError as error:  # a coordinate outside the image: only now is its size known
                raise invalid_prompt(error) from error
            objects = [object_result(checked, i, p, timer, budget) for i, p in enumerate(predictions)]
            answered = zip(checked.object_keys, predictions, strict=True)
            keyed = [(key, p.low_res_logits[remembered_index(checked, p)]) for key, p in answered if key]
            if keyed:
                with timer.stage("remember"):
                    memory.remember(request.image_id, keyed)
        return decoder_pb2.SegmentResponse(objects=objects, **self._answered(request, size, timer))

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

    def _embeddings(self, store: ValueStore, image_id: str, timer: StageTimer) -> tuple[ImageEmbeddings, Outcome]:
        """(embeddings, where from: LOCAL or REDIS): the local cache, else Redis, converted once to what the
        decoder takes (`Sam3Model.decoder_embeddings`). NOT_FOUND tells the client to Encode.

        The local cache is keyed by the value's store key, so tenants never share a local copy either.
        """
        with timer.stage("fetch"):
            embeddings, outcome = self.cache.fetch(
                store, self._embeddings_kind, image_id, self.model.decoder_embeddings
            )
        metrics.CACHE_LOOKUPS.labels(outcome).inc()
        if embeddings is None:
            raise not_encoded(image_id, self.model.model_id)
        return embeddings, outcome
