"""MASK_FORMAT_POLYGON through the services: real gRPC, real Redis, the SDK reading the outline back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest

import references
from decoder_service.budget import ResponseLimits
from decoder_service.servicer import DecoderSettings
from sam3_client import Client, Deadlines, ObjectPrompt, Reason, Sam3Error
from service_stack import Stack, running

SMALL_IMAGES = [image for image, entry in references.index().items() if entry["width"] * entry["height"] < 1_000_000]
LARGE = "large_4000x3000.jpg"


@pytest.fixture(scope="module")
def stack(redis_url: str) -> Iterator[Stack]:
    with running(redis_url, prefix=f"test-{uuid.uuid4().hex[:8]}") as stack:
        yield stack


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.target, deadlines=Deadlines(segment=120.0)) as client:
        yield client


def best_masks(client: Client, image: str, case: str, **options: object) -> list:
    reference = references.load(image, case)
    objects = [ObjectPrompt(o.get("points", ()), o.get("labels"), o.get("box")) for o in reference.objects]
    result = client.segment_objects(references.IMAGES_DIR / image, objects, mask="best", **options)
    return [obj.masks[0] for obj in result.objects]


@pytest.mark.parametrize(
    ("image", "case"), [(i, c) for i, c in references.all_cases() if i in SMALL_IMAGES], ids=lambda v: str(v)
)
def test_tolerance_0_gives_every_reference_mask_back(client: Client, image: str, case: str) -> None:
    """The acceptance bar: the SDK's fill of the rings is the mask (IoU >= 0.99; here: exact), holes included."""
    reference = references.load(image, case)
    for k, mask in enumerate(best_masks(client, image, case, mask_format="polygon", polygon_tolerance=0)):
        assert mask.format == "polygon" and mask.polygons is not None and mask.polygons.tolerance == 0
        expected = reference.masks[k, mask.index]
        assert references.agreement(mask.mask, expected) >= references.MIN_MASK_AGREEMENT
        assert mask.area == int(mask.mask.sum())
        if expected.size > 10_000:
            assert any(mask.polygons.holes), "random weights make holes: the rings must keep them"


def test_area_and_box_are_the_masks_not_the_simplified_outlines(client: Client) -> None:
    (rle,) = best_masks(client, "landscape.jpg", "click", mask_format="rle")
    (outline,) = best_masks(client, "landscape.jpg", "click", mask_format="polygon", polygon_tolerance=5)
    assert (outline.area, outline.bbox) == (rle.area, rle.bbox)
    assert outline.polygons.tolerance == 5
    assert not np.array_equal(outline.mask, rle.mask)  # 5 pixels of tolerance on a speckled mask


def test_the_default_tolerance_is_one_pixel_and_simplifies(client: Client) -> None:
    (exact,) = best_masks(client, "portrait.png", "box", mask_format="polygon", polygon_tolerance=0)
    (default,) = best_masks(client, "portrait.png", "box", mask_format="polygon")
    assert default.polygons.tolerance == 1.0
    assert len(default.polygons.rings) == len(exact.polygons.rings)  # no part disappears
    assert sum(map(len, default.polygons.rings)) < sum(map(len, exact.polygons.rings))


def test_coco_polygons_and_outer_rings(client: Client) -> None:
    (mask,) = best_masks(client, "landscape.jpg", "box", mask_format="polygon", polygon_tolerance=0)
    polygons = mask.polygons
    assert len(polygons.coco) == len(polygons.rings)
    assert all(len(ring) % 2 == 0 and len(ring) >= 6 for ring in polygons.coco)
    assert len(polygons.outer) == polygons.holes.count(False)
    xs = np.concatenate([ring[:, 0] for ring in polygons.rings])
    assert xs.min() >= 0 and xs.max() <= mask.message.width  # pixel-edge coordinates


@pytest.mark.parametrize("tolerance", [-1.0, float("nan"), 101.0])
def test_a_bad_tolerance_names_the_field(stack: Stack, tolerance: float) -> None:
    import grpc

    from sam3_client.proto import decoder_pb2, decoder_pb2_grpc

    request = decoder_pb2.SegmentRequest(
        image_id="0" * 64,
        objects=[decoder_pb2.ObjectPrompt(points=[decoder_pb2.Point(x=1, y=1, label=1)])],
        selection=decoder_pb2.MASK_SELECTION_BEST,
        mask_format=decoder_pb2.MASK_FORMAT_POLYGON,
        polygon_tolerance=tolerance,
    )
    with grpc.insecure_channel(stack.target) as channel, pytest.raises(grpc.RpcError) as failure:
        decoder_pb2_grpc.DecoderServiceStub(channel).Segment(request, timeout=30)
    error = Sam3Error.from_rpc(failure.value)
    assert error.reason == Reason.INVALID_PROMPT and error.metadata["field"] == "polygon_tolerance"


def test_a_speckled_4000x3000_mask_cannot_blow_up_the_answer(redis_url: str) -> None:
    """Random weights give a speckled 12 MP mask (~500,000 corners): the budget counts its corners before
    tracing, so a worker with a smaller corner limit refuses it at once; at tolerance 0 its exact size is
    checked before tracing too; and an answer that fits costs about 4 bytes a corner, bounded by the limit."""
    image = references.IMAGES_DIR / LARGE
    corners = ResponseLimits(max_polygon_corners=100_000)
    message = ResponseLimits(max_response_bytes=1_000_000)
    for limits, limit in ((corners, "max_polygon_corners"), (message, "max_message_bytes")):
        settings = DecoderSettings(responses=limits)
        with (
            running(redis_url, prefix=f"test-{uuid.uuid4().hex[:8]}", decoder=settings) as small,
            Client(small.target, deadlines=Deadlines(segment=120.0)) as sam3,
            pytest.raises(Sam3Error) as error,
        ):
            sam3.segment(image, points=[[2000, 1500]], mask_format="polygon", polygon_tolerance=0)
        assert error.value.reason == Reason.RESPONSE_TOO_LARGE and error.value.metadata["limit"] == limit
        assert "polygon corners" in error.value.message or "an outline of" in error.value.message
    with (
        running(redis_url, prefix=f"test-{uuid.uuid4().hex[:8]}") as default,
        Client(default.target, deadlines=Deadlines(segment=120.0)) as sam3,
    ):
        (mask,) = sam3.segment(image, points=[[2000, 1500]], mask_format="polygon").objects[0].masks
        (rle,) = sam3.segment(image, points=[[2000, 1500]], mask_format="rle").objects[0].masks
    traced = sum(map(len, mask.polygons.rings))
    assert traced < ResponseLimits().max_polygon_corners
    assert mask.message.ByteSize() <= 4 * traced + 8 * len(mask.polygons.rings) + 64
    assert mask.message.ByteSize() < rle.message.ByteSize()  # at the default tolerance, smaller than RLE
    assert references.agreement(mask.mask, rle.mask) > 0.9
