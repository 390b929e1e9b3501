"""The whole service against transformers' references: real gRPC, real Redis, every case and mask format."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest

import references
from sam3_client import ChannelSettings, Client, Deadlines, ObjectPrompt
from sam3_client._messages import segment_request, segment_result
from sam3_client.proto import decoder_pb2_grpc
from service_stack import Stack, running


@pytest.fixture(scope="module")
def stack(redis_url: str) -> Iterator[Stack]:
    with running(redis_url, prefix=f"test-{uuid.uuid4().hex[:8]}") as stack:
        yield stack


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[Client]:
    # Nine 12-megapixel masks per call take ~10 s on a loaded 2-core machine: correctness, not speed, here.
    with Client(stack.target, deadlines=Deadlines(segment=120.0)) as client:
        for image in references.index():
            client.encode(references.IMAGES_DIR / image)
        yield client


def objects_of(reference: references.Reference) -> list[ObjectPrompt]:
    return [ObjectPrompt(o.get("points", ()), o.get("labels"), o.get("box")) for o in reference.objects]


def assert_result_matches(result, reference: references.Reference) -> None:
    assert (result.height, result.width) == (reference.height, reference.width)
    assert len(result.objects) == len(reference.objects)
    for k, obj in enumerate(result.objects):
        np.testing.assert_allclose(obj.iou_scores, reference.iou_scores[k], atol=references.SCORE_TOLERANCE)
        presence = 1 / (1 + np.exp(-reference.object_score_logits[k, 0]))
        assert abs(obj.presence - presence) <= references.SCORE_TOLERANCE
        assert obj.best_index == int(np.argmax(reference.iou_scores[k]))
        assert [m.index for m in obj.masks] == [0, 1, 2]
        for mask in obj.masks:
            assert references.agreement(mask.mask, reference.masks[k, mask.index]) >= references.MIN_MASK_AGREEMENT
            assert mask.area == int(mask.mask.sum())
            if mask.area:
                x, y, w, h = mask.bbox
                rows, cols = np.nonzero(mask.mask)
                assert (x, y, x + w - 1, y + h - 1) == (cols.min(), rows.min(), cols.max(), rows.max())


@pytest.mark.parametrize("mask_format", ["png", "rle", "bits"])
@pytest.mark.parametrize(("image", "case"), references.all_cases(), ids=lambda v: str(v))
def test_segment_matches_transformers(client: Client, image: str, case: str, mask_format: str) -> None:
    reference = references.load(image, case)
    image_id = client.encode(references.IMAGES_DIR / image).image_id
    result = client.segment_objects(image_id, objects_of(reference), mask="all", mask_format=mask_format)
    assert_result_matches(result, reference)


def test_segment_stream_matches_transformers(stack: Stack, client: Client) -> None:
    """One interactive session carrying every case (no object keys: nothing may be skipped)."""
    import grpc

    cases = references.all_cases()
    requests = []
    for n, (image, case) in enumerate(cases):
        image_id = client.encode(references.IMAGES_DIR / image).image_id
        requests.append(
            segment_request(
                image_id, objects_of(references.load(image, case)), mask="all", mask_format="rle", request_id=str(n)
            )
        )
    with grpc.insecure_channel(stack.target, options=ChannelSettings().options()) as channel:
        responses = list(decoder_pb2_grpc.DecoderServiceStub(channel).SegmentStream(iter(requests), timeout=120))
    assert [r.request_id for r in responses] == [str(n) for n in range(len(cases))]
    for response, (image, case) in zip(responses, cases, strict=True):
        assert not response.skipped and not response.HasField("error")
        assert_result_matches(segment_result(response), references.load(image, case))


def test_low_res_logits_match_transformers(client: Client) -> None:
    reference = references.load("portrait.png", "box_click")
    image_id = client.encode(references.IMAGES_DIR / "portrait.png").image_id
    result = client.segment_objects(image_id, objects_of(reference), mask="all", low_res_logits=True)
    logits = result.objects[0].low_res_logits
    assert logits.shape == (3, 288, 288)
    assert np.all(np.abs(logits - reference.low_res_logits[0]) <= 1e-3 + np.abs(reference.low_res_logits[0]) * 2**-10)
