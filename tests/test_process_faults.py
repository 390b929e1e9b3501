"""The fault suite with real processes: Redis killed, paused, flushed and restarted; an encoder SIGKILLed
while it holds an image's lock; a decoder SIGTERMed with calls in flight.

Each case asserts the documented code within the deadline, that the worker keeps serving afterwards,
and that no caller ever got a wrong mask (every mask is compared with an in-process Predictor's).
The table in docs/reliability.md lists these cases with their codes.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from hashlib import sha256

import grpc
import numpy as np
import pytest
import redis

from sam3_cli.workers import DECODER, ENCODER
from sam3_client import Client, Sam3Error
from sam3_client.errors import Reason
from service_stack import reference_mask, running, serve_subprocess
from test_service_behaviour import new_image, prefix

CLICK = [[6, 9]]
LOCK_TTL = 2.0


def assert_right(result, data: bytes) -> None:
    np.testing.assert_array_equal(result.objects[0].mask, reference_mask(data, CLICK))


def test_redis_killed_then_restarted_empty(redis_server) -> None:
    data = new_image(400)
    with running(redis_server.url, prefix()) as stack, Client(stack.target) as client:
        assert_right(client.segment(data, points=CLICK), data)
        redis_server.kill()  # SIGKILL: connections reset, nothing flushed
        started = time.monotonic()
        with pytest.raises(Sam3Error) as failure:
            client.segment(new_image(401), points=CLICK, timeout=10)  # needs Redis: not in the local cache
        assert failure.value.code == grpc.StatusCode.UNAVAILABLE and failure.value.reason == Reason.STORE_UNAVAILABLE
        assert time.monotonic() - started < 5
        assert_right(client.segment(sha256(data).hexdigest(), points=CLICK), data)  # local cache still answers
        redis_server.restart()  # empty: every value is gone
        result = client.segment(new_image(401), points=CLICK)
        assert result.encoded is not None and not result.encoded.cached
        assert_right(result, new_image(401))


def test_redis_flushed(redis_server) -> None:
    data = new_image(402)
    namespace = prefix()
    with running(redis_server.url, namespace) as stack, Client(stack.target) as client:
        image_id = client.encode(data).image_id
        redis.Redis.from_url(redis_server.url).flushall()
        with running(redis_server.url, namespace, {DECODER}) as fresh, Client(fresh.target) as decoder:
            with pytest.raises(Sam3Error) as failure:
                decoder.segment(image_id, points=CLICK)
            assert failure.value.code == grpc.StatusCode.NOT_FOUND
        result = client.segment(data, points=CLICK)  # the SDK re-encodes on NOT_FOUND
        assert_right(result, data)
        assert not client.encode(new_image(403)).cached


def _wait_for_key(raw: redis.Redis, key: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not raw.exists(key):
        assert time.monotonic() < deadline, f"{key} never appeared"
        time.sleep(0.005)


def test_redis_paused_while_an_encode_holds_the_lock(redis_server) -> None:
    """The lock's short TTL is measured on Redis's clock: a pause longer than it frees the lock on resume;
    the encode in flight ends UNAVAILABLE (it could not store) or OK (it stored after the resume)."""
    data = new_image(404, (2000, 1500))
    image_id = sha256(data).hexdigest()
    store = {"lock_ttl_seconds": LOCK_TTL}
    with running(redis_server.url, prefix(), {ENCODER}, store=store) as stack, Client(stack.target) as client:
        raw = redis.Redis.from_url(redis_server.url)
        outcome: list[object] = []

        def encode() -> None:
            try:
                outcome.append(client.encode(data, timeout=60))
            except Sam3Error as error:
                outcome.append(error)

        thread = threading.Thread(target=encode)
        thread.start()
        _wait_for_key(raw, stack.store.locks.key(image_id))
        os.kill(redis_server.pid, signal.SIGSTOP)
        time.sleep(LOCK_TTL + 1.5)
        os.kill(redis_server.pid, signal.SIGCONT)
        resumed = time.monotonic()
        thread.join(60)
        assert outcome and (not isinstance(outcome[0], Sam3Error) or outcome[0].code == grpc.StatusCode.UNAVAILABLE), (
            outcome
        )
        while raw.exists(stack.store.locks.key(image_id)):
            assert time.monotonic() - resumed < LOCK_TTL + 1, "the lock outlived its holder's pause"
            time.sleep(0.05)
        again = client.encode(data, timeout=60)  # the image is not blocked
        assert (again.width, again.height) == (2000, 1500)
        raw.close()


def test_encoder_sigkilled_while_holding_the_lock(redis_url: str) -> None:
    """Another worker waiting on the dead holder's lock encodes itself within about one lock TTL
    (not the 120 s single-flight timeout), and answers right."""
    namespace = prefix()
    data = new_image(405, (3000, 2000))
    raw = redis.Redis.from_url(redis_url)
    flags = ("--redis-url", redis_url, "--key-prefix", namespace, "--lock-ttl-seconds", str(LOCK_TTL))
    with (
        serve_subprocess(*flags, "--log-level", "WARNING", command="encoder") as (process, target),
        running(redis_url, namespace, store={"lock_ttl_seconds": LOCK_TTL}) as survivor,
        Client(target) as doomed,
        Client(survivor.target) as client,
    ):
        lock_key = survivor.store.locks.key(sha256(data).hexdigest())

        def encode_and_die() -> None:
            with pytest.raises(Sam3Error):  # its worker is killed under it
                doomed.encode(data)

        thread = threading.Thread(target=encode_and_die, daemon=True)
        thread.start()
        _wait_for_key(raw, lock_key)
        process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        result = client.segment(data, points=CLICK, timeout=60)  # waits on the lock, then encodes
        waited = time.monotonic() - killed
        assert result.encoded is not None and not result.encoded.cached
        assert_right(result, data)
        assert process.wait(10) == -signal.SIGKILL
        # One TTL for the orphaned lock, plus this worker's own encode of a 6 MP image.
        assert waited < LOCK_TTL + 25, waited
        assert raw.ttl(lock_key) == -2  # released by the survivor
    raw.close()


def test_decoder_sigterm_with_calls_in_flight(redis_url: str) -> None:
    """Calls admitted before SIGTERM finish with right masks; later ones get UNAVAILABLE (the SDK's
    retry then meets a closed port), or CANCELLED for one that reached the server in the last instant,
    when it closed (it never ran); the process exits 0 within its grace period."""
    namespace = prefix()
    data = new_image(406)
    with running(redis_url, namespace, {ENCODER}) as encoder, Client(encoder.target) as client:
        image_id = client.encode(data).image_id
    expected = reference_mask(data, CLICK)
    flags = ("--redis-url", redis_url, "--key-prefix", namespace, "--grace-seconds", "10", "--log-level", "WARNING")
    with serve_subprocess(*flags, command="decoder") as (process, target):
        codes: list[grpc.StatusCode] = []
        wrong = 0
        stop = threading.Event()

        def click() -> None:
            nonlocal wrong
            with Client(target) as decoder:
                while not stop.is_set():
                    try:
                        mask = decoder.segment(image_id, points=CLICK, timeout=10).objects[0].mask
                        codes.append(grpc.StatusCode.OK)
                        wrong += not np.array_equal(mask, expected)
                    except Sam3Error as error:
                        codes.append(error.code)
                        if error.code == grpc.StatusCode.UNAVAILABLE:
                            return

        threads = [threading.Thread(target=click) for _ in range(4)]
        for thread in threads:
            thread.start()
        while codes.count(grpc.StatusCode.OK) < 20:
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        stop.set()
        for thread in threads:
            thread.join(30)
        assert wrong == 0
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, set(codes)
        assert grpc.StatusCode.UNAVAILABLE in codes


def test_wrong_redis_password_is_named(redis_server, caplog: pytest.LogCaptureFixture) -> None:
    """Readiness says NOT_SERVING and the log says why; calls get UNAVAILABLE naming the credentials."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    admin = redis.Redis.from_url(redis_server.url)
    admin.config_set("requirepass", "right-password")
    admin.close()
    wrong = redis_server.url.replace("redis://", "redis://:wrong-password@")
    with caplog.at_level("WARNING"), running(wrong, prefix()) as stack, Client(stack.target) as client:
        with grpc.insecure_channel(stack.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(service="")).status == 2  # NOT_SERVING
            assert health.Check(health_pb2.HealthCheckRequest(service="liveness")).status == 1  # SERVING
        with pytest.raises(Sam3Error) as failure:
            client.encode(new_image(407))
        assert failure.value.code == grpc.StatusCode.UNAVAILABLE and "wrong-password" not in failure.value.message
    lines = [r.getMessage() for r in caplog.records if "not ready" in r.getMessage()]
    assert lines and "the password or user is wrong" in lines[0] and "wrong-password" not in lines[0]
