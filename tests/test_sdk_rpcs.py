"""The SDK's table of rpcs (`sam3_client._rpcs.Rpc`) says what the .proto files say."""

from __future__ import annotations

import dataclasses

import pytest

from sam3_client import Deadlines
from sam3_client._rpcs import SERVICES, Kind, Rpc
from sam3_client.proto import decoder_pb2, encoder_pb2, tracker_pb2

PROTO_SERVICES = {
    service.full_name: service
    for module in (encoder_pb2, decoder_pb2, tracker_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
}


@pytest.mark.parametrize("rpc", list(Rpc), ids=lambda rpc: rpc.name)
def test_every_rpc_is_in_the_protos_as_the_table_says(rpc: Rpc) -> None:
    method = PROTO_SERVICES[rpc.service].methods_by_name[rpc.method]
    streams = (method.client_streaming, method.server_streaming)
    expected = {Kind.STREAM: (True, True), Kind.SERVER_STREAM: (False, True), Kind.UNARY: (False, False)}
    assert streams == expected[rpc.kind]
    # Routed: every unary call about one image, every call on one video session (a live session's request
    # stream opens on its replica); a stream of requests about many images stays on the replica it opened on.
    fields = method.input_type.fields_by_name
    route = "session_id" if "session_id" in fields else "image_id" if "image_id" in fields else ""
    assert rpc.route == (route if route == "session_id" or rpc.kind is Kind.UNARY else "")
    assert rpc.deadline in {field.name for field in dataclasses.fields(Deadlines)}


def test_the_table_names_each_rpc_once_and_every_service_it_calls() -> None:
    assert len({(rpc.service, rpc.method) for rpc in Rpc}) == len(Rpc)
    assert sorted(PROTO_SERVICES) == SERVICES
    made = {(rpc.service, rpc.method) for rpc in Rpc}
    # the encoder's GetModelInfo is the decoder's
    left = {(s.full_name, m) for s in PROTO_SERVICES.values() for m in s.methods_by_name} - made
    assert left == {("sam3.v1.EncoderService", "GetModelInfo")}


def test_default_deadlines_come_from_the_table() -> None:
    deadlines = Deadlines(segment=7, concept=70)
    assert deadlines.of(Rpc.SEGMENT) == deadlines.of(Rpc.PREFETCH) == 7
    assert deadlines.of(Rpc.SEGMENT_CONCEPT) == 70
    assert deadlines.of(Rpc.ENCODE_BATCH) == deadlines.of(Rpc.SEGMENT_STREAM) == deadlines.stream


def test_a_request_stream_is_routed_by_the_key_its_call_carries() -> None:
    from sam3_client._rpcs import Call

    stream = Call(Rpc.APPEND_FRAMES, iter(()), 1.0, key="s1")
    assert stream.route_key == "s1"  # its requests are not read ahead
    unary = Call(Rpc.ADD_PROMPT, tracker_pb2.AddPromptRequest(session_id="s2"), 1.0, key="ignored")
    assert unary.route_key == "s2"
    assert Call(Rpc.SEGMENT_STREAM, iter(()), 1.0).route_key == ""
