"""Concept prompts through the services: SegmentConcept on the unified tiny folder, real gRPC, real Redis.

Every query costs a second or more on a CPU (the concept decoder keeps SAM3's real feature sizes), so each
test asks only what it must; the oracle cases run once each, every one in the next mask format.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Iterator
from functools import cache, partial

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

import concept_references as refs
import references
from decoder_service.budget import ResponseLimits
from decoder_service.concept_answer import best_instances, concept_budget
from decoder_service.concepts import Concept, ConceptPlan, ConceptSlots
from decoder_service.servicer import DecoderSettings
from sam3_cli.main import main
from sam3_cli.workers import DECODER, ENCODER
from sam3_client import AsyncClient, Client, Reason, Sam3Error
from sam3_client.proto import decoder_pb2, decoder_pb2_grpc
from sam3_core.concept import ConceptInstance
from sam3_core.model import Sam3Model
from sam3_serving.errors import ServiceError
from sam3_serving.store import DETECTOR_FEATURES
from service_stack import Stack, running
from test_service_behaviour import new_image

IMAGE = "landscape.jpg"
FORMATS = ("rle", "png", "bits", "none", "polygon")
QUERIES = 200  # the concept decoder's queries (ConceptModel.queries reads them from the graph)


@cache
def unified_model() -> Sam3Model:
    return Sam3Model(refs.MODEL_DIR)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def model_runs(worker: str) -> float:
    return counter("sam3_model_runs_total", worker=worker)


@pytest.fixture(scope="module")
def stack(redis_url: str) -> Iterator[Stack]:
    with running(redis_url, f"concept-{uuid.uuid4().hex[:8]}", model=unified_model()) as started:
        yield started


def image_bytes(name: str = IMAGE) -> bytes:
    return (refs.IMAGES_DIR / name).read_bytes()


def assert_matches(answer, reference: refs.ConceptReference, mask_format: str) -> None:
    """The oracle's bar: same instances, scores within 1e-4, boxes within 0.5 px, masks >= 99.9 %."""
    assert len(answer.instances) == len(reference.scores), reference.id
    assert abs(answer.presence - reference.presence) <= refs.SCORE_TOLERANCE
    expected = zip(reference.scores, reference.boxes, reference.masks, strict=True)
    for instance, (score, box, mask) in zip(answer.instances, expected, strict=True):
        assert abs(instance.score - score) <= refs.SCORE_TOLERANCE
        np.testing.assert_allclose(instance.box, box, atol=refs.BOX_TOLERANCE_PIXELS)
        if mask_format == "none":
            assert instance.mask is None and instance.area == 0
        else:
            assert instance.encoded.format == mask_format
            assert references.agreement(instance.mask, mask) >= refs.MIN_MASK_AGREEMENT
            assert instance.area == int(instance.mask.sum())


@pytest.mark.parametrize("image", list(refs.index()))
def test_every_oracle_case_matches_through_the_services_in_every_format(stack: Stack, image: str) -> None:
    """Each (image, case) in the next mask format (so every image and every format are seen), with the
    label image on the first case of each image."""
    offset = list(refs.index()).index(image)
    with Client(stack.target) as client:
        for n, case in enumerate(refs.index()[image]["cases"]):
            mask_format = FORMATS[(offset + n) % len(FORMATS)]
            for reference in refs.load(image, case):
                query = reference.query
                result = client.segment_concept(
                    image_bytes(image),
                    query.get("text"),
                    exemplars=[(tuple(box), positive) for box, positive in reference.exemplars],
                    threshold=query["threshold"],
                    mask_format=mask_format,
                    polygon_tolerance=0,  # polygons: the exact outline (the others ignore it)
                    label_image=(n == 0),
                )
                (answer,) = result.concepts
                assert_matches(answer, reference, mask_format)
                assert (result.width, result.height) == (reference.width, reference.height)
                if n == 0:  # the label image: instance k where its mask is, higher score on overlaps
                    labels = answer.label_image
                    assert labels is not None and labels.shape == (reference.height, reference.width)
                    assert set(np.unique(labels)) <= set(range(len(answer.instances) + 1))
                    for k, instance in enumerate(answer.instances, start=1):
                        if mask_format != "none":
                            assert np.all(instance.mask[labels == k])


def test_one_encode_serves_clicks_and_phrases_across_workers_and_a_phrase_is_encoded_once(redis_url: str) -> None:
    """An encoder, two decoders, one Redis: the image is encoded once; the phrase's text features are
    computed once and read from the store by the other replica."""
    prefix = f"mixed-{uuid.uuid4().hex[:8]}"
    data = new_image(seed=71)
    encodes_before = model_runs("encoder")
    text_encoded = counter("sam3_concept_lookups_total", kind="text", result="encoded")
    text_from_store = counter("sam3_concept_lookups_total", kind="text", result="redis")
    model = unified_model()
    with (
        running(redis_url, prefix, {ENCODER}, model=model) as encoder,
        running(redis_url, prefix, {DECODER}, model=model) as first,
        running(redis_url, prefix, {DECODER}, model=model) as second,
    ):
        with Client(encoder_target=encoder.target, decoder_target=first.target) as client:
            click = client.segment(data, points=[[30, 40]])
            assert click.encoded is not None and not click.encoded.cached
            found = client.segment_concept(click.image_id, "a dog", threshold=0.0, max_instances=2, mask_format="none")
            assert found.encoded is None and len(found.instances) == 2  # the click's encode served it
        with Client(encoder_target=encoder.target, decoder_target=second.target) as client:
            again = asyncio.run(_async_concept(encoder.target, second.target, click.image_id))
            assert again.encoded is None and len(again.instances) == 2
            assert [i.score for i in again.instances] == pytest.approx([i.score for i in found.instances], abs=1e-6)
            assert client.segment(click.image_id, points=[[5, 5]]).encoded is None
    assert model_runs("encoder") - encodes_before == 1
    assert counter("sam3_concept_lookups_total", kind="text", result="encoded") - text_encoded == 1
    assert counter("sam3_concept_lookups_total", kind="text", result="redis") - text_from_store == 1


async def _async_concept(encoder_target: str, decoder_target: str, image_id: str):
    async with AsyncClient(encoder_target=encoder_target, decoder_target=decoder_target) as client:
        return await client.segment_concept(image_id, "a dog", threshold=0.0, max_instances=2, mask_format="none")


def test_an_image_encoded_without_concept_features_is_encoded_again_once(stack: Stack) -> None:
    data = new_image(seed=72)
    with Client(stack.target) as client:
        image_id = client.encode(data).image_id
        stack.store.delete(DETECTOR_FEATURES, image_id)  # evicted by Redis, or stored by a click-only encoder
        result = client.segment_concept(data, "cat", threshold=1.0, mask_format="none")
        assert result.encoded is not None and not result.encoded.cached
        assert result.concepts[0].instances == [] and 0.0 <= result.concepts[0].presence <= 1.0
        with pytest.raises(Sam3Error) as failure:  # only the id of an image nobody encoded: NOT_FOUND, say so
            client.segment_concept("0" * 64, "cat")
        assert failure.value.code == grpc.StatusCode.NOT_FOUND and "pass the image itself" in failure.value.message


def concept_request(**fields) -> decoder_pb2.SegmentConceptRequest:
    request = decoder_pb2.SegmentConceptRequest(
        image_id="0" * 64,
        concepts=[decoder_pb2.ConceptPrompt(text="a dog")],
        threshold=0.5,
        mask_format=decoder_pb2.MASK_FORMAT_RLE,
    )
    for name, value in fields.items():
        if value is None:
            request.ClearField(name)
        elif name == "concepts":
            del request.concepts[:]
            request.concepts.extend(value)
        else:
            setattr(request, name, value)
    return request


def box(x1: float, y1: float, x2: float, y2: float) -> decoder_pb2.Box:
    return decoder_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2)


POSITIVE = decoder_pb2.EXEMPLAR_LABEL_POSITIVE


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"image_id": "../etc"}, "image_id"),
        ({"concepts": []}, "concepts"),
        ({"concepts": [decoder_pb2.ConceptPrompt()] * 9}, "concepts"),
        ({"concepts": [decoder_pb2.ConceptPrompt()]}, "concepts[0]"),
        ({"concepts": [decoder_pb2.ConceptPrompt(text="   ")]}, "concepts[0].text"),
        ({"concepts": [decoder_pb2.ConceptPrompt(text="x" * 300)]}, "concepts[0].text"),
        (
            {"concepts": [decoder_pb2.ConceptPrompt(exemplars=[decoder_pb2.Exemplar(box=box(1, 1, 5, 5))])]},
            "concepts[0].exemplars[0].label",
        ),
        (
            {
                "concepts": [
                    decoder_pb2.ConceptPrompt(exemplars=[decoder_pb2.Exemplar(box=box(5, 1, 1, 5), label=POSITIVE)])
                ]
            },
            "concepts[0].exemplars[0].box",
        ),
        (
            {"concepts": [decoder_pb2.ConceptPrompt(exemplars=[decoder_pb2.Exemplar(label=POSITIVE)])]},
            "concepts[0].exemplars[0].box",
        ),
        ({"threshold": None}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"mask_format": 0}, "mask_format"),
        ({"mask_format": 42}, "mask_format"),
    ],
)
def test_bad_concept_requests_are_invalid_argument_naming_the_field_before_any_fetch(
    stack: Stack, fields: dict, field: str
) -> None:
    with grpc.insecure_channel(stack.target) as channel, pytest.raises(grpc.RpcError) as failure:
        decoder_pb2_grpc.DecoderServiceStub(channel).SegmentConcept(concept_request(**fields), timeout=10)
    error = Sam3Error.from_rpc(failure.value)
    assert (error.code, error.reason, error.metadata.get("field")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_PROMPT,
        field,
    )


def test_a_tracker_only_worker_says_it_cannot_do_concepts(redis_url: str) -> None:
    with (
        running(redis_url, f"tracker-{uuid.uuid4().hex[:8]}") as tracker_only,
        Client(tracker_only.target) as client,
        pytest.raises(Sam3Error) as failure,
    ):
        client.segment_concept(image_bytes("tiny_17x23.png"), "a dog")
    assert failure.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.value.reason == Reason.CONCEPTS_NOT_SUPPORTED and "sam3 models export" in failure.value.message
    lacks = "lacks text_encoder.onnx, exemplar_encoder.onnx, concept_decoder.onnx, tokenizer.json"
    assert lacks in failure.value.message


def test_a_query_that_could_return_too_many_masks_is_refused_before_the_decoder_runs(redis_url: str) -> None:
    limits = ResponseLimits(max_mask_pixels=640 * 480 * 10)  # ten full-size masks of the test image
    settings = {"decoder": DecoderSettings(responses=limits)}
    with (
        running(redis_url, f"budget-{uuid.uuid4().hex[:8]}", model=unified_model(), **settings) as small,
        Client(small.target) as client,
    ):
        image_id = client.encode(image_bytes()).image_id
        runs = model_runs("decoder")
        with pytest.raises(Sam3Error) as failure:
            client.segment_concept(image_id, ["a dog", "cat"], max_instances=6)  # 12 possible masks
        assert failure.value.reason == Reason.RESPONSE_TOO_LARGE
        assert failure.value.metadata["limit"] == "max_mask_megapixels"
        assert model_runs("decoder") == runs  # refused before the concept decoder ran
        # Fewer possible instances fit.
        assert client.segment_concept(image_id, "a dog", max_instances=10, threshold=0.0).instances


def test_without_max_instances_the_instances_found_are_budgeted_before_any_mask(redis_url: str) -> None:
    limits = ResponseLimits(max_mask_pixels=640 * 480 * 10)  # ten full-size masks of the test image
    with (
        running(
            redis_url, f"found-{uuid.uuid4().hex[:8]}", model=unified_model(), decoder=DecoderSettings(responses=limits)
        ) as small,
        Client(small.target) as client,
    ):
        image_id = client.encode(image_bytes()).image_id
        with pytest.raises(Sam3Error) as failure:  # threshold 0: all 200 queries are instances
            client.segment_concept(image_id, "a dog", threshold=0.0)
        assert failure.value.reason == Reason.RESPONSE_TOO_LARGE and "found 200 instances" in failure.value.message
        # What a real query finds (a handful) fits, on any image size the budget allows per mask.
        assert client.segment_concept(image_id, "a dog", threshold=0.5).concepts[0].presence >= 0.0


def test_one_budget_counts_the_worst_case_and_then_what_was_found() -> None:
    """Packed bits have a size fixed by the image: refused from the worst case, or from the instances found
    before any mask; content-sized formats are refused on pixels only, and only from what was found."""

    def plan(fmt: int, max_instances: int | None = None, concepts: int = 1) -> ConceptPlan:
        return ConceptPlan((Concept("a dog", ()),) * concepts, 0.5, fmt, False, max_instances)

    def refusal(call: Callable[[], object]) -> str | None:
        try:
            call()
        except ServiceError as error:
            assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason == Reason.RESPONSE_TOO_LARGE
            return error.metadata["limit"]
        return None

    size, limits = (1000, 1000), ResponseLimits(max_response_bytes=1_000_000, max_mask_pixels=10_000_000)
    bits, rle, none = decoder_pb2.MASK_FORMAT_PACKED_BITS, decoder_pb2.MASK_FORMAT_RLE, decoder_pb2.MASK_FORMAT_NONE
    assert refusal(lambda: concept_budget(plan(bits, 8), size, limits, QUERIES)) is None  # 8 x 125 kB
    assert refusal(lambda: concept_budget(plan(bits, 5, concepts=2), size, limits, QUERIES)) == "max_message_bytes"
    assert refusal(lambda: concept_budget(plan(rle, 11), size, limits, QUERIES)) == "max_mask_megapixels"  # 11 MP
    nothing_full_size = plan(none, 200, concepts=8)
    assert refusal(lambda: concept_budget(nothing_full_size, size, limits, QUERIES)) is None
    # max_instances above what the model can find counts the model's queries (here a model of 8)
    assert refusal(lambda: concept_budget(plan(bits, 500), size, limits, 8)) is None
    budget = concept_budget(plan(bits), size, limits, QUERIES)  # no max_instances: nothing known before the run
    budget.reserve(5, "concepts[0] found 5 instances", mask_format=bits, full_size=True)
    found_more = partial(budget.reserve, 4, "concepts[1] found 4 instances", mask_format=bits, full_size=True)
    assert refusal(found_more) == "max_message_bytes"  # 9 x 125 kB in all


def test_the_best_instances_are_kept_in_query_order() -> None:
    def instance(query: int, score: float) -> ConceptInstance:
        return ConceptInstance(query, score, 0.9, (0.0, 0.0, 1.0, 1.0), np.zeros((2, 2), np.float32), (4, 4))

    found = [instance(0, 0.6), instance(1, 0.9), instance(2, 0.6), instance(3, 0.7), instance(4, 0.95)]
    assert [i.query for i in best_instances(found, 3)] == [1, 3, 4]
    assert [i.query for i in best_instances(found, 4)] == [0, 1, 3, 4]  # a tie keeps the earlier query
    assert best_instances(found, 200) == found
    assert [i.query for i in best_instances([instance(0, 0.5), instance(1, 0.5)], 1)] == [0]


def test_concept_slots_refuse_at_once_when_every_slot_is_busy() -> None:
    slots = ConceptSlots(1)
    with slots.taken(), pytest.raises(ServiceError) as failure, slots.taken():
        pass
    assert failure.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and failure.value.reason == Reason.OVERLOADED
    with slots.taken():  # released again
        pass


def test_the_cli_finds_concepts_through_the_service(stack: Stack, tmp_path, capsys) -> None:
    output = tmp_path / "instances.png"
    code = main(
        [
            *("segment", "-i", str(refs.IMAGES_DIR / IMAGE), "--text", "a dog", "--threshold", "0.3"),
            *("--server", stack.target, "-o", str(output)),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and output.exists()
    assert re.search(r"^'a dog': presence 0\.\d{4}, \d+ instance\(s\) above 0\.3$", printed, re.M)
