"""The decoder's concept path: SegmentConcept requests checked, budgeted and answered from shared caches.

A concept query needs two inputs besides its prompt, both kept where every replica finds them:
- the image's detector features, which the encoder stored next to the tracker's embeddings from the same
  trunk run (`DETECTOR_FEATURES`; the decoder's local LRU holds them after the first query on a replica);
- the phrase's text features, keyed by the sha256 of its token ids (`TEXT_FEATURES`): the text encoder
  runs once per phrase per fleet, then every replica reads them from Redis or its local LRU.

Requests are checked in full before anything is fetched (`concept_plan`), and a concept decoder run
takes one of a few slots (`ConceptSlots`): on a CPU one query costs seconds, so they may never hold every
handler thread. The answer is budgeted and assembled in decoder_service.concept_answer.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass

from decoder_service.busy_slots import BusySlots
from decoder_service.cache import LocalCache
from decoder_service.fields import check_image_id, invalid_prompt, polygon_tolerance, require_enum
from sam3_client.proto import decoder_pb2
from sam3_core.concept import ConceptModel, Exemplar, TextFeatures, prompt_phrase
from sam3_core.polygons import DEFAULT_TOLERANCE
from sam3_core.prompts import PromptError, check_box, check_box_inside
from sam3_serving import metrics
from sam3_serving.outcome import Outcome
from sam3_serving.store import TEXT_FEATURES, StoreUnavailableError, ValueStore

__all__ = ["Concept", "ConceptLimits", "ConceptPlan", "ConceptSlots", "TextFeatureCache", "concept_plan"]


@dataclass(frozen=True)
class ConceptLimits:
    """Bounds on one SegmentConcept request and on the concept work running at once."""

    max_concepts: int = 8  # concepts per request: each is one concept decoder run
    max_exemplars: int = 16  # exemplar boxes per concept
    max_text_chars: int = 256
    max_concurrent: int = 1  # concept decoder runs at once; more get OVERLOADED (clicks keep their threads)


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
    max_instances: int | None  # None: every instance found (at most the model's queries)
    polygon_tolerance: float = DEFAULT_TOLERANCE  # pixels, for MASK_FORMAT_POLYGON

    def instances_cap(self, available: int) -> int:
        """How many of `available` instances (the model's queries, or those found) the answer keeps."""
        return available if self.max_instances is None else min(self.max_instances, available)

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
        tolerance = polygon_tolerance(request)
    except PromptError as error:
        raise invalid_prompt(error) from error
    max_instances = request.max_instances if request.HasField("max_instances") else None
    threshold = float(request.threshold)
    return ConceptPlan(concepts, threshold, request.mask_format, request.label_image, max_instances, tolerance)


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


class ConceptSlots(BusySlots):
    """At most `count` concept decoder runs at once; a caller that finds none free is OVERLOADED at once."""

    def __init__(self, count: int) -> None:
        super().__init__(
            count,
            "concept decoder busy: {count} concept queries already running (--max-concurrent-concepts)",
            "max_concurrent_concepts",
        )


class TextFeatureCache:
    """Text features by phrase: the decoder's local LRU (shared with the other stored values), else the
    store, else the text encoder (then stored).

    Keyed by the sha256 of the phrase's token ids (`ConceptModel.text_key`) under the caller's store
    (tenant included), so each tenant's phrases stay its own; concurrent queries for a new phrase run the
    text encoder once. A store failure is not fatal here: the features are recomputed (a few ms to
    ~1 s), the query still answers.
    """

    def __init__(self, local: LocalCache) -> None:
        self.local = local

    def get(self, concepts: ConceptModel, store: ValueStore, text: str | None) -> TextFeatures:
        phrase = prompt_phrase(text)
        text_id = concepts.text_key(phrase)
        kind = TEXT_FEATURES.expecting(_text_shapes(concepts))

        def load() -> tuple[TextFeatures, Outcome]:
            with suppress(StoreUnavailableError):
                features = store.get(kind, text_id).value
                if features is not None:
                    return features, Outcome.REDIS
            features = concepts.encode_text(phrase)
            with suppress(StoreUnavailableError):
                store.put(kind, text_id, features)  # content-addressed: never rewritten, never announced
            return features, Outcome.ENCODED

        features, outcome = self.local.get_or_load(store.key(kind, text_id), load, hit=Outcome.LOCAL)
        metrics.CONCEPT_LOOKUPS.labels(kind="text", result=outcome).inc()
        return features


def _text_shapes(concepts: ConceptModel) -> list[tuple[int | str, ...]]:
    """What a stored text value must hold: [1, 32, C] features and the [1, 32] mask."""
    features = concepts.text_encoder.get_outputs()[0].shape
    return [tuple(features), tuple(features[:2])]
