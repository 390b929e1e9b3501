"""What the workers promise beyond parity: single flight, caching, errors, faults, shutdown, metrics."""

from __future__ import annotations

import io
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image
from prometheus_client import REGISTRY

from encoder_service.servicer import EncoderSettings
from sam3_cli.workers import DECODER, ENCODER
from sam3_client import Client, Reason, Sam3Error
from sam3_client.proto import decoder_pb2, decoder_pb2_grpc, encoder_pb2, encoder_pb2_grpc
from sam3_core.images import ImageLimits
from sam3_serving.outcome import Outcome
from service_stack import image_bytes, running, serve_subprocess


def new_image(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A PNG no test has encoded before (so the store cannot already hold it)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def test_concurrent_encodes_of_one_image_across_two_workers_run_the_model_once(redis_url: str) -> None:
    namespace = prefix()
    with running(redis_url, namespace, {ENCODER}) as first, running(redis_url, namespace, {ENCODER}) as second:
        data = new_image(1)
        runs_before = counter("sam3_model_runs_total", worker="encoder")
        channels = [grpc.insecure_channel(first.target), grpc.insecure_channel(second.target)]
        stubs = [encoder_pb2_grpc.EncoderServiceStub(c) for c in channels]
        with ThreadPoolExecutor(16) as pool:
            responses = list(
                pool.map(lambda n: stubs[n % 2].Encode(encoder_pb2.EncodeRequest(image=data), timeout=60), range(16))
            )
        for channel in channels:
            channel.close()
        assert counter("sam3_model_runs_total", worker="encoder") - runs_before == 1
        assert len({r.image_id for r in responses}) == 1
        assert sorted(r.cached for r in responses) == [False] + [True] * 15
        with Client(first.target) as client:
            again = client.encode(data)
        assert again.cached and (again.width, again.height) == (64, 48)


def test_local_cache_serves_repeated_prompts_without_redis(redis_server) -> None:
    with running(redis_server.url, prefix()) as stack, Client(stack.target) as client:
        data = image_bytes("landscape.jpg")
        first = client.segment(data, points=[[320, 240]])
        local_before = counter("sam3_embedding_lookups_total", result="local")
        redis_server.stop()
        again = client.segment(first.image_id, points=[[320, 240]])
        assert counter("sam3_embedding_lookups_total", result="local") == local_before + 1
        np.testing.assert_array_equal(again.objects[0].mask, first.objects[0].mask)


def test_redis_down_gives_unavailable_quickly_then_recovers(redis_server) -> None:
    with running(redis_server.url, prefix()) as stack, Client(stack.target) as client:
        redis_server.stop()
        started = time.monotonic()
        with pytest.raises(Sam3Error) as failure:
            client.segment(new_image(2), points=[[10, 10]], timeout=10)
        assert failure.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert time.monotonic() - started < 10
        redis_server.restart()
        result = client.segment(new_image(2), points=[[10, 10]])
        assert result.encoded is not None and result.objects[0].mask.shape == (48, 64)


def test_corrupted_value_is_a_miss_and_gets_re_encoded(redis_url: str) -> None:
    namespace = prefix()
    with running(redis_url, namespace) as stack, Client(stack.target) as client:
        data = new_image(3)
        image_id = client.encode(data, prefetch=False).image_id  # the decoder must read the bad value
        stack.store.connection.client.setrange(stack.store.key(stack.embeddings, image_id), 200, b"\x00garbage\xff")
        corrupt_before = counter("sam3_embedding_lookups_total", result="corrupt")
        result = client.segment(data, points=[[5, 5]])
        assert counter("sam3_embedding_lookups_total", result="corrupt") == corrupt_before + 1
        assert result.encoded is not None and not result.encoded.cached
        assert stack.store.get(stack.embeddings, image_id).outcome == Outcome.REDIS


def test_unknown_image_id_is_not_found_with_a_reason(redis_url: str) -> None:
    with running(redis_url, prefix(), {DECODER}) as stack, Client(stack.target) as client:
        with pytest.raises(Sam3Error) as failure:
            client.segment("0" * 64, points=[[1, 1]])
        assert failure.value.code == grpc.StatusCode.NOT_FOUND
        assert failure.value.reason == "EMBEDDING_NOT_FOUND"
        assert failure.value.metadata["image_id"] == "0" * 64


def click(x: float, y: float, label: int = decoder_pb2.POINT_LABEL_FOREGROUND) -> decoder_pb2.Point:
    return decoder_pb2.Point(x=x, y=y, label=label)


def wire_request(image_id: str, objects: list[decoder_pb2.ObjectPrompt]) -> decoder_pb2.SegmentRequest:
    """A SegmentRequest as any client must send it: every enum set."""
    return decoder_pb2.SegmentRequest(
        image_id=image_id,
        objects=objects,
        selection=decoder_pb2.MASK_SELECTION_BEST,
        mask_format=decoder_pb2.MASK_FORMAT_RLE,
    )


@pytest.mark.parametrize(
    ("objects", "field"),
    [
        ([], "objects"),
        ([decoder_pb2.ObjectPrompt()], "objects[0]"),
        ([decoder_pb2.ObjectPrompt(points=[click(-5, 3)])], "objects[0].points[0].x"),
        ([decoder_pb2.ObjectPrompt(points=[click(5, float("nan"))])], "objects[0].points[0].y"),
        ([decoder_pb2.ObjectPrompt(box=decoder_pb2.Box(x1=30, y1=5, x2=10, y2=20))], "objects[0].box"),
        ([decoder_pb2.ObjectPrompt(points=[click(1, 1, label=7)])], "objects[0].points[0].label"),
        # Not set (or SAM's numeric 0 = background sent as is): never read as a foreground click.
        ([decoder_pb2.ObjectPrompt(points=[click(1, 1), click(2, 2, label=0)])], "objects[0].points[1].label"),
        ([decoder_pb2.ObjectPrompt(points=[click(1, 1)] * 40)], "objects[0].points"),
    ],
)
def test_bad_prompts_are_invalid_argument_naming_the_field(redis_url: str, objects: list, field: str) -> None:
    with running(redis_url, prefix()) as stack, Client(stack.target) as client:
        image_id = client.encode(new_image(4)).image_id
        with grpc.insecure_channel(stack.target) as channel, pytest.raises(grpc.RpcError) as failure:
            decoder_pb2_grpc.DecoderServiceStub(channel).Segment(wire_request(image_id, objects), timeout=10)
        error = Sam3Error.from_rpc(failure.value)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.reason == "INVALID_PROMPT" and error.metadata["field"] == field
        assert field in error.message


def test_bad_images_and_ids_are_invalid_argument(redis_url: str) -> None:
    with running(redis_url, prefix()) as stack, Client(stack.target) as client:
        for data in (b"not an image", image_bytes("landscape.jpg")[:2000]):
            with pytest.raises(Sam3Error) as failure:
                client.encode(data)
            assert failure.value.code == grpc.StatusCode.INVALID_ARGUMENT and failure.value.reason == "INVALID_IMAGE"
        with grpc.insecure_channel(stack.target) as channel, pytest.raises(grpc.RpcError) as failure:
            decoder_pb2_grpc.DecoderServiceStub(channel).Segment(decoder_pb2.SegmentRequest(image_id="../etc"))
        error = Sam3Error.from_rpc(failure.value)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.metadata["field"] == "image_id"
        # The worker keeps serving after bad input.
        assert client.segment(new_image(5), points=[[1, 1]]).objects[0].mask.shape == (48, 64)


def test_expired_encode_stores_nothing(redis_url: str) -> None:
    with running(redis_url, prefix(), {ENCODER}) as stack, Client(stack.target) as client:
        data = new_image(6, (2000, 1500))
        with pytest.raises(Sam3Error) as failure:
            client.encode(data, timeout=0.3)
        assert failure.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(3)  # long enough for an encode that was not stopped to finish and write
        from hashlib import sha256

        assert stack.store.peek(stack.embeddings, sha256(data).hexdigest()) is None


def test_encode_batch_answers_each_image_and_survives_a_bad_one(redis_url: str) -> None:
    with running(redis_url, prefix(), {ENCODER}) as stack, grpc.insecure_channel(stack.target) as channel:
        requests = [
            encoder_pb2.EncodeRequest(image=new_image(7), request_id="a"),
            encoder_pb2.EncodeRequest(image=b"junk", request_id="b"),
            encoder_pb2.EncodeRequest(image=new_image(7), request_id="c"),
        ]
        responses = list(encoder_pb2_grpc.EncoderServiceStub(channel).EncodeBatch(iter(requests), timeout=60))
        assert [r.request_id for r in responses] == ["a", "b", "c"]
        assert responses[1].error.info.reason == "INVALID_IMAGE"
        assert responses[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert not responses[0].cached and responses[2].cached


def test_segment_stream_skips_stale_clicks_of_the_same_object(redis_url: str) -> None:
    from sam3_client import ObjectPrompt
    from sam3_client._messages import segment_request

    with running(redis_url, prefix()) as stack, Client(stack.target) as client:
        image_id = client.encode(new_image(8)).image_id
        gate = threading.Event()

        def requests():
            yield segment_request(image_id, [ObjectPrompt([[1, 1]])], request_id="warm")
            gate.wait(10)
            for n in range(20):
                yield segment_request(image_id, [ObjectPrompt([[n + 1, 2]])], request_id=str(n), object_key="dog")
            yield segment_request(image_id, [ObjectPrompt([[3, 3]])], request_id="other", object_key="cat")

        with grpc.insecure_channel(stack.target) as channel:
            responses = []
            for response in decoder_pb2_grpc.DecoderServiceStub(channel).SegmentStream(requests(), timeout=60):
                responses.append(response)
                gate.set()
        assert [r.request_id for r in responses] == ["warm", *map(str, range(20)), "other"]
        assert not responses[-2].skipped and not responses[-1].skipped  # the latest of each object is answered
        assert all(len(r.objects) == (0 if r.skipped else 1) for r in responses)


def test_model_info_health_and_reflection(redis_url: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with running(redis_url, prefix()) as stack, grpc.insecure_channel(stack.target) as channel:
        info = Client(stack.target).model_info()
        assert info.model_id == stack.store.model_id and info.mask_size == 288
        assert info.embeddings == {
            "image_embeddings.0": ((1, 32, 288, 288), "float32"),
            "image_embeddings.1": ((1, 64, 144, 144), "float32"),
            "image_embeddings.2": ((1, 256, 72, 72), "float32"),
        }
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "sam3.v1.EncoderService", "sam3.v1.DecoderService", "liveness"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == 1
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert {"sam3.v1.EncoderService", "sam3.v1.DecoderService", "grpc.health.v1.Health"} <= set(services)


def test_sigterm_lets_an_in_flight_encode_finish() -> None:
    import urllib.request

    from sam3_serving.redis_server import free_port

    metrics_port = free_port()
    data = new_image(9, (3000, 2000))
    with (
        serve_subprocess("--grace-seconds", "30", "--metrics-port", str(metrics_port)) as (process, target),
        Client(target) as client,
    ):
        outcome: list[object] = []

        def encode() -> None:
            try:
                outcome.append(client.encode(data))
            except Sam3Error as error:
                outcome.append(error)

        thread = threading.Thread(target=encode)
        thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # wait until the worker has admitted the call
            page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).read().decode()
            if any(
                line.startswith("sam3_in_flight_requests") and not line.endswith(" 0.0") for line in page.splitlines()
            ):
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        thread.join(60)
        assert outcome and not isinstance(outcome[0], Exception) and outcome[0].cached is False
        assert process.wait(timeout=30) == 0


@pytest.mark.parametrize(
    ("field", "value"), [("mask_format", 99), ("selection", 42), ("mask_format", 0), ("selection", 0)]
)
def test_unset_and_unknown_enum_values_are_invalid_argument(redis_url: str, field: str, value: int) -> None:
    """No request enum has a default: 0 is what an unset field or a misspelt name arrives as."""
    with running(redis_url, prefix()) as stack, Client(stack.target) as client:
        image_id = client.encode(new_image(10)).image_id
        request = wire_request(image_id, [decoder_pb2.ObjectPrompt(points=[click(1, 1)])])
        setattr(request, field, value)
        with grpc.insecure_channel(stack.target) as channel, pytest.raises(grpc.RpcError) as failure:
            decoder_pb2_grpc.DecoderServiceStub(channel).Segment(request, timeout=10)
        error = Sam3Error.from_rpc(failure.value)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.metadata["field"] == field


def _enum_fields(message: Any, prefix: str = "") -> set[str]:
    """Paths of every enum field a message carries, nested messages included."""
    found = set()
    for field in message.fields:
        if field.enum_type is not None:
            found.add(prefix + field.name)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            found |= _enum_fields(field.message_type, f"{prefix}{field.name}.")
    return found


def test_every_request_enum_is_covered_by_the_refusal_tests() -> None:
    """A new enum field in a request must get its zero value refused (and a case above) too."""
    assert _enum_fields(decoder_pb2.SegmentRequest.DESCRIPTOR) == {"selection", "mask_format", "objects.points.label"}
    assert _enum_fields(encoder_pb2.EncodeRequest.DESCRIPTOR) == set()


def test_mask_format_none_still_sends_the_box_and_the_size(redis_url: str) -> None:
    """Scores only, yet bbox is present (all zeros) and width/height are the original size, as promised."""
    with running(redis_url, prefix()) as stack, Client(stack.target) as client:
        image_id = client.encode(new_image(12)).image_id
        request = wire_request(image_id, [decoder_pb2.ObjectPrompt(points=[click(3, 4)])])
        request.selection, request.mask_format = decoder_pb2.MASK_SELECTION_ALL, decoder_pb2.MASK_FORMAT_NONE
        with grpc.insecure_channel(stack.target) as channel:
            response = decoder_pb2_grpc.DecoderServiceStub(channel).Segment(request, timeout=10)
    assert (response.width, response.height) == (64, 48)
    for mask in response.objects[0].masks:
        assert mask.format == decoder_pb2.MASK_FORMAT_NONE and mask.WhichOneof("payload") is None
        assert mask.HasField("bbox") and mask.bbox == decoder_pb2.BoundingBox() and mask.area == 0
        assert (mask.width, mask.height) == (64, 48)


def test_a_service_this_worker_does_not_serve_is_unimplemented_with_details(redis_url: str) -> None:
    with running(redis_url, prefix(), {DECODER}) as stack, grpc.insecure_channel(stack.target) as channel:
        encoder = encoder_pb2_grpc.EncoderServiceStub(channel)
        for call in (
            lambda: encoder.Encode(encoder_pb2.EncodeRequest(image=b"x"), timeout=10),
            lambda: list(encoder.EncodeBatch(iter([encoder_pb2.EncodeRequest(image=b"x")]), timeout=10)),
        ):
            with pytest.raises(grpc.RpcError) as failure:
                call()
            error = Sam3Error.from_rpc(failure.value)
            assert error.code == grpc.StatusCode.UNIMPLEMENTED and error.reason == Reason.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as failure:  # declared nowhere: gRPC's own answer, no details
            channel.unary_unary("/no.such.Service/Nope")(b"", timeout=10)
        assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_lock_that_cannot_be_released_does_not_change_the_answer(redis_url: str) -> None:
    from sam3_serving.store import StoreUnavailableError

    with running(redis_url, prefix(), {ENCODER}) as stack, Client(stack.target) as client:

        def fail(image_id: str, token: str) -> None:
            raise StoreUnavailableError("redis went away after the write")

        stack.store.locks.release = fail  # a real store whose release fails: the encode itself succeeded
        result = client.encode(new_image(11))
        assert not result.cached and stack.store.peek(stack.embeddings, result.image_id) is not None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r.objects[0].points[0].__setattr__("label", 7), "objects[0].points[0].label"),
        (lambda r: r.objects[0].box.CopyFrom(decoder_pb2.Box(x1=30, y1=5, x2=10, y2=20)), "objects[0].box"),
        (lambda r: r.objects[0].points.extend([click(1, 1)] * 40), "objects[0].points"),
        (
            lambda r: (setattr(r, "selection", decoder_pb2.MASK_SELECTION_INDEX), setattr(r, "mask_index", 3)),
            "mask_index",
        ),
        (lambda r: setattr(r, "mask_format", 99), "mask_format"),
    ],
)
def test_a_segment_request_is_checked_in_full_before_any_fetch(redis_url: str, change, field: str) -> None:
    """A bad request for an image nobody stored is INVALID_ARGUMENT, not NOT_FOUND: nothing was fetched."""
    request = wire_request("0" * 64, [decoder_pb2.ObjectPrompt(points=[click(1, 1)])])
    change(request)
    with running(redis_url, prefix(), {DECODER}) as stack:
        stack.store.get = lambda kind, image_id: pytest.fail(f"fetched {image_id} for a request that cannot run")
        with grpc.insecure_channel(stack.target) as channel, pytest.raises(grpc.RpcError) as failure:
            decoder_pb2_grpc.DecoderServiceStub(channel).Segment(request, timeout=10)
    error = Sam3Error.from_rpc(failure.value)
    assert (error.code, error.reason, error.metadata["field"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_PROMPT,
        field,
    )


def test_an_image_header_is_checked_before_the_lock_and_the_slot(redis_url: str) -> None:
    limits = ImageLimits(max_pixels=64 * 48)
    with running(redis_url, prefix(), {ENCODER}, encoder=EncoderSettings(image_limits=limits)) as stack:
        stack.store.locks.try_take = lambda image_id: pytest.fail("took the encode lock for an image it cannot encode")
        with Client(stack.target) as client:
            with pytest.raises(Sam3Error) as too_large:
                client.encode(new_image(12, (65, 48)))
            with pytest.raises(Sam3Error) as not_an_image:
                client.encode(b"GIF89a but not really")
    assert (too_large.value.code, too_large.value.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.IMAGE_TOO_LARGE,
    )
    assert too_large.value.metadata == {"field": "image", "limit": "max_pixels"}
    assert (not_an_image.value.code, not_an_image.value.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_IMAGE,
    )


def test_single_flight_waits_are_counted_under_the_documented_labels(redis_url: str) -> None:
    namespace = prefix()
    with running(redis_url, namespace, {ENCODER}) as stack, Client(stack.target) as client:
        data = new_image(13)
        image_id = client.encode(data).image_id
        stack.store.delete(stack.embeddings, image_id)
        holder = stack.store.locks.try_take(image_id)  # another replica holds the lock and then fails
        threading.Timer(0.3, stack.store.locks.release, (image_id, holder)).start()
        before = counter("sam3_single_flight_waits_total", outcome="holder_failed")
        assert client.encode(data).cached is False
        assert counter("sam3_single_flight_waits_total", outcome="holder_failed") - before == 1
