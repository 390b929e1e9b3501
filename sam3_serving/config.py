"""How a worker listens and what it serves: network, limits and security settings, checked at startup."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc

from sam3_serving.auth import valid_token

__all__ = ["ServerConfig", "Service"]


@dataclass(frozen=True)
class ServerConfig:
    """Network, limits and security settings of one worker's gRPC server."""

    host: str = "0.0.0.0"
    port: int = 50051  # 0 = any free port
    max_receive_bytes: int = 64 * 1024 * 1024  # photos exceed gRPC's 4 MiB default
    max_send_bytes: int = 64 * 1024 * 1024
    max_workers: int = 16  # handler threads
    # Streams at once (each holds a handler thread while open); None = half the handler threads.
    max_streams: int | None = None
    grace_seconds: float = 30.0  # SIGTERM: how long in-flight calls may take to finish
    metrics_port: int | None = None  # Prometheus HTTP port; None = no metrics server
    auth_token: str | None = None  # bearer token required in `authorization: Bearer <token>` metadata
    tenants_file: str | None = None  # `<tenant> <token>` lines: per-tenant tokens and key namespaces
    tls_cert: str | None = None  # PEM paths: serve TLS when both are given
    tls_key: str | None = None
    tls_client_ca: str | None = None  # PEM: require client certificates signed by this CA (mTLS)
    tenant_from_cert: bool = False  # the tenant is the client certificate's common name
    # Close connections after this long (clients reconnect and re-resolve DNS, so replicas an
    # autoscaler adds start getting traffic); None keeps connections for ever.
    max_connection_age_seconds: float | None = None

    def __post_init__(self) -> None:
        """Fail at startup on settings that would otherwise fail confusingly later."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in 0..65535, got {self.metrics_port}")
        if self.max_receive_bytes <= 0 or self.max_send_bytes <= 0:
            raise ValueError("max_receive_bytes and max_send_bytes must be positive")
        if self.max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {self.max_workers}")
        if self.max_streams is not None and not 1 <= self.max_streams < max(2, self.max_workers):
            raise ValueError(
                f"max_streams must be 1..{max(1, self.max_workers - 1)} (below the {self.max_workers} handler "
                f"threads, so unary calls always have one), got {self.max_streams}"
            )
        if self.grace_seconds < 0:
            raise ValueError(f"grace_seconds must be >= 0, got {self.grace_seconds}")
        if self.auth_token is not None and not valid_token(self.auth_token):
            raise ValueError(
                "auth_token must be a non-empty RFC 6750 bearer token (A-Z a-z 0-9 -._~+/ then =), "
                "or unset for no authentication"
            )
        if self.auth_token is not None and self.tenants_file is not None:
            raise ValueError("use either auth_token (one shared namespace) or tenants_file, not both")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key (PEM paths), or neither")
        if self.tls_client_ca is not None and not self.tls:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert and tls_key too")
        if self.tenant_from_cert and self.tls_client_ca is None:
            raise ValueError("tenant_from_cert needs tls_client_ca: only verified certificates name tenants")

    @property
    def stream_slots(self) -> int:
        """How many streams may be open at once."""
        return self.max_streams if self.max_streams is not None else max(1, self.max_workers // 2)

    @property
    def tls(self) -> bool:
        """Whether the server listens with TLS."""
        return self.tls_cert is not None and self.tls_key is not None

    def address(self, port: int | None = None) -> str:
        """host:port to bind or name (the configured port unless given), bracketing bare IPv6 literals."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port if port is None else port}"

    def server_options(self) -> list[tuple[str, int]]:
        """Channel args: explicit size limits, keepalive that tolerates client pings, no port sharing."""
        return [
            ("grpc.max_receive_message_length", self.max_receive_bytes),
            ("grpc.max_send_message_length", self.max_send_bytes),
            # Without this, gRPC sets SO_REUSEPORT and a second worker on the same port starts silently.
            ("grpc.so_reuseport", 0),
            # Accept client keepalive pings every >= 10 s, even on idle connections, instead of GOAWAY.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            # Ping clients ourselves so a vanished interactive client does not hold a handler thread.
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.http2.max_pings_without_data", 0),
            *(
                [
                    ("grpc.max_connection_age_ms", int(self.max_connection_age_seconds * 1000)),
                    # Calls still running at that age get the drain time a SIGTERM would give them.
                    ("grpc.max_connection_age_grace_ms", int(self.grace_seconds * 1000)),
                ]
                if self.max_connection_age_seconds
                else []
            ),
        ]


@dataclass(frozen=True)
class Service:
    """One gRPC service to serve: its full name (for health and reflection) and how to add it."""

    name: str  # full name, e.g. "sam3.v1.EncoderService" (from the pb2 DESCRIPTOR)
    register: Callable[[grpc.Server], None]  # e.g. lambda s: add_EncoderServiceServicer_to_server(servicer, s)
