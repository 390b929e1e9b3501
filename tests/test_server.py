"""The shared gRPC worker (sam3_serving.server and the modules it composes) against real servers on 127.0.0.1,
never mocked gRPC.

A tiny servicer built on the real generated stubs stands in for the model: fixed answers, typed errors,
an unexpected exception, a slow call for graceful shutdown.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from sam3_client.errors import ERROR_INFO_KEY, Reason, Sam3Error
from sam3_client.proto import common_pb2, decoder_pb2, decoder_pb2_grpc, encoder_pb2, encoder_pb2_grpc
from sam3_serving import metrics
from sam3_serving.config import ServerConfig, Service
from sam3_serving.errors import ServiceError
from sam3_serving.logs import JsonFormatter, configure_logging
from sam3_serving.roles import Role
from sam3_serving.server import Worker

DECODER = decoder_pb2.DESCRIPTOR.services_by_name["DecoderService"].full_name
ENCODER = encoder_pb2.DESCRIPTOR.services_by_name["EncoderService"].full_name
ARITY = "test.v1.Arity"  # raw-bytes methods of all four arities (our protos have no unary-stream)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TOKEN = "s3cret-token"


class FakeDecoder(decoder_pb2_grpc.DecoderServiceServicer):
    """Segment behaves by image_id: "ok", "slow" (1 s), "boom" (ZeroDivisionError), else NOT_FOUND."""

    def __init__(self) -> None:
        self.slow_started = threading.Event()

    def GetModelInfo(self, request: common_pb2.GetModelInfoRequest, context: grpc.ServicerContext) -> Any:
        return common_pb2.ModelInfo(model_id="test-model", image_size=1008, mask_size=288)

    def Segment(self, request: decoder_pb2.SegmentRequest, context: grpc.ServicerContext) -> Any:
        if request.image_id == "slow":
            self.slow_started.set()
            time.sleep(1.0)
        elif request.image_id == "boom":
            return 1 / 0
        elif request.image_id != "ok":
            raise ServiceError(
                grpc.StatusCode.NOT_FOUND,
                f"no embedding for {request.image_id}",
                Reason.EMBEDDING_NOT_FOUND,
                image_id=request.image_id,
            )
        return decoder_pb2.SegmentResponse(image_id=request.image_id, request_id=request.request_id)

    def SegmentStream(
        self, request_iterator: Iterator[decoder_pb2.SegmentRequest], context: grpc.ServicerContext
    ) -> Any:
        for request in request_iterator:
            if request.image_id == "missing":
                raise ServiceError(
                    grpc.StatusCode.NOT_FOUND, "gone", Reason.EMBEDDING_NOT_FOUND, image_id=request.image_id
                )
            if request.image_id == "boom":
                raise ZeroDivisionError("boom")
            yield decoder_pb2.SegmentResponse(image_id=request.image_id, request_id=request.request_id)


class FakeEncoder(encoder_pb2_grpc.EncoderServiceServicer):
    """Only GetModelInfo: Encode keeps the generated "not implemented" behaviour."""

    def Encode(self, request: encoder_pb2.EncodeRequest, context: grpc.ServicerContext) -> Any:
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)  # what the generated base class does
        raise NotImplementedError("Method not implemented!")

    def EncodeBatch(self, request_iterator: Iterator[encoder_pb2.EncodeRequest], context: grpc.ServicerContext) -> Any:
        raise NotImplementedError("Method not implemented!")

    def GetModelInfo(self, request: common_pb2.GetModelInfoRequest, context: grpc.ServicerContext) -> Any:
        return common_pb2.ModelInfo(model_id="test-model")


def _arity_handler() -> grpc.GenericRpcHandler:
    """Echo methods of every arity; a payload of b"bad" raises ServiceError, b"boom" a ZeroDivisionError."""

    def check(payload: bytes) -> bytes:
        if payload == b"bad":
            raise ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "bad", Reason.INVALID_PROMPT, field="payload")
        if payload == b"boom":
            raise ZeroDivisionError("boom")
        return payload

    def unary_unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        return check(request)

    def unary_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield b"first"
        yield check(request)

    def stream_unary(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return b"".join(check(r) for r in requests)

    def stream_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for request in requests:
            yield check(request)

    return grpc.method_handlers_generic_handler(
        ARITY,
        {
            "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
            "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream),
        },
    )


def _services(decoder: FakeDecoder, *extra: Service) -> list[Service]:
    encoder = FakeEncoder()
    return [
        Service(DECODER, lambda s: decoder_pb2_grpc.add_DecoderServiceServicer_to_server(decoder, s)),
        Service(ENCODER, lambda s: encoder_pb2_grpc.add_EncoderServiceServicer_to_server(encoder, s)),
        Service(ARITY, lambda s: s.add_generic_rpc_handlers((_arity_handler(),))),
        *extra,
    ]


ROLES = {Role.ENCODER, Role.DECODER}


def _start(
    ready: Callable[[], bool] = lambda: True, extra: Sequence[Service] = (), **config: Any
) -> tuple[Worker, FakeDecoder]:
    decoder = FakeDecoder()
    cfg = ServerConfig(host="127.0.0.1", port=0, **config)
    return Worker(cfg, _services(decoder, *extra), roles=ROLES, ready=ready, ready_interval=0.05).start(), decoder


def _eventually(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _rpc_count(method: str, code: str, service: str = DECODER) -> float:
    labels = {"service": service, "method": method, "code": code}
    return REGISTRY.get_sample_value("sam3_rpcs_total", labels) or 0.0


class Ready:
    """A switchable ready() callable: True, False, or an exception to raise."""

    def __init__(self) -> None:
        self.value: bool | Exception = True

    def __call__(self) -> bool:
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


@pytest.fixture(scope="module")
def ready() -> Ready:
    return Ready()


@pytest.fixture(scope="module")
def worker(ready: Ready) -> Iterator[Worker]:
    server, _ = _start(ready, metrics_port=0, max_receive_bytes=64 * 1024)
    yield server
    server.stop(0)


@pytest.fixture(scope="module")
def channel(worker: Worker) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{worker.port}") as chan:
        yield chan


def _health(channel: grpc.Channel, service: str) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status


# --- health and reflection -------------------------------------------------------------------


def test_health_overall_each_service_and_liveness(channel: grpc.Channel) -> None:
    for service in ("", DECODER, ENCODER, ARITY, "liveness"):
        assert _health(channel, service) == SERVING, service
    with pytest.raises(grpc.RpcError) as caught:
        _health(channel, "no.such.Service")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    listed = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=2).statuses
    assert {name: response.status for name, response in listed.items()} == {
        name: SERVING for name in ("", DECODER, ENCODER, ARITY, "liveness")
    }


def test_readiness_follows_ready_callable_and_liveness_does_not(channel: grpc.Channel, ready: Ready) -> None:
    try:
        ready.value = False
        assert _eventually(lambda: _health(channel, "") == NOT_SERVING)
        assert _health(channel, DECODER) == NOT_SERVING
        assert _health(channel, ENCODER) == NOT_SERVING
        assert _health(channel, "liveness") == SERVING
        ready.value = True
        assert _eventually(lambda: _health(channel, "") == SERVING)
        assert _health(channel, DECODER) == SERVING
        ready.value = ConnectionError("redis is down")  # a raising check counts as not ready
        assert _eventually(lambda: _health(channel, DECODER) == NOT_SERVING)
        assert _health(channel, "liveness") == SERVING
    finally:
        ready.value = True
    assert _eventually(lambda: _health(channel, "") == SERVING)


def test_reflection_lists_services(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {DECODER, ENCODER, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
    proto = database.FindFileContainingSymbol(DECODER)
    assert "DecoderService" in [s.name for s in proto.service]


# --- errors ----------------------------------------------------------------------------------


def assert_standard_details(error: grpc.RpcError, reason: Reason, field: str | None = None) -> None:
    """The rich error model as any gRPC language reads it: google.rpc.Status in grpc-status-details-bin."""
    status = rpc_status.from_call(error)  # also checks code and message agree with the call's
    assert status is not None, f"{error.code()} without grpc-status-details-bin"
    info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    unpacked = {"info": False, "bad_request": False}
    for detail in status.details:
        unpacked["info"] |= detail.Unpack(info)
        unpacked["bad_request"] |= detail.Unpack(bad_request)
    assert unpacked["info"] and (info.reason, info.domain) == (reason.value, "sam3.v1")
    assert unpacked["bad_request"] == (field is not None)
    if field is not None:
        assert [v.field for v in bad_request.field_violations] == [field] and info.metadata["field"] == field


def test_service_error_becomes_status_and_error_info(channel: grpc.Channel) -> None:
    stub = decoder_pb2_grpc.DecoderServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Segment(decoder_pb2.SegmentRequest(image_id="abc123"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "no embedding for abc123"
    info = Sam3Error.from_rpc(caught.value)
    assert info.reason == Reason.EMBEDDING_NOT_FOUND
    assert dict(info.metadata) == {"image_id": "abc123"}
    assert_standard_details(caught.value, Reason.EMBEDDING_NOT_FOUND)
    # The deprecated trailer still goes alongside, for SDKs that read only it.
    legacy = dict(caught.value.trailing_metadata())[ERROR_INFO_KEY]
    assert common_pb2.ErrorInfo.FromString(legacy).reason == "EMBEDDING_NOT_FOUND"


class _FailedCall:
    """Just enough of a grpc.RpcError for Sam3Error.from_rpc: a worker's answer as received."""

    def __init__(self, trailers: tuple[tuple[str, bytes], ...]) -> None:
        self._trailers = trailers

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.NOT_FOUND

    def details(self) -> str:
        return "gone"

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self._trailers


def test_sdk_reads_the_standard_details_and_still_the_old_trailer() -> None:
    new = ServiceError(grpc.StatusCode.NOT_FOUND, "gone", Reason.EMBEDDING_NOT_FOUND, image_id="new")
    old = common_pb2.ErrorInfo(reason="EMBEDDING_NOT_FOUND", metadata={"image_id": "old"}).SerializeToString()
    standard = rpc_status.to_status(new.rich_status()).trailing_metadata
    assert Sam3Error.from_rpc(_FailedCall(standard)).metadata == {"image_id": "new"}
    assert Sam3Error.from_rpc(_FailedCall(((ERROR_INFO_KEY, old),))).metadata == {"image_id": "old"}  # old worker
    assert Sam3Error.from_rpc(_FailedCall(((ERROR_INFO_KEY, old), *standard))).metadata == {"image_id": "new"}
    assert Sam3Error.from_rpc(_FailedCall((("grpc-status-details-bin", b"\xff garbage"),))).reason is None


def test_unexpected_exception_is_internal_and_worker_keeps_serving(
    channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    stub = decoder_pb2_grpc.DecoderServiceStub(channel)
    with caplog.at_level(logging.ERROR, logger="sam3_serving"), pytest.raises(grpc.RpcError) as caught:
        stub.Segment(decoder_pb2.SegmentRequest(image_id="boom"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error; see the worker log"
    assert Sam3Error.from_rpc(caught.value).reason == Reason.INTERNAL
    assert_standard_details(caught.value, Reason.INTERNAL)
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)
    assert stub.Segment(decoder_pb2.SegmentRequest(image_id="ok"), timeout=5).image_id == "ok"


def test_unimplemented_method_stays_unimplemented(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        encoder_pb2_grpc.EncoderServiceStub(channel).Encode(encoder_pb2.EncodeRequest(image=b"x"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert_standard_details(caught.value, Reason.UNIMPLEMENTED)


def test_errors_inside_bidirectional_stream(channel: grpc.Channel) -> None:
    stub = decoder_pb2_grpc.DecoderServiceStub(channel)
    requests = [
        decoder_pb2.SegmentRequest(image_id="ok", request_id="1"),
        decoder_pb2.SegmentRequest(image_id="missing"),
    ]
    responses = stub.SegmentStream(iter(requests), timeout=5)
    assert next(responses).request_id == "1"
    with pytest.raises(grpc.RpcError) as caught:
        next(responses)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = Sam3Error.from_rpc(caught.value)
    assert info.reason == Reason.EMBEDDING_NOT_FOUND

    with pytest.raises(grpc.RpcError) as caught:
        list(stub.SegmentStream(iter([decoder_pb2.SegmentRequest(image_id="boom")]), timeout=5))
    assert caught.value.code() == grpc.StatusCode.INTERNAL


@pytest.mark.parametrize("arity", ["UnaryUnary", "UnaryStream", "StreamUnary", "StreamStream"])
def test_all_four_arities_convert_errors(channel: grpc.Channel, arity: str) -> None:
    method = f"/{ARITY}/{arity}"
    streaming_request = arity.startswith("Stream")
    factories: dict[str, Callable[[str], Callable[..., Any]]] = {
        "UnaryUnary": channel.unary_unary,
        "UnaryStream": channel.unary_stream,
        "StreamUnary": channel.stream_unary,
        "StreamStream": channel.stream_stream,
    }
    call = factories[arity](method)

    def invoke(payload: bytes) -> list[bytes]:
        result = call(iter([payload]) if streaming_request else payload, timeout=5)
        return list(result) if arity.endswith("Stream") else [result]

    assert invoke(b"hello")[-1] == b"hello"
    with pytest.raises(grpc.RpcError) as caught:
        invoke(b"bad")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = Sam3Error.from_rpc(caught.value)
    assert info.reason == Reason.INVALID_PROMPT and info.metadata["field"] == "payload"
    assert_standard_details(caught.value, Reason.INVALID_PROMPT, field="payload")
    with pytest.raises(grpc.RpcError) as caught:
        invoke(b"boom")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert _rpc_count(arity, "INTERNAL", service=ARITY) >= 1
    assert _rpc_count(arity, "INVALID_ARGUMENT", service=ARITY) >= 1


def test_service_error_helpers() -> None:
    error = ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "bad box", Reason.INVALID_PROMPT, field="objects[0].box")
    item = error.to_item_error()
    assert item.code == 3 and item.message == "bad box"
    assert item.info.reason == "INVALID_PROMPT" and item.info.metadata["field"] == "objects[0].box"
    with pytest.raises(ValueError):
        ServiceError(grpc.StatusCode.OK, "fine", Reason.OVERLOADED)


def test_request_over_max_receive_bytes_is_resource_exhausted(channel: grpc.Channel) -> None:
    stub = decoder_pb2_grpc.DecoderServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Segment(decoder_pb2.SegmentRequest(image_id="x" * 100_000), timeout=5)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.Segment(decoder_pb2.SegmentRequest(image_id="ok", request_id="y" * 30_000), timeout=5)


# --- metrics and logs ------------------------------------------------------------------------


def test_metrics_count_calls_and_http_endpoint_serves_them(worker: Worker, channel: grpc.Channel) -> None:
    stub = decoder_pb2_grpc.DecoderServiceStub(channel)
    ok_before = _rpc_count("GetModelInfo", "OK")
    missing_before = _rpc_count("Segment", "NOT_FOUND")
    for _ in range(3):
        assert stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=5).model_id == "test-model"
    with pytest.raises(grpc.RpcError):
        stub.Segment(decoder_pb2.SegmentRequest(image_id="nope"), timeout=5)
    assert _rpc_count("GetModelInfo", "OK") == ok_before + 3
    assert _rpc_count("Segment", "NOT_FOUND") == missing_before + 1
    labels = {"service": DECODER, "method": "GetModelInfo"}
    assert (REGISTRY.get_sample_value("sam3_rpc_duration_seconds_count", labels) or 0) >= 3
    assert metrics.in_flight(worker.label) == worker.in_flight == 0
    assert REGISTRY.get_sample_value("sam3_rpcs_total", {"service": "grpc.health.v1.Health"}) is None

    assert worker.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'sam3_rpcs_total{code="OK",method="GetModelInfo",service="sam3.v1.DecoderService"}' in text
    assert 'sam3_in_flight_requests{worker="decoder+encoder"} 0.0' in text


def test_observe_stages_records_seconds() -> None:
    labels = {"worker": "test-stages", "stage": "model"}
    before = REGISTRY.get_sample_value("sam3_stage_duration_seconds_sum", labels) or 0.0
    metrics.observe_stages("test-stages", {"model": 250.0, "bogus": float("nan")})
    assert REGISTRY.get_sample_value("sam3_stage_duration_seconds_sum", labels) == pytest.approx(before + 0.25)
    assert (
        REGISTRY.get_sample_value("sam3_stage_duration_seconds_count", {"worker": "test-stages", "stage": "bogus"})
        is None
    )


def test_one_structured_log_line_per_call(
    worker: Worker, channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    stub = decoder_pb2_grpc.DecoderServiceStub(channel)
    with caplog.at_level(logging.INFO, logger="sam3_serving.rpc"):
        stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=5)
    records = [r for r in caplog.records if r.name == "sam3_serving.rpc"]
    assert len(records) == 1
    record: Any = records[0]
    assert record.method == f"/{DECODER}/GetModelInfo"
    assert (
        record.code == "OK"
        and record.ms >= 0
        and "127.0.0.1" in record.peer
        and record.worker == worker.label == "decoder+encoder"
    )
    line = json.loads(JsonFormatter().format(record))
    assert {"ts", "level", "logger", "message", "method", "code", "ms", "peer"} <= set(line)


def test_configure_logging_emits_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    level = root.level
    configure_logging("DEBUG", json_logs=True)
    try:
        logging.getLogger("sam3.test").info("hello %s", "world", extra={"image_id": "abc"})
        try:
            raise RuntimeError("kaput")
        except RuntimeError:
            logging.getLogger("sam3.test").exception("failed")
    finally:
        for handler in [h for h in root.handlers if getattr(h, "_sam3_handler", False)]:
            root.removeHandler(handler)
        root.setLevel(level)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines[0]["message"] == "hello world" and lines[0]["image_id"] == "abc" and lines[0]["level"] == "INFO"
    assert lines[1]["logger"] == "sam3.test" and "RuntimeError: kaput" in lines[1]["exception"]


# --- auth and TLS ----------------------------------------------------------------------------


def test_auth_token_required_except_for_health_and_reflection() -> None:
    server, _ = _start(auth_token=TOKEN)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as chan:
            stub = decoder_pb2_grpc.DecoderServiceStub(chan)
            request = common_pb2.GetModelInfoRequest()
            for metadata in [None, (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)]:
                with pytest.raises(grpc.RpcError) as caught:
                    stub.GetModelInfo(request, metadata=metadata, timeout=5)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "authorization: Bearer <token>" in (caught.value.details() or "")
                info = Sam3Error.from_rpc(caught.value)
                assert info.reason == Reason.UNAUTHENTICATED
                assert_standard_details(caught.value, Reason.UNAUTHENTICATED)
            with pytest.raises(grpc.RpcError) as caught:  # streams are guarded too
                list(stub.SegmentStream(iter([decoder_pb2.SegmentRequest(image_id="ok")]), timeout=5))
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

            good = (("authorization", f"Bearer {TOKEN}"),)
            assert stub.GetModelInfo(request, metadata=good, timeout=5).model_id == "test-model"
            responses = stub.SegmentStream(iter([decoder_pb2.SegmentRequest(image_id="ok")]), metadata=good, timeout=5)
            assert [r.image_id for r in responses] == ["ok"]
            assert _health(chan, "") == SERVING
            assert DECODER in set(ProtoReflectionDescriptorDatabase(chan).get_services())
    finally:
        server.stop(0)


# The documented rule (docs/security.md): scheme case-insensitive (RFC 7235), one or more spaces, the
# exact token (RFC 6750 b64token), nothing else. (A tab cannot travel: gRPC refuses it in the client.)
ACCEPTED = [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer   {TOKEN}"]
REFUSED = [
    TOKEN,
    f"Bearer{TOKEN}",
    f"Bearer {TOKEN} ",
    f"Bearer {TOKEN}x",
    f"Bearer {TOKEN[:-1]}",
    f"Bearer {TOKEN} {TOKEN}",
    f"Basic {TOKEN}",
    "Bearer ",
]


def test_bearer_scheme_casing_and_spaces() -> None:
    server, _ = _start(auth_token=TOKEN)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as chan:
            stub = decoder_pb2_grpc.DecoderServiceStub(chan)
            for value in ACCEPTED + REFUSED:
                try:
                    stub.GetModelInfo(common_pb2.GetModelInfoRequest(), metadata=(("authorization", value),), timeout=5)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as error:
                    code = error.code()
                expected = grpc.StatusCode.OK if value in ACCEPTED else grpc.StatusCode.UNAUTHENTICATED
                assert code == expected, repr(value)
            twice = (("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}"))
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetModelInfo(common_pb2.GetModelInfoRequest(), metadata=twice, timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop(0)


def test_not_ready_reason_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def ready() -> bool:
        raise RuntimeError("Redis at redis://:***@db:6379/0 refused the password")

    with caplog.at_level(logging.WARNING, logger="sam3_serving.health_service"):
        server, _ = _start(ready=ready)
        server.stop(0)
    assert any("not ready: RuntimeError: Redis at" in r.getMessage() and "password" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        ServerConfig(tls_cert="cert.pem")
    for token in ("  ", "two words", "tab\there", "ünïcode"):
        with pytest.raises(ValueError, match="RFC 6750"):
            ServerConfig(auth_token=token)
    with pytest.raises(ValueError, match="tls_client_ca"):
        ServerConfig(tls_client_ca="ca.pem")
    with pytest.raises(ValueError, match="tenant_from_cert"):
        ServerConfig(tls_cert="c", tls_key="k", tenant_from_cert=True)
    with pytest.raises(ValueError):
        ServerConfig(port=70000)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server, _ = _start(tls_cert=str(cert), tls_key=str(key))
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{server.port}", credentials) as chan:
            stub = decoder_pb2_grpc.DecoderServiceStub(chan)
            assert stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=5).model_id == "test-model"
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as chan, pytest.raises(grpc.RpcError):
            decoder_pb2_grpc.DecoderServiceStub(chan).GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=2)
    finally:
        server.stop(0)


# --- graceful shutdown -----------------------------------------------------------------------


def test_graceful_stop_finishes_running_call_and_refuses_new_ones() -> None:
    server, decoder = _start()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as chan:
        stub = decoder_pb2_grpc.DecoderServiceStub(chan)
        slow = stub.Segment.future(decoder_pb2.SegmentRequest(image_id="slow", request_id="s"), timeout=10)
        assert decoder.slow_started.wait(5)
        assert server.in_flight == 1 and metrics.in_flight(server.label) == 1

        started = time.monotonic()
        stopper = threading.Thread(target=server.stop, kwargs={"grace": 5})
        stopper.start()
        assert _eventually(lambda: server.shutting_down)
        assert _health(chan, "") == NOT_SERVING
        assert _health(chan, DECODER) == NOT_SERVING
        assert _health(chan, "liveness") == NOT_SERVING
        with pytest.raises(grpc.RpcError) as caught:
            stub.Segment(decoder_pb2.SegmentRequest(image_id="ok"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        info = Sam3Error.from_rpc(caught.value)
        assert info.reason == Reason.SHUTTING_DOWN
        assert_standard_details(caught.value, Reason.SHUTTING_DOWN)

        assert slow.result(timeout=5).request_id == "s"
        stopper.join(timeout=5)
        assert not stopper.is_alive()
        assert time.monotonic() - started < 4  # returned once the call drained, not after the full grace
        assert metrics.in_flight(server.label) == 0
        server.stop()  # idempotent
        server.wait()  # returns at once: stopped
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=1)
        assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_grace_period_expiry_cancels_running_call() -> None:
    server, decoder = _start()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as chan:
        slow = decoder_pb2_grpc.DecoderServiceStub(chan).Segment.future(
            decoder_pb2.SegmentRequest(image_id="slow"), timeout=10
        )
        assert decoder.slow_started.wait(5)
        started = time.monotonic()
        server.stop(grace=0.2)
        assert time.monotonic() - started < 0.9
        with pytest.raises(grpc.RpcError):
            slow.result(timeout=5)


def test_wait_returns_after_stop_from_another_thread() -> None:
    server, _ = _start()
    pool = futures.ThreadPoolExecutor(1)
    try:
        waiting = pool.submit(server.wait)
        time.sleep(0.05)
        assert not waiting.done()
        server.stop(0)
        waiting.result(timeout=2)
        with pytest.raises(RuntimeError):
            server.start()
    finally:
        pool.shutdown()


# Served only by the worker of the cancel test, so its counts and log lines are that worker's alone: a
# stream of an earlier test's worker, ending late in the same process, cannot move them.
CANCEL = "test.v1.Cancel"


def test_client_cancel_releases_in_flight_and_counts_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    def echo(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from requests

    handler = grpc.method_handlers_generic_handler(CANCEL, {"Echo": grpc.stream_stream_rpc_method_handler(echo)})
    server, _ = _start(extra=[Service(CANCEL, lambda s: s.add_generic_rpc_handlers((handler,)))])

    def codes() -> list[str]:
        return [r.code for r in caplog.records if getattr(r, "method", None) == f"/{CANCEL}/Echo"]

    try:
        with (
            caplog.at_level(logging.INFO, logger="sam3_serving.rpc"),
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as chan,
        ):
            gate = threading.Event()

            def requests() -> Iterator[bytes]:
                yield b"1"
                gate.wait(5)

            call = chan.stream_stream(f"/{CANCEL}/Echo")(requests(), timeout=10)
            assert next(call) == b"1"
            assert server.in_flight == 1
            call.cancel()
            assert _eventually(lambda: server.in_flight == 0)
            assert _eventually(lambda: codes() == ["CANCELLED"])
            assert _rpc_count("Echo", "CANCELLED", service=CANCEL) == 1
            gate.set()
    finally:
        server.stop(0)


def test_a_refused_reflection_stream_carries_the_error_details() -> None:
    """Reflection streams take stream slots (unauthenticated, not counted as load); when none is free the
    refusal is a status with the rich details like every other the worker sets."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    server, _ = _start(max_workers=2, max_streams=1)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as chan:
            gate = threading.Event()

            def requests() -> Iterator[decoder_pb2.SegmentRequest]:
                yield decoder_pb2.SegmentRequest(image_id="ok", request_id="1")
                gate.wait(5)

            holder = decoder_pb2_grpc.DecoderServiceStub(chan).SegmentStream(requests(), timeout=10)
            assert next(holder).request_id == "1"  # open, and holding the only stream slot
            ask = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            with pytest.raises(grpc.RpcError) as caught:
                next(reflection_pb2_grpc.ServerReflectionStub(chan).ServerReflectionInfo(ask, timeout=5))
            gate.set()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert_standard_details(caught.value, Reason.OVERLOADED)
        assert Sam3Error.from_rpc(caught.value).metadata["limit"] == "max_streams"
    finally:
        server.stop(0)


_SIGNAL_SCRIPT = """
import sys
sys.path[:0] = {paths!r}
from test_server import _start
server, _ = _start(grace_seconds=5)
server.install_signal_handlers()
print(server.port, flush=True)
server.wait()
print("stopped", server.shutting_down, flush=True)
"""


def test_sigterm_stops_the_worker_gracefully() -> None:
    tests_dir = Path(__file__).resolve().parent
    paths = [str(tests_dir), str(tests_dir.parent), str(tests_dir.parent / "client")]
    process = subprocess.Popen(
        [sys.executable, "-c", _SIGNAL_SCRIPT.format(paths=paths)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
            assert _health(chan, "liveness") == SERVING
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
        assert process.returncode == 0, err
        assert out.strip() == "stopped True"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_max_connection_age_makes_clients_reconnect() -> None:
    """With an age set, gRPC closes connections gracefully so clients re-resolve DNS (new replicas get traffic)."""
    options = dict(ServerConfig(port=0, max_connection_age_seconds=300, grace_seconds=7).server_options())
    assert options["grpc.max_connection_age_ms"] == 300_000
    assert options["grpc.max_connection_age_grace_ms"] == 7_000
    assert "grpc.max_connection_age_ms" not in dict(ServerConfig(port=0).server_options())
