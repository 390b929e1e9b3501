"""A worker's start and stop around its gRPC server: binding, the graceful stop, stop signals.

Graceful stop (SIGTERM): health goes NOT_SERVING, new calls get UNAVAILABLE / SHUTTING_DOWN while the
server stays reachable (sam3_serving.admission), running calls get up to the grace period to finish,
then the server stops; exempt streams (health Watch) get a moment more. Every stop() returns once the
server is down; a later, shorter one shortens the wait (a second Ctrl-C stops at once).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import grpc

from sam3_serving.admission import Admission, Closing
from sam3_serving.config import ServerConfig
from sam3_serving.health_service import HealthService

__all__ = ["FINAL_GRACE_SECONDS", "Shutdown", "handle_stop_signals", "listen"]

log = logging.getLogger(__name__)

# After the application calls drained, how long exempt streams (health Watch) may hold the stop.
FINAL_GRACE_SECONDS = 1.0
_BIND_HINT = "the port is in use (or the address is not this machine's); choose another with --port / SAM3_PORT"


def listen(server: grpc.Server, config: ServerConfig) -> int:
    """Bind `server` as `config` says (plain, TLS or mTLS) and return the port; OSError saying what to change."""
    address = config.address()
    try:
        if config.tls:
            assert config.tls_cert is not None and config.tls_key is not None
            client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
            credentials = grpc.ssl_server_credentials(
                [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {address}: {_BIND_HINT}") from exc
    if port == 0:
        raise OSError(f"cannot listen on {address}: {_BIND_HINT}")
    return port


class Shutdown:
    """The stop sequence of one worker, run once by the first stop(); later ones may only hurry it."""

    def __init__(self, label: str, admission: Admission, health: HealthService) -> None:
        self.stopping = threading.Event()  # set as the stop begins: background tasks end
        self.stopped = threading.Event()  # set once the server is down
        self._label = label
        self._admission = admission
        self._health = health
        self._server: grpc.Server | None = None
        self._cleanups: tuple[Callable[[], None], ...] = ()

    def serving(self, server: grpc.Server, *cleanups: Callable[[], None]) -> None:
        """The started server to stop, and what to release once it is down (pools, the metrics server)."""
        self._server, self._cleanups = server, cleanups

    def proceed(self, closing: Closing) -> None:
        """What a stop() does once admission is closed; returns when the server is down."""
        if closing.first:
            self._run()
        elif closing.hurry and self._server is not None:
            self._server.stop(max(0.0, closing.deadline - time.monotonic()))
        self.stopped.wait()

    def _run(self) -> None:
        self.stopping.set()
        self._health.stop()
        server = self._server
        if server is None:  # never started
            self.stopped.set()
            return
        extra = {"worker": self._label, "in_flight": self._admission.in_flight}
        log.info("%s worker shutting down: %d calls in flight", self._label, extra["in_flight"], extra=extra)
        abandoned, remaining = self._admission.drain()
        if abandoned:
            log.warning(
                "%s worker: grace period over, cancelling %d calls",
                self._label,
                abandoned,
                extra={"worker": self._label, "in_flight": abandoned},
            )
        # What is left are exempt streams (health Watch) and calls being refused: give them a moment only.
        server.stop(min(remaining, FINAL_GRACE_SECONDS)).wait()
        for cleanup in self._cleanups:
            cleanup()
        log.info("%s worker stopped", self._label, extra={"worker": self._label})
        self.stopped.set()


def handle_stop_signals(stop: Callable[[float], None], grace: float, stopping: Callable[[], bool], label: str) -> None:
    """SIGTERM and SIGINT -> stop(grace) on a new thread; a signal once `stopping()` stops at once.
    Main thread only."""

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        seconds = 0.0 if stopping() else grace
        log.info(
            "%s received: stopping with %.1f s grace", signal.Signals(signum).name, seconds, extra={"worker": label}
        )
        # Never block inside a signal handler: stop() waits for calls to drain.
        threading.Thread(target=stop, args=(seconds,), name=f"{label}-stop").start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
