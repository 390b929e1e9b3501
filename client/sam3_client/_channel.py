"""Channels, deadlines and errors: what the sync and async clients configure identically.

Retries are gRPC's own (service config): only UNAVAILABLE is retried, with exponential backoff,
because every other code means the same request would fail again. `dns:///host:port` targets with
several addresses are balanced per call with round_robin (gRPC balances connections, not calls).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import grpc

from sam3_client.proto import common_pb2

# "-bin" suffix: gRPC base64-encodes the value on the wire and grpcio hands over raw bytes.
ERROR_INFO_KEY = "sam3-error-bin"
SERVICES = ("sam3.v1.EncoderService", "sam3.v1.DecoderService")


@dataclass(frozen=True)
class Deadlines:
    """Default per-call deadlines in seconds; every call can override its own with `timeout=`."""

    encode: float = 300.0  # a full-size fp32 encode takes tens of seconds on a CPU
    segment: float = 10.0
    info: float = 5.0


@dataclass(frozen=True)
class ChannelSettings:
    """Transport options: message size, keepalive, retries, TLS and a bearer token."""

    max_message_bytes: int = 64 * 1024 * 1024
    keepalive_seconds: float = 30.0
    retry_attempts: int = 4
    tls: bool = False
    root_certificates: bytes | None = None  # PEM; None = the system's trust store
    token: str | None = None

    def service_config(self) -> str:
        return json.dumps(
            {
                "loadBalancingConfig": [{"round_robin": {}}],
                "methodConfig": [
                    {
                        "name": [{"service": s} for s in SERVICES],
                        "retryPolicy": {
                            "maxAttempts": self.retry_attempts,
                            "initialBackoff": "0.1s",
                            "maxBackoff": "2s",
                            "backoffMultiplier": 2,
                            "retryableStatusCodes": ["UNAVAILABLE"],
                        },
                    }
                ],
            }
        )

    def options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", int(self.keepalive_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", self.service_config()),
        ]


def open_channel(module: Any, target: str, settings: ChannelSettings) -> Any:
    """`module` is `grpc` or `grpc.aio`: both clients build their channel the same way."""
    if settings.tls:
        credentials = grpc.ssl_channel_credentials(root_certificates=settings.root_certificates)
        return module.secure_channel(target, credentials, options=settings.options())
    return module.insecure_channel(target, options=settings.options())


def call_metadata(settings: ChannelSettings) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {settings.token}"),) if settings.token else ()


class Sam3Error(Exception):
    """A failed call: the gRPC status code, the server's message, and its machine-readable reason."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "", metadata: dict[str, str] | None = None):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = metadata or {}

    @property
    def is_not_encoded(self) -> bool:
        """The decoder has no embeddings for this image: Encode, then ask again."""
        return self.code == grpc.StatusCode.NOT_FOUND

    @classmethod
    def from_rpc(cls, error: Any) -> Sam3Error:
        info = error_info(error)
        return cls(
            error.code(), error.details() or "", info.reason if info else "", dict(info.metadata) if info else {}
        )


def error_info(error: Any) -> common_pb2.ErrorInfo | None:
    """The ErrorInfo a worker attached to a failed call (trailing metadata `sam3-error-bin`), or None.

    Works for the RpcError a blocking stub raises and for a failed streaming call's iterator.
    """
    trailing = getattr(error, "trailing_metadata", None)
    if not callable(trailing):
        return None
    try:
        metadata = trailing() or ()
    except Exception:
        return None
    for key, value in metadata:
        if key != ERROR_INFO_KEY:
            continue
        info = common_pb2.ErrorInfo()
        try:
            info.ParseFromString(value if isinstance(value, bytes) else value.encode("latin-1"))
        except Exception:
            return None
        return info
    return None
