"""Channels, deadlines and errors: what the sync and async clients configure identically.

Retries are gRPC's own (service config): only UNAVAILABLE is retried, with exponential backoff,
because every other code means the same request would fail again, except RESOURCE_EXHAUSTED /
OVERLOADED ("busy now"), which the clients retry themselves within the deadline (_busy).
`dns:///host:port` targets with several addresses are balanced per call with round_robin (gRPC
balances connections, not calls), except the calls about one image or one video session (the rows of
the rpc table with a `route`, `_rpcs.Rpc`), which go to the replica that owns it by consistent hashing
(`_affinity`, `ChannelSettings.affinity`) so that replica's cache keeps hitting.

Worker restarts: while nothing listens, a call fails at once with UNAVAILABLE and is retried: 5
attempts, the pauses between them 0.2, 0.4, 0.8 and 1.6 s each randomised by +-20 % (gRPC core's
jitter on the policy's backoff; grpcio 1.85 on loopback, 40 calls: 0.16-0.26, 0.34-0.52, 0.65-0.97
and 1.31-1.92 s), so the call gives up 2.4 to 3.6 s after it started. With reconnects from 250 ms
they bridge an outage of about 2 s (measured on loopback: 2.0 s bridged 4/4, 3.0 s 0/3). For longer
ones, `ChannelSettings(wait_for_ready=True)` makes calls wait for a connection instead, bounded by
their deadline: use it where rollouts and restarts should be invisible (batch jobs, services
calling sam3), and leave it off where a wrong address should fail fast (interactive tools).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import grpc

from sam3_client._affinity import HEADERS, AffinityPool
from sam3_client._rpcs import DECODER, ENCODER, SERVICES, TRACKER, Call, Deadlines, Kind, Rpc
from sam3_client.errors import Reason, Sam3Error
from sam3_client.proto import decoder_pb2_grpc, encoder_pb2_grpc, tracker_pb2_grpc
from sam3_client.targets import check_target


@dataclass(frozen=True)
class ChannelSettings:
    """Transport options shared by every channel a client opens.

    max_message_bytes: largest request/response (photos exceed gRPC's 4 MiB default); match the
        workers' --max-message-mb.
    keepalive_seconds: HTTP/2 ping interval during calls, so a dead connection is noticed even in a
        long encode.
    retry_attempts: total attempts for a call failing with UNAVAILABLE (1 = no retries, at most 5).
    wait_for_ready: calls wait (up to their deadline) for the server to be reachable instead of
        failing at once with UNAVAILABLE: bridges worker restarts and rollouts.
    tls / root_certificates: TLS, trusting the given PEM bundle or else the system's trust store;
        tls_server_name overrides the name checked against the certificate (e.g. when dialling an IP).
    client_certificate / client_key: PEM chain and key presented to workers that require client
        certificates (mTLS, their --tls-client-ca); both or neither, and only with tls=True.
    token: sent as `authorization: Bearer <token>` on every call (workers started with --auth-token).
    affinity: for a decoder target naming several addresses (`dns:///name:port`, `ipv4:a:p,b:p`),
        send every call about one image to the same replica (rendezvous hashing on the image id), so
        its local cache hits after the first click; off = plain round_robin for every call.
    """

    max_message_bytes: int = 64 * 1024 * 1024
    keepalive_seconds: float = 30.0
    retry_attempts: int = 5
    wait_for_ready: bool = False
    tls: bool = False
    root_certificates: bytes | None = None  # PEM; None = the system's trust store
    tls_server_name: str | None = None
    client_certificate: bytes | None = None  # PEM chain for mTLS
    client_key: bytes | None = field(default=None, repr=False)  # PEM private key for mTLS
    token: str | None = field(default=None, repr=False)
    affinity: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.retry_attempts <= 5:
            raise ValueError(f"retry_attempts must be 1..5 (gRPC's limit), got {self.retry_attempts}")
        if self.max_message_bytes <= 0 or self.keepalive_seconds <= 0:
            raise ValueError("max_message_bytes and keepalive_seconds must be positive")
        if (self.root_certificates is not None or self.tls_server_name is not None) and not self.tls:
            raise ValueError("root_certificates and tls_server_name need tls=True")
        if (self.client_certificate is None) != (self.client_key is None):
            raise ValueError("mTLS needs both client_certificate and client_key (PEM bytes), or neither")
        if self.client_certificate is not None and not self.tls:
            raise ValueError("client_certificate and client_key need tls=True")

    def service_config(self) -> str:
        """gRPC service config JSON: round_robin, and the UNAVAILABLE retry policy on both services."""
        config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
        if self.retry_attempts > 1:
            config["methodConfig"] = [
                {
                    "name": [{"service": s} for s in SERVICES],
                    "retryPolicy": {
                        "maxAttempts": self.retry_attempts,
                        "initialBackoff": "0.2s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        return json.dumps(config)

    def options(self) -> list[tuple[str, Any]]:
        """Channel arguments for grpc.*_channel and grpc.aio.*_channel."""
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", int(self.keepalive_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", 10_000),
            # Keep pinging through a long encode, when no data flows (the default stops after 2 pings).
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.enable_retries", int(self.retry_attempts > 1)),
            # gRPC only retries a call whose request it still holds: 256 KiB by default, less than a photo.
            ("grpc.per_rpc_retry_buffer_size", self.max_message_bytes),
            # Reconnect soon after a restart (defaults: 1 s first, up to 120 s between attempts).
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 5_000),
            ("grpc.service_config", self.service_config()),
        ]
        if self.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return options

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Per-call metadata: the bearer token, if any."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def open_channel(module: Any, target: str, settings: ChannelSettings) -> Any:
    """`module` is `grpc` or `grpc.aio`: both clients build their channel the same way."""
    if settings.tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=settings.root_certificates,
            private_key=settings.client_key,
            certificate_chain=settings.client_certificate,
        )
        return module.secure_channel(target, credentials, options=settings.options())
    return module.insecure_channel(target, options=settings.options())


def _try_next_replica(failure: Sam3Error) -> bool:
    """Nothing answered (no reason: transport failure) or the replica is draining: another may serve it.
    A reasoned UNAVAILABLE such as STORE_UNAVAILABLE would be the same everywhere."""
    return failure.code == grpc.StatusCode.UNAVAILABLE and failure.reason in (None, Reason.SHUTTING_DOWN)


class Connection:
    """The channels and stubs behind one client: one channel, or one per service when split.

    `module` is `grpc` (Client) or `grpc.aio` (AsyncClient); everything else is the same.
    """

    def __init__(
        self,
        module: Any,
        target: str | None,
        encoder_target: str | None,
        decoder_target: str | None,
        settings: ChannelSettings | None,
        deadlines: Deadlines | None,
    ) -> None:
        encoder_target = encoder_target or target
        decoder_target = decoder_target or target
        if not encoder_target or not decoder_target:
            raise ValueError("give a target (host:port of `sam3 serve`) or both encoder_target and decoder_target")
        for given in {encoder_target, decoder_target}:
            check_target(given)
        self.settings = settings or ChannelSettings()
        self.deadlines = deadlines or Deadlines()
        decoder_channel = open_channel(module, decoder_target, self.settings)
        encoder_channel = (
            decoder_channel if encoder_target == decoder_target else open_channel(module, encoder_target, self.settings)
        )
        self.channels: list[Any] = (
            [decoder_channel] if encoder_channel is decoder_channel else [decoder_channel, encoder_channel]
        )
        self.targets = {ENCODER: encoder_target, DECODER: decoder_target, TRACKER: decoder_target}
        self.stubs: dict[str, Any] = {
            ENCODER: encoder_pb2_grpc.EncoderServiceStub(encoder_channel),
            DECODER: decoder_pb2_grpc.DecoderServiceStub(decoder_channel),
            TRACKER: tracker_pb2_grpc.TrackerServiceStub(decoder_channel),
        }
        self._metadata = self.settings.metadata()
        self._aio = module is not grpc
        self.affinity = (
            AffinityPool.for_target(module, decoder_target, self.settings) if self.settings.affinity else None
        )

    def close(self) -> list[Any]:
        """Close every channel; under grpc.aio the returned coroutines must be awaited."""
        return [channel.close() for channel in self.channels] + (self.affinity.close() if self.affinity else [])

    def stub_method(self, rpc: Rpc) -> Any:
        """The stub method that makes `rpc`, on its service's channel."""
        return getattr(self.stubs[rpc.service], rpc.method)

    def invoke(self, call: Call) -> Any:
        """Start `call` with the deadline, token and wait_for_ready. Unary: the response (grpc) or an
        awaitable of it (grpc.aio), failing with a Sam3Error that names the address that failed; calls
        about one image go to its replica first (see `affinity`). Streams: the response iterator, to read
        inside `stream_errors(responses, connection.targets[rpc.service])`."""
        key = call.route_key
        metadata = (*self._metadata, (HEADERS[call.rpc.route], key)) if key else self._metadata
        stub_class = type(self.stubs[call.rpc.service])
        attempts = [
            (address, partial(getattr(stub, call.rpc.method), call.request, timeout=call.timeout, metadata=metadata))
            for address, stub in (self.affinity.candidates(key, stub_class) if self.affinity and key else [])
        ]
        # Last, or only: the target given for the rpc's service, with gRPC's own balancing and retries.
        fallback = partial(
            self.stub_method(call.rpc),
            call.request,
            timeout=call.timeout,
            metadata=metadata,
            wait_for_ready=self.settings.wait_for_ready,
        )
        attempts.append((self.targets[call.rpc.service], fallback))
        if call.rpc.kind is not Kind.UNARY:  # on the session's replica (`stream_broke` moves it on), if any
            return attempts[0][1]()
        return self._first_answer_async(attempts) if self._aio else self._first_answer(attempts)

    def stream_broke(self, call: Call, failure: Sam3Error) -> None:
        """`call`'s stream broke with `failure`: when its replica went away, the calls routed to it go
        to their next address for a while (where the caller resumes it)."""
        key = call.route_key
        owners = self.affinity.candidates(key, lambda channel: channel) if self.affinity and key else []
        if owners:
            self._another_may_answer(owners[0][0], failure)

    def _first_answer(self, attempts: Sequence[tuple[str, Callable[[], Any]]]) -> Any:
        for index, (address, attempt) in enumerate(attempts):
            try:
                return attempt()
            except grpc.RpcError as error:
                failure = Sam3Error.from_rpc(error, address)
                if index == len(attempts) - 1 or not self._another_may_answer(address, failure):
                    raise failure from None

    async def _first_answer_async(self, attempts: Sequence[tuple[str, Callable[[], Awaitable[Any]]]]) -> Any:
        for index, (address, attempt) in enumerate(attempts):
            try:
                return await attempt()
            except grpc.RpcError as error:
                failure = Sam3Error.from_rpc(error, address)
                if index == len(attempts) - 1 or not self._another_may_answer(address, failure):
                    raise failure from None

    def _another_may_answer(self, address: str, failure: Sam3Error) -> bool:
        """After a replica's `failure`: whether to try the next address (this one is then skipped a while)."""
        if not _try_next_replica(failure):
            return False
        assert self.affinity is not None
        self.affinity.failed(address)
        return True


class ClientBase:
    """What Client and AsyncClient share: targets, settings, deadlines; `_grpc` is grpc or grpc.aio."""

    _grpc: Any = grpc

    def __init__(
        self,
        target: str | None = None,
        *,
        encoder_target: str | None = None,
        decoder_target: str | None = None,
        settings: ChannelSettings | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        """`target`: host:port (or dns:///name:port for round_robin over several addresses) serving both
        services; or `encoder_target` and `decoder_target` for separate deployments. A target without
        a port raises `targets.TargetError` (a ValueError): gRPC would dial 443. `settings`: TLS, token,
        retries, wait_for_ready, message size. `deadlines`: default seconds per method."""
        self._connection = Connection(self._grpc, target, encoder_target, decoder_target, settings, deadlines)
        self.settings = self._connection.settings
        self.deadlines = self._connection.deadlines
