"""Asking a worker over grpc.health.v1 whether it serves: one Check, or waiting until it does.

The callers: `sam3 health` (container healthchecks), the CLI naming which of several targets is
down, and whatever starts a worker process and must wait for it (tests, `sam3 bench`). Imports only
grpc, so a healthcheck answers in a fraction of a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["check", "wait_until_serving"]


def check(
    target: str,
    service: str = "",
    *,
    timeout: float,
    tls: bool = False,
    root_certificates: bytes | None = None,
    client_certificate: bytes | None = None,
    client_key: bytes | None = None,
) -> str:
    """The worker's status for `service` ('' = the whole worker): "SERVING", "NOT_SERVING", ...

    One attempt on a plain channel (no retries): a healthcheck should answer or fail at once. Raises
    grpc.RpcError when the call fails (UNAVAILABLE: nothing listens; NOT_FOUND: unknown service).
    Workers with mTLS need `client_certificate` and `client_key` (PEM) even for health.
    """
    if tls or root_certificates or client_certificate:
        credentials = grpc.ssl_channel_credentials(root_certificates, client_key, client_certificate)
        channel = grpc.secure_channel(target, credentials)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


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
