"""grpc.health.v1 as a worker serves it: readiness that follows `ready()`, liveness until shutdown.

"" and every service name report SERVING only while the worker's `ready()` callable says so (model
loaded and Redis reachable), re-evaluated on a background thread; every change is logged with its
reason, so NOT_SERVING never goes unexplained. "liveness" reports SERVING until shutdown and never
depends on Redis, so a Redis outage takes the pods out of rotation without Kubernetes restarting
them. List answers all of them at once. Health runs on its own small thread pool (`OwnPool`), so a
worker whose handler threads are all busy still answers probes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sam3_serving.interception import Continuation, arity

__all__ = ["LIVENESS", "HealthService", "OwnPool"]

log = logging.getLogger(__name__)

# Health "service" name Kubernetes liveness probes ask for (grpc probe `service: liveness`).
LIVENESS = "liveness"
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Health(health.HealthServicer):
    """grpc.health.v1 as grpcio-health-checking serves it, plus List (which it answers UNIMPLEMENTED)."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(experimental_non_blocking=True)
        self._names = tuple(names)

    def List(self, request: health_pb2.HealthListRequest, context: grpc.ServicerContext) -> Any:
        statuses = {name: self.Check(health_pb2.HealthCheckRequest(service=name), context) for name in self._names}
        return health_pb2.HealthListResponse(statuses=statuses)


class HealthService:
    """The health of one worker serving `services` (full names), as `ready` and the lifecycle say."""

    NAME = health.SERVICE_NAME

    def __init__(self, services: Sequence[str], ready: Callable[[], bool], interval: float, label: str) -> None:
        if interval <= 0:
            raise ValueError(f"ready_interval must be positive, got {interval}")
        self._readiness_names = ("", *services)
        self._servicer = _Health((*self._readiness_names, LIVENESS))
        self._ready = ready
        self._interval = interval
        self._label = label
        self._stopping = threading.Event()
        self._is_ready: bool | None = None
        self._not_ready_reason: str | None = None

    def register(self, server: grpc.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    def start(self) -> None:
        """Liveness SERVING, readiness as ready() says now, then re-evaluated every interval until stop()."""
        self._servicer.set(LIVENESS, _SERVING)
        self._refresh()
        threading.Thread(target=self._poll, name=f"{self._label}-ready", daemon=True).start()

    def stop(self) -> None:
        """Every status, liveness included, NOT_SERVING for good."""
        self._stopping.set()
        self._servicer.enter_graceful_shutdown()

    def _refresh(self) -> None:
        """Evaluate ready() (an exception means not ready, its message says why) and publish a change."""
        reason = None
        try:
            ready = bool(self._ready())
        except Exception as error:
            ready, reason = False, f"{type(error).__name__}: {error}"
        if (ready, reason) == (self._is_ready, self._not_ready_reason) or self._stopping.is_set():
            return
        if ready != self._is_ready:
            for name in self._readiness_names:
                self._servicer.set(name, _SERVING if ready else _NOT_SERVING)  # ignored once stopped
        if self._is_ready is not None or not ready:
            log.log(
                logging.INFO if ready else logging.WARNING,
                "%s worker is %s",
                self._label,
                "ready" if ready else f"not ready: {reason or 'readiness check failed'}",
                extra={"worker": self._label, "ready": ready, "reason": reason},
            )
        self._is_ready, self._not_ready_reason = ready, reason

    def _poll(self) -> None:
        while not self._stopping.wait(self._interval):
            self._refresh()


class OwnPool(grpc.ServerInterceptor):
    """Runs the health service's handlers on `pool` (grpcio's experimental_thread_pool), never queued
    behind application calls."""

    def __init__(self, pool: futures.ThreadPoolExecutor) -> None:
        self._pool = pool

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(f"/{health.SERVICE_NAME}/"):
            return handler
        return handler._replace(**{arity(handler): self._moved(getattr(handler, arity(handler)))})  # type: ignore[attr-defined, no-any-return]

    def _moved(self, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            return behavior(*args, **kwargs)

        run.experimental_non_blocking = getattr(behavior, "experimental_non_blocking", False)  # type: ignore[attr-defined]
        run.experimental_thread_pool = self._pool  # type: ignore[attr-defined]
        return run
