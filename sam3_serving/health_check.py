"""Asking a worker over grpc.health.v1 whether it serves: one Check, or waiting until it does.

The callers: `sam3 health` (container healthchecks), the CLI naming which of several targets is
down, and whatever starts a worker process and must wait for it (tests, `sam3 bench`). Imports only
grpc, so a healthcheck answers in a fraction of a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["check", "services", "wait_until_serving"]


def check(target: str, service: str = "", *, timeout: float, **tls: Any) -> str:
    """The worker's status for `service` ('' = the whole worker): "SERVING", "NOT_SERVING", ...

    One attempt on a plain channel (no retries): a healthcheck should answer or fail at once. Raises
    grpc.RpcError when the call fails (UNAVAILABLE: nothing listens; NOT_FOUND: unknown service).
    Workers with mTLS need `client_certificate` and `client_key` (PEM) even for health (see `_channel`).
    """
    with _channel(target, **tls) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def services(target: str, *, timeout: float, **tls: Any) -> list[str]:
    """Every service name the worker reports health for ('' first, then by name), with Health/List.

    To tell someone who asked for a name the worker does not know which names it does. Raises
    grpc.RpcError as `check` does (UNIMPLEMENTED: a server without List).
    """
    with _channel(target, **tls) as channel:
        response = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=timeout)
    return sorted(response.statuses, key=lambda name: (name != "", name))


def _channel(
    target: str,
    *,
    tls: bool = False,
    root_certificates: bytes | None = None,
    client_certificate: bytes | None = None,
    client_key: bytes | None = None,
) -> grpc.Channel:
    if tls or root_certificates or client_certificate:
        credentials = grpc.ssl_channel_credentials(root_certificates, client_key, client_certificate)
        return grpc.secure_channel(target, credentials)
    return grpc.insecure_channel(target)


def wait_until_serving(target: str, *, timeout: float = 60.0, alive: Callable[[], bool] = lambda: True) -> None:
    """Blocks until the worker at `target` reports SERVING (model loaded, Redis reachable).

    Raises TimeoutError after `timeout` seconds, or RuntimeError as soon as `alive()` turns false (a
    worker process that exited will never answer).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the worker for {target} stopped before it was serving")
        try:
            if check(target, timeout=1) == "SERVING":
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{target} did not become SERVING within {timeout:g} s")
