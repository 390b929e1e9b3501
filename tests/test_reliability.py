"""Misbehaving callers against real workers: idle streams, unread streams, amplification, malformed
bodies, a busy encoder, and a seeded fuzz of both services. docs/reliability.md lists these cases.

The `fault` tests share one `sam3 serve` process (embedded Redis, tiny model) and check at the end
that it never logged a traceback; each also checks that the worker still answers afterwards.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from prometheus_client import REGISTRY

import references
from decoder_service.budget import ResponseLimits
from decoder_service.segment_answer import segment_budget
from decoder_service.segment_plan import segment_plan
from decoder_service.servicer import DecoderSettings
from encoder_service.servicer import EncoderSettings
from sam3_cli.workers import ENCODER
from sam3_client import AsyncClient, Client, ObjectPrompt, Reason, Sam3Error
from sam3_client.proto import common_pb2, decoder_pb2, decoder_pb2_grpc, encoder_pb2, encoder_pb2_grpc
from sam3_core.model import Sam3Model
from sam3_core.prompts import PromptLimits
from sam3_serving.config import ServerConfig
from sam3_serving.errors import ServiceError
from sam3_serving.redis_server import free_port
from sam3_serving.slots import BATCH, INTERACTIVE, PrioritySlots, QueueFull
from sam3_serving.worker_process import WorkerProcess
from service_stack import running

SEGMENT = "/sam3.v1.DecoderService/Segment"
ENCODE = "/sam3.v1.EncoderService/Encode"
SEGMENT_STREAM = "/sam3.v1.DecoderService/SegmentStream"
ENCODE_BATCH = "/sam3.v1.EncoderService/EncodeBatch"
IDLE_SECONDS = 3
MIB = 1024 * 1024
# Every code a worker may answer a bad or hostile request with (docs/reliability.md).
DOCUMENTED = {
    SEGMENT: {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"},
    ENCODE: {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"},
}


@dataclass
class Served:
    process: object
    target: str
    metrics_port: int

    @property
    def pid(self) -> int:
        return self.process.pid  # type: ignore[attr-defined, no-any-return]

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(
            self.target, options=[("grpc.max_send_message_length", 64 * MIB), ("grpc.max_receive_message_length", -1)]
        )

    def counter(self, method: str, code: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        wanted = f'sam3_rpcs_total{{code="{code}",method="{method}",'
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(wanted))


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """One real `sam3 serve` for the fault tests; its log must never show a traceback."""
    metrics_port = free_port()
    flags = ("--stream-idle-seconds", str(IDLE_SECONDS), "--metrics-port", str(metrics_port), "--log-level", "WARNING")
    worker = WorkerProcess("serve", "--model-dir", str(references.MODEL_DIR), *flags, start_timeout=60)
    try:
        yield Served(worker.process, worker.target, metrics_port)
    finally:
        worker.stop(timeout=20)
    output = worker.output()
    assert "Traceback" not in output, output[-4000:]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))


def png(width: int, height: int, seed: int | None = None) -> bytes:
    """A PNG: noise when seeded (a new image id), else flat grey (small file, large pixel count)."""
    if seed is None:
        pixels = np.full((height, width, 3), 127, np.uint8)
    else:
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def still_serving(served: Served) -> None:
    """Liveness answers and a real Segment gets its mask: the worker survived."""
    with served.channel() as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    with Client(served.target) as client:
        assert client.segment(png(64, 48, seed=1), points=[[10, 10]]).objects[0].mask.shape == (48, 64)


def code_of(call: Callable[[], object]) -> tuple[str, Reason | None, dict[str, str]]:
    try:
        call()
    except grpc.RpcError as error:
        sam3 = Sam3Error.from_rpc(error)
        return error.code().name, sam3.reason, sam3.metadata
    return "OK", None, {}


def silent(until: threading.Event) -> Iterator[decoder_pb2.SegmentRequest]:
    """A request stream that sends nothing until `until` is set."""
    until.wait(60)
    yield from ()


# --- 1. idle streams cannot starve the worker ------------------------------------------------------------


@pytest.mark.fault
def test_idle_streams_cannot_starve_health_or_unary_calls(served: Served) -> None:
    with served.channel() as channel:
        stub = decoder_pb2_grpc.DecoderServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        done = threading.Event()
        streams = [stub.SegmentStream(silent(done), timeout=30) for _ in range(100)]
        time.sleep(0.5)  # all 100 reached the worker
        latencies = []
        for _ in range(20):
            started = time.perf_counter()
            reply = health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=2)
            latencies.append(time.perf_counter() - started)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert max(latencies) < 1.0, latencies
        assert code_of(lambda: stub.Segment(unknown_image_click(), timeout=2))[0] == "NOT_FOUND"
        assert stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=2).model_id
        outcomes = Counter()
        started = time.perf_counter()
        for stream in streams:
            code, reason, metadata = code_of(lambda stream=stream: next(stream))
            outcomes[code, reason, metadata.get("limit")] += 1
        # Half the 16 handler threads take streams; the rest are refused at once, and the admitted
        # ones are closed after the idle timeout, well before their own 30 s deadline.
        assert outcomes == {
            ("RESOURCE_EXHAUSTED", Reason.OVERLOADED, "max_streams"): 92,
            ("DEADLINE_EXCEEDED", Reason.STREAM_IDLE, "stream_idle_seconds"): 8,
        }
        assert time.perf_counter() - started < IDLE_SECONDS + 2
        done.set()
    still_serving(served)


def test_stream_slots_stay_below_the_handler_threads() -> None:
    assert ServerConfig(max_workers=16).stream_slots == 8
    assert ServerConfig(max_workers=1).stream_slots == 1
    with pytest.raises(ValueError, match="max_streams"):
        ServerConfig(max_workers=16, max_streams=16)


def test_reflection_streams_take_stream_slots_too(redis_url: str) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with running(redis_url, uuid.uuid4().hex, server={"max_streams": 1}) as stack:
        with grpc.insecure_channel(stack.target) as channel:
            done = threading.Event()

            def ask() -> Iterator[reflection_pb2.ServerReflectionRequest]:
                yield reflection_pb2.ServerReflectionRequest(list_services="")
                done.wait(10)

            reflection = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(ask(), timeout=10)
            assert next(reflection).list_services_response.service  # open, and holding the only slot
            segment_stream = decoder_pb2_grpc.DecoderServiceStub(channel).SegmentStream(iter(()), timeout=5)
            code, reason, metadata = code_of(lambda: list(segment_stream))
            done.set()
        assert (code, reason, metadata.get("limit")) == ("RESOURCE_EXHAUSTED", Reason.OVERLOADED, "max_streams")


# --- 2. a client that never reads cannot make the worker buffer its requests -----------------------------


@pytest.mark.fault
def test_unread_stream_is_held_back_by_flow_control(served: Served) -> None:
    pushed = 0

    def flood() -> Iterator[decoder_pb2.SegmentRequest]:
        nonlocal pushed
        for _ in range(150):
            pushed += 1
            request = unknown_image_click()
            request.request_id = "x" * MIB  # 1 MiB, echoed back
            yield request

    before = peak = rss_mb(served.pid)
    with served.channel() as channel:
        call = decoder_pb2_grpc.DecoderServiceStub(channel).SegmentStream(flood(), timeout=60)
        for _ in range(30):  # 3 s without reading a single response
            time.sleep(0.1)
            peak = max(peak, rss_mb(served.pid))
        call.cancel()
    # Before the bound, all 150 went in within 0.3 s and the worker grew by 187 MB or more.
    assert pushed < 40, pushed
    assert peak - before < 64, (before, peak)
    still_serving(served)


# --- 3. amplification: refused from the request, before any work ----------------------------------------


@pytest.mark.fault
def test_oversized_answers_are_refused_before_any_work(served: Served) -> None:
    with Client(served.target) as client:
        image_id = client.encode(png(6000, 5000)).image_id  # 30 megapixels
    point = decoder_pb2.Point(x=3000, y=2500, label=decoder_pb2.POINT_LABEL_FOREGROUND)
    every_mask = {"selection": decoder_pb2.MASK_SELECTION_ALL}
    best_mask = {"selection": decoder_pb2.MASK_SELECTION_BEST}
    cases = [  # (request, the limit it hits)
        (dict(objects=12, mask_format=decoder_pb2.MASK_FORMAT_PACKED_BITS, **every_mask), "max_message_bytes"),
        (dict(objects=32, mask_format=decoder_pb2.MASK_FORMAT_RLE, **every_mask), "max_mask_megapixels"),
        (dict(objects=32, mask_format=decoder_pb2.MASK_FORMAT_PNG, **best_mask), "max_mask_megapixels"),
    ]
    refused_before = served.counter("Segment", "RESOURCE_EXHAUSTED")
    before = rss_mb(served.pid)
    with served.channel() as channel:
        stub = decoder_pb2_grpc.DecoderServiceStub(channel)
        for fields, limit in cases:
            objects = [decoder_pb2.ObjectPrompt(points=[point])] * fields.pop("objects")
            request = decoder_pb2.SegmentRequest(image_id=image_id, objects=objects, **fields)
            assert len(request.SerializeToString()) < 1000  # a few hundred bytes asking for gigabytes
            started = time.perf_counter()
            code, reason, metadata = code_of(lambda request=request: stub.Segment(request, timeout=30))
            assert (code, reason, metadata.get("limit")) == ("RESOURCE_EXHAUSTED", Reason.RESPONSE_TOO_LARGE, limit)
            assert time.perf_counter() - started < 1.0  # no mask was computed
        # What the limits allow still works, and one call holds about one full-size mask at a time.
        objects = [decoder_pb2.ObjectPrompt(points=[point])] * 4
        allowed = decoder_pb2.SegmentRequest(
            image_id=image_id, objects=objects, mask_format=decoder_pb2.MASK_FORMAT_RLE, **best_mask
        )
        assert len(stub.Segment(allowed, timeout=60).objects) == 4
    assert rss_mb(served.pid) - before < 400
    # The metrics count what the client saw.
    assert served.counter("Segment", "RESOURCE_EXHAUSTED") - refused_before == len(cases)
    still_serving(served)


def test_the_estimate_counts_objects_masks_pixels_and_formats() -> None:
    model = Sam3Model(references.MODEL_DIR, load_encoder=False)
    limits = ResponseLimits(max_response_bytes=1_000_000, max_mask_pixels=10_000_000)
    click = decoder_pb2.Point(x=1, y=1, label=decoder_pb2.POINT_LABEL_FOREGROUND)
    objects = [decoder_pb2.ObjectPrompt(points=[click])] * 2
    best = {"selection": decoder_pb2.MASK_SELECTION_BEST}

    def refused(image: tuple[int, int], **fields: object) -> str | None:
        request = decoder_pb2.SegmentRequest(image_id="0" * 64, objects=objects, **{**best, **fields})
        try:
            segment_budget(segment_plan(request, PromptLimits(), model), image, (288, 288), limits)
        except ServiceError as error:
            assert error.reason == Reason.RESPONSE_TOO_LARGE
            return error.metadata["limit"]
        return None

    bits, png_format, none = (
        decoder_pb2.MASK_FORMAT_PACKED_BITS,
        decoder_pb2.MASK_FORMAT_PNG,
        decoder_pb2.MASK_FORMAT_NONE,
    )
    every = decoder_pb2.MASK_SELECTION_ALL
    assert refused((1000, 1000), mask_format=bits) is None  # 2 masks x 125 kB, 2 MP
    assert refused((1000, 2000), mask_format=bits, selection=every) == "max_message_bytes"  # 6 x 250 kB
    assert refused((1000, 1000), mask_format=png_format, selection=every) is None  # 6 MP, size unknown yet
    assert refused((2000, 1000), mask_format=png_format, selection=every) == "max_mask_megapixels"  # 12 MP
    assert refused((4000, 4000), mask_format=none) is None  # scores only: nothing at full size
    assert refused((10, 10), mask_format=none, selection=every, return_low_res_logits=True) == "max_message_bytes"


def test_content_sized_masks_stop_at_the_response_budget(redis_url: str) -> None:
    """PNG and RLE sizes depend on the mask: the decoder stops as soon as the running total passes the limit."""
    settings = DecoderSettings(responses=ResponseLimits(max_response_bytes=4096))
    with running(redis_url, uuid.uuid4().hex, decoder=settings) as stack, Client(stack.target) as client:
        image = png(640, 480, seed=2)
        client.encode(image)
        with pytest.raises(Sam3Error) as refused:
            client.segment_objects(
                image, [ObjectPrompt([[x, 100]]) for x in range(0, 640, 64)], mask="all", mask_format="png"
            )
        assert refused.value.reason == Reason.RESPONSE_TOO_LARGE
        assert refused.value.metadata["limit"] == "max_message_bytes"
        assert client.segment(image, points=[[5, 5]], mask_format="none").objects[0].iou_scores


def test_response_over_the_send_limit_is_logged_and_counted_as_the_client_saw_it(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The last line of defence (gRPC's own send limit) is recorded as RESOURCE_EXHAUSTED, not OK."""

    def refused() -> float:
        labels = {"service": "sam3.v1.DecoderService", "method": "Segment", "code": "RESOURCE_EXHAUSTED"}
        return REGISTRY.get_sample_value("sam3_rpcs_total", labels) or 0.0

    with running(redis_url, uuid.uuid4().hex, server={"max_send_bytes": 20_000}) as stack:
        image = png(640, 480, seed=3)
        with Client(stack.target) as client:
            client.encode(image)
            before = refused()
            with caplog.at_level(logging.INFO, logger="sam3_serving.rpc"), pytest.raises(Sam3Error) as error:
                client.segment(image, points=[[5, 5]], mask="all", low_res_logits=True)
    assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.value.reason == Reason.RESPONSE_TOO_LARGE
    assert refused() == before + 1
    lines = [r for r in caplog.records if r.name == "sam3_serving.rpc" and r.method.endswith("/Segment")]
    assert [r.code for r in lines] == ["RESOURCE_EXHAUSTED"]


# --- 4. malformed protobuf bodies -------------------------------------------------------------------------


def unknown_image_click() -> decoder_pb2.SegmentRequest:
    """A valid Segment request for an image nobody encoded: NOT_FOUND."""
    return decoder_pb2.SegmentRequest(
        image_id="0" * 64,
        objects=[
            decoder_pb2.ObjectPrompt(points=[decoder_pb2.Point(x=1, y=2, label=decoder_pb2.POINT_LABEL_FOREGROUND)])
        ],
        selection=decoder_pb2.MASK_SELECTION_BEST,
        mask_format=decoder_pb2.MASK_FORMAT_RLE,
    )


VALID_SEGMENT = unknown_image_click().SerializeToString()
MALFORMED = {
    "garbage": b"\xff\xff\xff\xff\x0f\x01",
    "invalid_utf8": b"\x0a\x04\xff\xfe\xfd\xfc",  # image_id (field 1, a string) that is not UTF-8
    "truncated": VALID_SEGMENT[:-3],
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_bodies_are_invalid_argument_after_auth(
    redis_url: str, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    def counted() -> float:
        labels = {"service": "sam3.v1.DecoderService", "method": "Segment", "code": "INVALID_ARGUMENT"}
        return REGISTRY.get_sample_value("sam3_rpcs_total", labels) or 0.0

    with (
        caplog.at_level(logging.INFO),
        running(redis_url, uuid.uuid4().hex, server={"auth_token": "t0ken"}) as stack,
        grpc.insecure_channel(stack.target) as channel,
    ):
        segment = channel.unary_unary(SEGMENT)
        assert code_of(lambda: segment(body, timeout=5))[:2] == ("UNAUTHENTICATED", Reason.UNAUTHENTICATED)
        before = counted()
        outcome = code_of(lambda: segment(body, timeout=5, metadata=[("authorization", "Bearer t0ken")]))
        assert outcome[:2] == ("INVALID_ARGUMENT", Reason.MALFORMED_REQUEST)
        assert counted() == before + 1
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    # The body is parsed only after authentication: the caller without a token never reached the parser.
    assert [r.code for r in caplog.records if r.name == "sam3_serving.rpc"] == ["UNAUTHENTICATED", "INVALID_ARGUMENT"]


@pytest.mark.parametrize("method", [SEGMENT_STREAM, ENCODE_BATCH])
def test_a_malformed_message_ends_a_stream_with_invalid_argument(redis_url: str, method: str) -> None:
    with running(redis_url, uuid.uuid4().hex) as stack, grpc.insecure_channel(stack.target) as channel:
        responses = channel.stream_stream(method)(iter([MALFORMED["garbage"]]), timeout=5)
        assert code_of(lambda: list(responses))[:2] == ("INVALID_ARGUMENT", Reason.MALFORMED_REQUEST)


# --- 5. a busy encoder queues callers with time left, interactive first -----------------------------------


def test_priority_slots_serve_interactive_callers_first_and_bound_the_line() -> None:
    slots = PrioritySlots(capacity=1, max_waiting=2)
    assert slots.acquire(INTERACTIVE, 0)
    order: list[str] = []

    def wait(name: str, priority: int) -> None:
        assert slots.acquire(priority, 10)
        order.append(name)
        slots.release()

    batch = threading.Thread(target=wait, args=("batch", BATCH))
    batch.start()
    while slots.waiting < 1:
        time.sleep(0.01)
    interactive = threading.Thread(target=wait, args=("interactive", INTERACTIVE))
    interactive.start()
    while slots.waiting < 2:
        time.sleep(0.01)
    with pytest.raises(QueueFull):
        slots.acquire(INTERACTIVE, 10)
    slots.release()
    batch.join(5)
    interactive.join(5)
    assert order == ["interactive", "batch"]
    assert slots.acquire(BATCH, 0)  # a free slot is taken even with no time left to wait
    assert not slots.acquire(INTERACTIVE, 0.05)  # ... but a busy one is not waited for past the timeout
    assert not slots.acquire(INTERACTIVE, 10, cancelled=lambda: True)  # nor once the call is gone


def encode_together(encode: Callable[..., object], images: list[bytes]) -> list[tuple[str, Reason | None, str | None]]:
    """Encode `images` at the same time over a raw stub: (code, reason, limit) of each."""

    def one(image: bytes) -> tuple[str, Reason | None, str | None]:
        code, reason, metadata = code_of(lambda: encode(encoder_pb2.EncodeRequest(image=image), timeout=60))
        return code, reason, metadata.get("limit")

    with ThreadPoolExecutor(len(images)) as pool:
        return list(pool.map(one, images))


def test_busy_encoder_queues_callers_within_their_deadline(redis_url: str) -> None:
    def queued(outcome: str) -> float:
        labels = {"priority": "interactive", "outcome": outcome}
        return REGISTRY.get_sample_value("sam3_encode_queue_seconds_count", labels) or 0.0

    started_before = queued("started")
    with running(redis_url, uuid.uuid4().hex, {ENCODER}) as stack, grpc.insecure_channel(stack.target) as channel:
        outcomes = encode_together(
            encoder_pb2_grpc.EncoderServiceStub(channel).Encode, [png(64, 48, seed=s) for s in (10, 11)]
        )
    assert outcomes == [("OK", None, None)] * 2  # the second waited for the first instead of being refused
    assert queued("started") - started_before == 2  # the queue wait is measured for every model run


def test_full_line_is_overloaded_and_the_sdks_retry_it(redis_url: str) -> None:
    settings = EncoderSettings(max_queued=0)  # no line: the old, immediate refusal
    with running(redis_url, uuid.uuid4().hex, {ENCODER}, encoder=settings) as stack:
        with grpc.insecure_channel(stack.target) as channel:
            outcomes = encode_together(
                encoder_pb2_grpc.EncoderServiceStub(channel).Encode, [png(64, 48, seed=s) for s in (20, 21)]
            )
        assert sorted(outcomes, key=str) == [
            ("OK", None, None),
            ("RESOURCE_EXHAUSTED", Reason.OVERLOADED, "encode_queue"),
        ]

        # The same collision through the SDKs, sync and async at once: both succeed, the loser retried.
        async def encode_async() -> object:
            async with AsyncClient(stack.target) as client:
                return await client.encode(png(64, 48, seed=30))

        with Client(stack.target) as client, ThreadPoolExecutor(1) as pool:
            sync_result = pool.submit(client.encode, png(64, 48, seed=31))
            async_result = asyncio.run(encode_async())
            assert not sync_result.result().cached and not async_result.cached  # type: ignore[attr-defined]


# --- fuzzing both services --------------------------------------------------------------------------------

FUZZ_SEED = 20261130
_HOSTILE_NUMBERS = (-1e9, -1.0, 64.0, 1e9, float("nan"), float("inf"), float("-inf"))


def _either(rng: random.Random, usual: Callable[[], object], hostile: Callable[[], object]) -> object:
    """Mostly a value a real client sends, sometimes one a hostile or broken client would."""
    return usual() if rng.random() < 0.95 else hostile()


def _fuzz_object(rng: random.Random) -> decoder_pb2.ObjectPrompt:
    def coordinate(limit: float) -> float:
        return _either(rng, lambda: rng.uniform(0, limit), lambda: rng.choice(_HOSTILE_NUMBERS))  # type: ignore[return-value]

    points = [
        decoder_pb2.Point(
            x=coordinate(63.9),
            y=coordinate(47.9),
            label=_either(rng, lambda: rng.choice([0, 1, 2]), lambda: rng.choice([3, -7])),
        )
        for _ in range(_either(rng, lambda: rng.randint(1, 3), lambda: rng.choice([0, 33, 100])))  # type: ignore[call-overload]
    ]
    obj = decoder_pb2.ObjectPrompt(points=points)
    if rng.random() < 0.4:
        obj.box.CopyFrom(
            decoder_pb2.Box(x1=coordinate(30), y1=coordinate(20), x2=coordinate(63.9), y2=coordinate(47.9))
        )
    return obj


def _fuzz_segment(rng: random.Random, image_ids: list[str]) -> bytes:
    hostile_ids = ["0" * 64, "", "x" * rng.randint(1, 100), image_ids[0] + "\n", image_ids[0].upper()]
    message = decoder_pb2.SegmentRequest(
        image_id=_either(rng, lambda: rng.choice(image_ids), lambda: rng.choice(hostile_ids)),
        objects=[
            _fuzz_object(rng) for _ in range(_either(rng, lambda: rng.randint(1, 3), lambda: rng.choice([0, 33])))
        ],  # type: ignore[call-overload]
        selection=_either(rng, lambda: rng.choice([0, 1, 2, 3]), lambda: rng.choice([9, -1])),
        mask_index=_either(rng, lambda: rng.randint(0, 2), lambda: rng.choice([-2, 3, 1 << 30])),
        mask_format=_either(rng, lambda: rng.choice([0, 1, 2, 3, 4]), lambda: rng.choice([77, -3])),
        return_low_res_logits=rng.random() < 0.3,
        request_id=rng.choice(["", "r", "é" * 10]),
    )
    return _mutate(rng, message.SerializeToString())


def _fuzz_encode(rng: random.Random, images: list[bytes]) -> bytes:
    """Valid images come from a small pool (mostly cached answers: the model is slow on a shared CI box)."""
    image = rng.choice(
        [
            lambda: rng.choice(images),
            lambda: rng.choice(images),
            lambda: rng.choice(images)[: rng.randint(0, 200)],  # truncated file
            lambda: rng.randbytes(rng.randint(0, 500)),  # not an image
            lambda: b"",
            lambda: b"GIF89a" + rng.randbytes(40),
        ]
    )()
    message = encoder_pb2.EncodeRequest(image=image, force=rng.random() < 0.02, prewarm=rng.random() < 0.3)
    return _mutate(rng, message.SerializeToString())


def _mutate(rng: random.Random, body: bytes) -> bytes:
    """Most bodies as they are; some raw random bytes, bit flips, truncations or invalid UTF-8."""
    roll = rng.random()
    if roll < 0.75 or not body:
        return body
    if roll < 0.82:
        return rng.randbytes(rng.randint(0, 200))
    if roll < 0.88:
        flipped = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        return bytes(flipped)
    if roll < 0.94:
        return body[: rng.randrange(len(body))]
    return body + b"\x3a\x03\xc3\x28\xff"  # field 7 (a string) with invalid UTF-8


def stream_codes(channel: grpc.Channel, method: str, stream: list[bytes]) -> list[tuple[str, Reason | None]]:
    """The code and reason of each message sent on a stream: its item error, OK, or what ended the stream."""
    response_type = decoder_pb2.SegmentResponse if method == SEGMENT_STREAM else encoder_pb2.EncodeResponse
    call = channel.stream_stream(method, response_deserializer=response_type.FromString)
    codes: list[tuple[str, Reason | None]] = []
    try:
        for response in call(iter(stream), timeout=30):
            error = response.error
            codes.append((_CODES[error.code].name, Reason.parse(error.info.reason)) if error.code else ("OK", None))
    except grpc.RpcError as error:
        codes += [(error.code().name, Sam3Error.from_rpc(error).reason)] * (len(stream) - len(codes))
    return codes


_CODES = {code.value[0]: code for code in grpc.StatusCode}


@pytest.mark.fault
def test_fuzzing_both_services_gives_only_documented_codes(served: Served) -> None:
    rng = random.Random(FUZZ_SEED)
    with Client(served.target) as client:
        reference_image = png(64, 48, seed=7)
        reference = client.segment(reference_image, points=[[20, 20]], mask_format="rle")
        image_ids = [reference.image_id, client.encode(png(32, 32, seed=8)).image_id]
    bodies = [(SEGMENT, _fuzz_segment(rng, image_ids)) for _ in range(320)]
    images = [png(rng.randint(1, 96), rng.randint(1, 96), seed=seed) for seed in range(4)]
    bodies += [(ENCODE, _fuzz_encode(rng, images)) for _ in range(200)]
    rng.shuffle(bodies)
    reasons: Counter[tuple[str, str, Reason | None]] = Counter()
    with served.channel() as channel:

        def send(item: tuple[str, bytes]) -> None:
            method, body = item
            code, reason, _ = code_of(lambda: channel.unary_unary(method)(body, timeout=30))
            reasons[method, code, reason] += 1

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(send, bodies))
        streams = [(SEGMENT_STREAM, [_fuzz_segment(rng, image_ids) for _ in range(5)]) for _ in range(10)]
        streams += [(ENCODE_BATCH, [_fuzz_encode(rng, images) for _ in range(5)]) for _ in range(10)]
        for method, stream in streams:
            reasons.update((method, code, reason) for code, reason in stream_codes(channel, method, stream))
    codes = Counter({(method, code): 0 for method, code, _ in reasons})
    for (method, code, _), count in reasons.items():
        codes[method, code] += count
    print("fuzz code histogram:", dict(sorted(codes.items())))
    print(
        "with reasons:",
        {f"{m.rsplit('/', 1)[1]} {c} {r or ''}": n for (m, c, r), n in sorted(reasons.items(), key=str)},
    )
    assert sum(codes.values()) >= 500
    assert all(reason is not None for _, code, reason in reasons if code != "OK"), reasons  # always a reason
    for (method, code), _count in codes.items():
        allowed = DOCUMENTED.get(method, DOCUMENTED[SEGMENT] | DOCUMENTED[ENCODE])
        assert code in allowed, (method, code, codes)
    still_serving(served)
    with Client(served.target) as client:
        again = client.segment(reference_image, points=[[20, 20]], mask_format="rle")
    assert np.array_equal(again.objects[0].mask, reference.objects[0].mask)  # no wrong mask afterwards
