"""The decoder's concept path: SegmentConcept requests checked, budgeted and answered from shared caches.

A concept query needs two inputs besides its prompt, both kept where every replica finds them:
- the image's detector features, which the encoder stored next to the tracker's embeddings from the same
  trunk run (kind "det"; the decoder's local LRU holds them after the first query on a replica);
- the phrase's text features, keyed by the sha256 of its token ids (kind "txt"): the text encoder runs
  once per phrase per fleet, then every replica reads them from Redis or its own small LRU.

Requests are checked in full before anything is fetched (`concept_plan`), and a concept decoder run
takes one of a few slots (`ConceptSlots`): on a CPU one query costs seconds, so they may never hold every
handler thread. The answer is budgeted and assembled in decoder_service.concept_answer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import grpc
import numpy as np

from decoder_service.fields import check_image_id, invalid_prompt, require_enum
from sam3_client.proto import decoder_pb2
from sam3_core.concept import ConceptModel, Exemplar, TextFeatures, prompt_phrase
from sam3_core.embeddings import ImageEmbeddings
from sam3_core.prompts import PromptError, check_box, check_box_inside
from sam3_serving import metrics
from sam3_serving.errors import Reason, ServiceError
from sam3_serving.store import TEXT_KIND, EmbeddingStore, StoreUnavailableError

__all__ = ["Concept", "ConceptLimits", "ConceptPlan", "ConceptSlots", "TextFeatureCache", "concept_plan"]

MODEL_QUERIES = 200  # SAM3's DETR decoder: at most this many instances per concept
_TEXT_SIZE = (1, 1)  # text features are stored as a value with a nominal 1 x 1 "image"


@dataclass(frozen=True)
class ConceptLimits:
    """Bounds on one SegmentConcept request and on the concept work running at once."""

    max_concepts: int = 8  # concepts per request: each is one concept decoder run
    max_exemplars: int = 16  # exemplar boxes per concept
    max_text_chars: int = 256
    max_concurrent: int = 1  # concept decoder runs at once; more get OVERLOADED (clicks keep their threads)
    text_cache_entries: int = 1024  # phrases in the local LRU (32 KB each at full size)


@dataclass(frozen=True)
class Concept:
    text: str | None
    exemplars: tuple[Exemplar, ...]


@dataclass(frozen=True)
class ConceptPlan:
    """A SegmentConcept request checked in full: what to run and what to return."""

    concepts: tuple[Concept, ...]
    threshold: float
    mask_format: int
    label_image: bool
    max_instances: int | None  # None: every instance found (the model has MODEL_QUERIES)

    @property
    def instances_cap(self) -> int:
        return MODEL_QUERIES if self.max_instances is None else min(self.max_instances, MODEL_QUERIES)

    @property
    def computes_masks(self) -> bool:
        return self.mask_format != decoder_pb2.MASK_FORMAT_NONE or self.label_image


def concept_plan(request: decoder_pb2.SegmentConceptRequest, limits: ConceptLimits) -> ConceptPlan:
    """Everything that can be wrong with a request without its image; INVALID_PROMPT naming the field."""
    try:
        check_image_id(request.image_id)
        if not request.concepts:
            raise PromptError("concepts", "give at least one concept (a phrase and/or exemplar boxes)")
        if len(request.concepts) > limits.max_concepts:
            raise PromptError("concepts", f"{len(request.concepts)} concepts, over this worker's {limits.max_concepts}")
        concepts = tuple(_concept(f"concepts[{i}]", c, limits) for i, c in enumerate(request.concepts))
        if not request.HasField("threshold"):
            raise PromptError("threshold", "not set; send a score threshold in [0, 1] (SAM3's usual: 0.5)")
        if not 0.0 <= request.threshold <= 1.0:  # NaN fails too
            raise PromptError("threshold", f"{request.threshold} is not within [0, 1]")
        require_enum("mask_format", decoder_pb2.MaskFormat, request.mask_format)
    except PromptError as error:
        raise invalid_prompt(error) from error
    max_instances = request.max_instances if request.HasField("max_instances") else None
    return ConceptPlan(concepts, float(request.threshold), request.mask_format, request.label_image, max_instances)


def _concept(field: str, concept: decoder_pb2.ConceptPrompt, limits: ConceptLimits) -> Concept:
    text = concept.text if concept.text.strip() else None
    if concept.text and text is None:
        raise PromptError(f"{field}.text", "only whitespace; send a noun phrase, or leave it empty with exemplars")
    if len(concept.text) > limits.max_text_chars:
        raise PromptError(f"{field}.text", f"{len(concept.text)} characters, over {limits.max_text_chars}")
    if text is None and not concept.exemplars:
        raise PromptError(field, "a concept needs a phrase, exemplar boxes, or both")
    if len(concept.exemplars) > limits.max_exemplars:
        raise PromptError(f"{field}.exemplars", f"{len(concept.exemplars)} boxes, over {limits.max_exemplars}")
    exemplars = []
    for j, exemplar in enumerate(concept.exemplars):
        where = f"{field}.exemplars[{j}]"
        require_enum(f"{where}.label", decoder_pb2.ExemplarLabel, exemplar.label)
        if not exemplar.HasField("box"):
            raise PromptError(f"{where}.box", "missing")
        box = (exemplar.box.x1, exemplar.box.y1, exemplar.box.x2, exemplar.box.y2)
        check_box(f"{where}.box", box)
        exemplars.append(Exemplar(box, exemplar.label == decoder_pb2.EXEMPLAR_LABEL_POSITIVE))
    return Concept(text, tuple(exemplars))


def check_exemplars_inside(plan: ConceptPlan, size: tuple[int, int]) -> None:
    """Exemplar boxes within the image (known only once its features are fetched)."""
    try:
        for i, concept in enumerate(plan.concepts):
            for j, exemplar in enumerate(concept.exemplars):
                check_box_inside(f"concepts[{i}].exemplars[{j}].box", exemplar.box, size)
    except PromptError as error:
        raise invalid_prompt(error) from error


class ConceptSlots:
    """At most `count` concept decoder runs at once; a caller that finds none free is OVERLOADED at once."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._slots = threading.BoundedSemaphore(count)

    @contextmanager
    def taken(self) -> Iterator[None]:
        if not self._slots.acquire(blocking=False):
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"concept decoder busy: {self.count} concept queries already running (--max-concurrent-concepts); "
                "retry with backoff or add decoder replicas",
                Reason.OVERLOADED,
                limit="max_concurrent_concepts",
            )
        try:
            yield
        finally:
            self._slots.release()


class TextFeatureCache:
    """Text features by phrase: this process's LRU, else the store, else the text encoder (then stored).

    Keyed by the sha256 of the phrase's token ids (`ConceptModel.text_key`) under the caller's store
    (tenant included), so each tenant's phrases stay its own. A store failure is not fatal here: the
    features are recomputed (a few ms to ~1 s), the query still answers.
    """

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._items: OrderedDict[str, TextFeatures] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, concepts: ConceptModel, store: EmbeddingStore, text: str | None) -> TextFeatures:
        phrase = prompt_phrase(text)
        text_id = concepts.text_key(phrase)
        text_store = store.for_kind(TEXT_KIND, _text_shapes(concepts), dtype="float32")
        key = text_store.key(text_id)
        with self._lock:
            cached = self._items.get(key)
            if cached is not None:
                self._items.move_to_end(key)
        if cached is not None:
            metrics.CONCEPT_LOOKUPS.labels(kind="text", result="local").inc()
            return cached
        features, result = self._fetch_or_encode(concepts, text_store, text_id, phrase)
        metrics.CONCEPT_LOOKUPS.labels(kind="text", result=result).inc()
        with self._lock:
            self._items[key] = features
            while len(self._items) > self.entries:
                self._items.popitem(last=False)
        return features

    @staticmethod
    def _fetch_or_encode(
        concepts: ConceptModel, text_store: EmbeddingStore, text_id: str, phrase: str
    ) -> tuple[TextFeatures, str]:
        with suppress(StoreUnavailableError):
            lookup = text_store.get(text_id)
            if lookup.embeddings is not None:
                values, mask = lookup.embeddings.tensors
                return TextFeatures(np.asarray(values, np.float32), np.asarray(mask) > 0.5), "redis"
        features = concepts.encode_text(phrase)
        value = ImageEmbeddings((features.features, features.mask.astype(np.float32)), _TEXT_SIZE, text_store.model_id)
        with suppress(StoreUnavailableError):
            text_store.put(text_id, value, announce=False)  # content-addressed: never rewritten
        return features, "encoded"


def _text_shapes(concepts: ConceptModel) -> list[tuple[int | str, ...]]:
    """What a stored text value must hold: [1, 32, C] features and the [1, 32] mask."""
    features = concepts.text_encoder.get_outputs()[0].shape
    return [tuple(features), tuple(features[:2])]
