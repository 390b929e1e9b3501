"""The gRPC server both workers run: the encoder and decoder differ only in their servicers, so the
`Worker` around them is built once, from one module per concern:

- configuration: sam3_serving.config (`ServerConfig`, `Service`), roles: sam3_serving.roles;
- interceptors, outermost first: the call log and metrics (call_log), errors -> status with rich details
  (error_status), authentication (auth), admission: shutting down, stream slots (admission), messages
  that do not parse or do not fit (message_checks); their shared plumbing is sam3_serving.interception;
- health and readiness on their own thread pool (health_service), reflection for grpcurl / grpcui;
- start, graceful stop and stop signals (lifecycle); log formats (logs).

Every status this code sets carries the rich error details; only gRPC's own (unknown method, message
too large, deadline exceeded) do not. Servicers read the caller's tenant with `auth.tenant_of(context)`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent import futures

import grpc
from grpc_reflection.v1alpha import reflection

from sam3_serving import metrics
from sam3_serving.admission import Admission, AdmissionControl
from sam3_serving.auth import Authentication, Authenticator, load_tenant_tokens
from sam3_serving.call_log import CallLog
from sam3_serving.config import ServerConfig, Service
from sam3_serving.error_status import ErrorStatus
from sam3_serving.health_service import HealthService, OwnPool
from sam3_serving.lifecycle import Shutdown, handle_stop_signals, listen
from sam3_serving.message_checks import MessageChecks
from sam3_serving.roles import Role, worker_label

__all__ = ["Worker"]

log = logging.getLogger(__name__)

# Threads of the health service's own pool: probes never queue behind application calls.
_HEALTH_THREADS = 2


class Worker:
    """A running gRPC server with health, reflection, interceptors, metrics and graceful shutdown."""

    def __init__(
        self,
        config: ServerConfig,
        services: Sequence[Service],
        *,
        roles: Collection[Role],
        ready: Callable[[], bool],
        ready_interval: float = 2.0,
    ) -> None:
        if not services:
            raise ValueError("a Worker needs at least one Service")
        names = [service.name for service in services]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate service names: {names}")
        self.config = config
        self.services = tuple(services)
        self.roles = frozenset(roles)
        self.label = worker_label(self.roles)
        self.port: int = config.port
        self.metrics_port: int | None = None
        self._auth = Authenticator(
            config.auth_token,
            load_tenant_tokens(config.tenants_file) if config.tenants_file else None,
            config.tenant_from_cert,
        )
        self._admission = Admission(self.label, config.stream_slots)
        self._health = HealthService(names, ready, ready_interval, self.label)
        self._shutdown = Shutdown(self.label, self._admission, self._health)
        self._server: grpc.Server | None = None
        self._lock = threading.Lock()  # start() and the closing of admission happen one after the other

    def start(self) -> Worker:
        """Bind, register everything and start serving; returns self (port is then the bound port)."""
        config = self.config
        with self._lock:
            if self._server is not None or self._admission.closed:
                raise RuntimeError("a Worker can be started once")
            health_pool = futures.ThreadPoolExecutor(_HEALTH_THREADS, thread_name_prefix=f"{self.label}-health")
            server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix=f"{self.label}-rpc"),
                interceptors=[
                    OwnPool(health_pool),
                    CallLog(self.label),
                    ErrorStatus(self.label),
                    Authentication(self._auth),
                    AdmissionControl(self._admission),
                    MessageChecks(config.max_send_bytes),
                ],
                options=config.server_options(),
            )
            for service in self.services:
                service.register(server)
            self._health.register(server)
            reflection.enable_server_reflection(
                [*(service.name for service in self.services), HealthService.NAME, reflection.SERVICE_NAME], server
            )
            port = listen(server, config)
            self._health.start()
            cleanups: list[Callable[[], None]] = [lambda: health_pool.shutdown(wait=False)]
            if config.metrics_port is not None:
                metrics_http = metrics.start_metrics_server(config.metrics_port, config.host.strip("[]"))
                self.metrics_port = int(metrics_http.server_port)
                cleanups += [metrics_http.shutdown, metrics_http.server_close]
            server.start()
            self._shutdown.serving(server, *cleanups)
            self._server = server
            self.port = port
        log.info(
            "%s worker listening on %s",
            self.label,
            config.address(port),
            extra={
                "worker": self.label,
                "port": port,
                "tls": config.tls,
                "auth": self._auth.enabled,
                "mtls": config.tls_client_ca is not None,
                "metrics_port": self.metrics_port,
                "services": [service.name for service in self.services],
            },
        )
        return self

    def wait(self) -> None:
        """Block until the worker has stopped (wakes regularly so the main thread can handle signals)."""
        while not self._shutdown.stopped.wait(0.5):
            pass

    def stop(self, grace: float | None = None) -> None:
        """Stop gracefully: NOT_SERVING, reject new calls, let running ones finish within `grace` seconds.

        Idempotent and thread-safe; every caller returns once the server is down. A later call with a
        shorter grace shortens the wait (a second Ctrl-C stops at once).
        """
        grace = self.config.grace_seconds if grace is None else max(0.0, grace)
        with self._lock:
            closing = self._admission.close(time.monotonic() + grace)
        self._shutdown.proceed(closing)

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT -> stop(config.grace_seconds); a second signal stops at once. Main thread only."""
        handle_stop_signals(self.stop, self.config.grace_seconds, lambda: self.shutting_down, self.label)

    def run_in_background(self, name: str, target: Callable[[threading.Event], None]) -> None:
        """Run `target(stopping)` on a daemon thread; `stopping` is set when the worker stops."""
        stopping = self._shutdown.stopping
        threading.Thread(target=target, args=(stopping,), name=f"{self.label}-{name}", daemon=True).start()

    @property
    def shutting_down(self) -> bool:
        """True from the first stop() on: health is NOT_SERVING and new calls are refused."""
        return self._admission.closed

    @property
    def in_flight(self) -> int:
        """Application calls of this worker running now (what sam3_in_flight_requests exports)."""
        return self._admission.in_flight

    def __enter__(self) -> Worker:
        if self._server is None and not self.shutting_down:
            self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop(0.0)
