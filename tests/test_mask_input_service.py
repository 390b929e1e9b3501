"""Refining from the previous mask through the services: logits sent back, or remembered by object key."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

import references
import refine_references
from sam3_client import Client, Deadlines, ObjectPrompt, Reason, Sam3Error
from sam3_client._messages import mask_input
from sam3_client.proto import decoder_pb2, decoder_pb2_grpc
from sam3_core import graphs
from sam3_core.model import Sam3Model
from service_stack import Stack, running


@pytest.fixture(scope="module")
def stack(redis_url: str) -> Iterator[Stack]:
    with running(redis_url, prefix=f"test-{uuid.uuid4().hex[:8]}") as stack:
        yield stack


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.target, deadlines=Deadlines(segment=60.0)) as client:
        yield client


def second_prompt(reference: refine_references.RefineReference, **fields: object) -> ObjectPrompt:
    second = reference.second
    return ObjectPrompt(second.get("points", ()), second.get("labels"), second.get("box"), **fields)  # type: ignore[arg-type]


def assert_matches(obj, expected: references.Reference) -> None:
    np.testing.assert_allclose(obj.iou_scores, expected.iou_scores[0], atol=references.SCORE_TOLERANCE)
    assert obj.best_index == int(np.argmax(expected.iou_scores[0]))
    for mask in obj.masks:
        assert references.agreement(mask.mask, expected.masks[0, mask.index]) >= references.MIN_MASK_AGREEMENT


@pytest.mark.parametrize(("image", "case"), refine_references.all_cases(), ids=lambda v: str(v))
def test_sent_logits_match_transformers(client: Client, image: str, case: str) -> None:
    reference = refine_references.load(image, case)
    prompt = second_prompt(reference, mask_input=reference.mask_input)
    (obj,) = client.segment_objects(references.IMAGES_DIR / image, [prompt], mask="all").objects
    assert obj.mask_input_used
    assert_matches(obj, reference.expected)


def test_refine_sends_the_logits_it_got_back(client: Client) -> None:
    """The SDK's one-liner: segment with low_res_logits=True, then refine with more clicks."""
    reference = refine_references.load("portrait.png", "add_click")
    (added,) = reference.second["points"][len(reference.first["points"]) :]
    first = client.segment(references.IMAGES_DIR / "portrait.png", reference.first["points"], low_res_logits=True)
    second = client.refine(first.objects[0], points=[added], labels=[0])
    assert second.mask_input_used and second.prompt is not None
    assert [list(p) for p in second.prompt.points] == reference.second["points"]
    assert_matches(second, reference.expected)
    assert second.chosen_logits is not None  # it asked for logits again: refine can go on
    third = client.refine(second, points=[[50, 50]], labels=[0])
    assert third.mask_input_used and len(third.prompt.points) == 3


def test_refine_without_a_way_back_says_how(client: Client) -> None:
    first = client.segment(references.IMAGES_DIR / "landscape.jpg", [[300, 200]]).objects[0]
    with pytest.raises(ValueError, match=r"object_key=.*low_res_logits=True"):
        client.refine(first, points=[[20, 20]], labels=[0])


def raw_request(**object_fields: object) -> decoder_pb2.SegmentRequest:
    point = decoder_pb2.Point(x=10, y=10, label=decoder_pb2.POINT_LABEL_FOREGROUND)
    objects = object_fields.pop("objects", None) or [decoder_pb2.ObjectPrompt(points=[point], **object_fields)]
    return decoder_pb2.SegmentRequest(
        image_id="0" * 64,  # never fetched: every problem below is found first
        objects=objects,
        selection=decoder_pb2.MASK_SELECTION_BEST,
        mask_format=decoder_pb2.MASK_FORMAT_RLE,
    )


def logits(height: int = 288, width: int = 288, count: int = 1, data: bytes | None = None) -> decoder_pb2.MaskInput:
    payload = np.zeros((count, height, width), "<f4").tobytes() if data is None else data
    return decoder_pb2.MaskInput(logits=decoder_pb2.LowResLogits(data=payload, height=height, width=width, count=count))


NAN = np.full((288, 288), np.nan, "<f4").tobytes()
POINT = decoder_pb2.Point(x=10, y=10, label=decoder_pb2.POINT_LABEL_FOREGROUND)
BAD_REQUESTS = {
    "two maps": (dict(mask_input=logits(count=2)), "objects[0].mask_input.logits.count"),
    "another size": (dict(mask_input=logits(144, 144)), "objects[0].mask_input.logits.height"),
    "short data": (dict(mask_input=logits(data=b"\0" * 100)), "objects[0].mask_input.logits.data"),
    "NaN": (dict(mask_input=logits(data=NAN)), "objects[0].mask_input"),
    "empty mask input": (dict(mask_input=decoder_pb2.MaskInput()), "objects[0].mask_input"),
    "previous without a key": (dict(mask_input=decoder_pb2.MaskInput(previous=True)), "objects[0].mask_input.previous"),
    "a long key": (dict(object_key="k" * 129), "objects[0].object_key"),
    "one key twice": (
        dict(
            objects=[
                decoder_pb2.ObjectPrompt(points=[POINT], object_key="car"),
                decoder_pb2.ObjectPrompt(points=[POINT], object_key="car"),
            ]
        ),
        "objects[1].object_key",
    ),
    "previous alone": (
        dict(objects=[decoder_pb2.ObjectPrompt(object_key="car", mask_input=decoder_pb2.MaskInput(previous=True))]),
        "objects[0]",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_mask_inputs_are_invalid_argument_naming_the_field(stack: Stack, case: str) -> None:
    fields, field = BAD_REQUESTS[case]
    with grpc.insecure_channel(stack.target) as channel, pytest.raises(grpc.RpcError) as failure:
        decoder_pb2_grpc.DecoderServiceStub(channel).Segment(raw_request(**fields), timeout=30)
    error = Sam3Error.from_rpc(failure.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.reason == Reason.INVALID_PROMPT
    assert error.metadata["field"] == field, error.message


def test_a_folder_without_the_mask_prompt_graph_is_a_failed_precondition(redis_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(references.MODEL_DIR, folder, ignore=shutil.ignore_patterns(graphs.SPLIT_MASK_FILE))
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    with running(redis_url, prefix, model=Sam3Model(folder)) as older, Client(older.target) as sam3:
        image = references.IMAGES_DIR / "tiny_17x23.png"
        assert sam3.segment(image, [[5, 5]]).mask is not None  # clicks work
        with pytest.raises(Sam3Error) as failure:
            sam3.segment(image, [[5, 5]], mask_input=np.zeros((288, 288), np.float32))
    assert failure.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert failure.value.reason == Reason.MASK_INPUT_NOT_SUPPORTED and "sam3 models export" in failure.value.message


def test_the_sdk_checks_what_it_can_before_sending() -> None:
    with pytest.raises(ValueError, match="one mask's low-res logits"):
        mask_input(ObjectPrompt([[1, 1]], mask_input=np.zeros((3, 288, 288), np.float32)))
    with pytest.raises(ValueError, match="needs the object_key"):
        mask_input(ObjectPrompt([[1, 1]], mask_input="previous"))
    with pytest.raises(ValueError, match="NaN"):
        mask_input(ObjectPrompt([[1, 1]], mask_input=np.full((288, 288), np.nan)))
    sent = mask_input(ObjectPrompt([[1, 1]], mask_input=np.ones((1, 288, 288), np.float64)))
    assert sent.logits.count == 1 and len(sent.logits.data) == 288 * 288 * 4


def test_an_object_key_remembers_the_mask_for_any_replica(redis_url: str) -> None:
    """Two decoders sharing the store: the first answers an object with a key, the second refines it with
    `previous`; the same answer as sending the first answer's logits back."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    image = references.IMAGES_DIR / "landscape.jpg"
    reference = refine_references.load("landscape.jpg", "add_click")
    with (
        running(redis_url, prefix) as one,
        running(redis_url, prefix) as other,
        Client(one.target) as first_replica,
        Client(other.target) as second_replica,
    ):
        first = first_replica.segment(image, reference.first["points"], object_key="car", low_res_logits=True)
        remembered = second_replica.segment_objects(
            image, [second_prompt(reference, mask_input="previous", object_key="car")], mask="all"
        ).objects[0]
        sent = second_replica.segment_objects(
            image, [second_prompt(reference, mask_input=first.objects[0].chosen_logits)], mask="all"
        ).objects[0]
    assert remembered.mask_input_used and sent.mask_input_used
    np.testing.assert_allclose(remembered.iou_scores, sent.iou_scores, atol=1e-6)
    assert_matches(remembered, reference.expected)


def test_refine_by_object_key_sends_only_the_key(client: Client, stack: Stack) -> None:
    reference = refine_references.load("exif_rotated.jpg", "add_click")
    (added,) = reference.second["points"][len(reference.first["points"]) :]
    first = client.segment(references.IMAGES_DIR / "exif_rotated.jpg", reference.first["points"], object_key="tree")
    assert first.objects[0].low_res_logits is None
    second = client.refine(first.objects[0], points=[added], labels=[0])
    assert second.mask_input_used and second.prompt.mask_input == "previous"
    assert_matches(second, reference.expected)


def test_nothing_remembered_means_the_clicks_alone_and_says_so(client: Client, stack: Stack) -> None:
    """A key never answered (or expired: the store's TTL deleted it) is not an error: the object is decoded
    from its clicks, and mask_input_used is false."""
    image = references.IMAGES_DIR / "portrait.png"
    prompt = ObjectPrompt([[240, 320]], mask_input="previous", object_key=f"never-{uuid.uuid4().hex}")
    (obj,) = client.segment_objects(image, [prompt]).objects
    (plain,) = client.segment_objects(image, [ObjectPrompt([[240, 320]])]).objects
    assert not obj.mask_input_used
    assert obj.iou_scores == plain.iou_scores


def test_remembered_masks_expire_and_stay_within_their_tenant(stack: Stack) -> None:
    from decoder_service.mask_memory import MaskMemory

    logits = np.linspace(-5, 5, 288 * 288, dtype=np.float32).reshape(288, 288)
    image_id = "a" * 64
    ours = MaskMemory(stack.store.for_tenant("ours"), (288, 288), seconds=30)
    theirs = MaskMemory(stack.store.for_tenant("theirs"), (288, 288), seconds=30)
    ours.remember(image_id, [("car", logits)])
    (found,) = ours.recall(image_id, {0: "car"}).values()
    assert np.array_equal(found, logits)
    assert theirs.recall(image_id, {0: "car"}) == {}
    assert ours.recall("b" * 64, {0: "car"}) == {}  # another image's object of the same name
    key = ours.key(image_id, "car")
    assert 0 < stack.store.connection.client.ttl(key) <= 30
    assert "car" not in key  # the key's text never reaches Redis
