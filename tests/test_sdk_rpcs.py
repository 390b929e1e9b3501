"""The SDK's table of rpcs (`sam3_client._rpcs.Rpc`) says what the .proto files say."""

from __future__ import annotations

import dataclasses

import pytest

from sam3_client import Deadlines
from sam3_client._rpcs import SERVICES, Kind, Rpc
from sam3_client.proto import decoder_pb2, encoder_pb2

PROTO_SERVICES = {
    service.full_name: service
    for module in (encoder_pb2, decoder_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
}


@pytest.mark.parametrize("rpc", list(Rpc), ids=lambda rpc: rpc.name)
def test_every_rpc_is_in_the_protos_as_the_table_says(rpc: Rpc) -> None:
    method = PROTO_SERVICES[rpc.service].methods_by_name[rpc.method]
    streams = (method.client_streaming, method.server_streaming)
    assert streams == ((True, True) if rpc.kind is Kind.STREAM else (False, False))
    # Routed: every unary call about one image; a stream stays on the one replica it opened on.
    about_an_image = "image_id" in method.input_type.fields_by_name
    assert rpc.routed == (about_an_image and rpc.kind is Kind.UNARY)
    assert rpc.deadline in {field.name for field in dataclasses.fields(Deadlines)}


def test_the_table_names_each_rpc_once_and_every_service_it_calls() -> None:
    assert len({(rpc.service, rpc.method) for rpc in Rpc}) == len(Rpc)
    assert sorted(PROTO_SERVICES) == SERVICES


def test_default_deadlines_come_from_the_table() -> None:
    deadlines = Deadlines(segment=7, concept=70)
    assert deadlines.of(Rpc.SEGMENT) == deadlines.of(Rpc.PREFETCH) == 7
    assert deadlines.of(Rpc.SEGMENT_CONCEPT) == 70
    assert deadlines.of(Rpc.ENCODE_BATCH) == deadlines.of(Rpc.SEGMENT_STREAM) == deadlines.stream
