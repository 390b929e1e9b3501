"""Which targets the SDK accepts (sam3_client.targets): gRPC's syntaxes, always with a port, else the fix."""

from __future__ import annotations

import asyncio

import pytest

from sam3_client import AsyncClient, Client
from sam3_client.targets import TargetError, check_target

ACCEPTED = [
    "localhost:50051",
    "10.0.0.7:1",
    "[::1]:50051",
    "dns:///sam3-decoder:50051",
    "dns://10.0.0.2/sam3-decoder:50051",
    "dns:sam3:50051",
    "dns:///[fd00::7]:50051",
    "ipv4:10.0.0.1:50051,10.0.0.2:50052",
    "ipv6:[::1]:50051,[::2]:50051",
    "unix:/run/sam3.sock",
    "unix:///run/sam3.sock",
    "unix-abstract:sam3",
    "xds:///sam3",
]
# target -> (what is wrong, the target the message suggests)
REFUSED = {
    "localhost": ("has no port (gRPC would dial 443)", "localhost:50051"),
    "localhost:": ("has no port after the ':' (gRPC would dial 443)", "localhost:50051"),
    "127.0.0.1:5005x": ("has the port '5005x', not a number from 1 to 65535", "127.0.0.1:50051"),
    "127.0.0.1:0": ("has the port '0', not a number from 1 to 65535", "127.0.0.1:50051"),
    "127.0.0.1:65536": ("has the port '65536', not a number from 1 to 65535", "127.0.0.1:50051"),
    "[::1]": ("has no port (gRPC would dial 443)", "[::1]:50051"),
    "::1": ("is an IPv6 address without brackets and port (gRPC would dial 443)", "[::1]:50051"),
    "dns:///sam3": ("has no port (gRPC would dial 443)", "dns:///sam3:50051"),
    "dns://10.0.0.2/sam3": ("has no port (gRPC would dial 443)", "dns://10.0.0.2/sam3:50051"),
    "ipv4:10.0.0.1:50051,10.0.0.2": ("has no port (gRPC would dial 443)", "ipv4:10.0.0.1:50051,10.0.0.2:50051"),
    ":50051": ("has no host", "localhost:50051"),
    "http://localhost:50051": ("is a URL, and a gRPC target has no scheme", "localhost:50051"),
    "https://sam3.example.com/": ("is a URL, and a gRPC target has no scheme", "sam3.example.com:443"),
    "localhost:50051 ": ("contains spaces", "localhost:50051"),
}


@pytest.mark.parametrize("target", ACCEPTED)
def test_grpc_targets_with_a_port_are_accepted(target: str) -> None:
    check_target(target)


@pytest.mark.parametrize("target", sorted(REFUSED))
def test_a_target_grpc_would_misread_is_refused_with_the_fix(target: str) -> None:
    problem, example = REFUSED[target]
    with pytest.raises(TargetError) as refused:
        check_target(target)
    assert (refused.value.problem, refused.value.example) == (problem, example)
    assert str(refused.value).startswith(f"target {target!r} {problem}: give HOST:PORT, e.g. {example!r}")
    assert refused.value.tls == target.startswith("https:")
    check_target(example)  # the suggestion itself is accepted


@pytest.mark.parametrize(
    "targets",
    [{"target": "localhost"}, {"encoder_target": "encoder", "decoder_target": "decoder:50051"}],
    ids=["target", "encoder_target"],
)
def test_both_clients_refuse_before_dialling(targets: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="has no port"):
        Client(**targets)

    async def make() -> None:
        await AsyncClient(**targets).close()

    with pytest.raises(ValueError, match="has no port"):
        asyncio.run(make())
