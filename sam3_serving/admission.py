"""Who gets in: the application calls a worker runs, the streams it holds open, and its closing.

Streams hold a handler thread for their whole life, so at most `stream_slots` (below the thread
count) are open at once; more are RESOURCE_EXHAUSTED / OVERLOADED at once and unary calls keep a share.
Reflection streams take slots too, though they are neither authenticated nor counted as load. Once the
worker stops, new calls are UNAVAILABLE / SHUTTING_DOWN while the server stays reachable, and the
stop waits (`drain`) for the admitted ones until its deadline, which a later, shorter stop moves
earlier. `sam3_in_flight_requests{worker=...}` follows the admitted calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

from sam3_serving import metrics
from sam3_serving.errors import Reason, ServiceError
from sam3_serving.interception import Rpc, RpcInterceptor

__all__ = ["Admission", "AdmissionControl", "Closing"]


@dataclass(frozen=True)
class Closing:
    """What one `Admission.close` found."""

    first: bool  # this call closed admission: its caller runs the stop
    hurry: bool  # the deadline moved earlier after the drain was over: shorten the server's own stop
    deadline: float  # time.monotonic() by which the running calls must end


class Admission:
    def __init__(self, label: str, stream_slots: int) -> None:
        self._label = label
        self._stream_slots = stream_slots
        self._changed = threading.Condition()  # guards everything below
        self._calls = 0
        self._streams = 0
        self._closed = False
        self._drained = False
        self._deadline: float | None = None
        self._gauge = metrics.IN_FLIGHT.labels(worker=label)  # exported as 0 from the start

    @contextmanager
    def call(self, *, stream: bool) -> Iterator[None]:
        """Count an application call in for its duration (a stream in a stream slot), or raise the
        ServiceError that refuses it."""
        with self._changed:
            if self._closed:
                raise ServiceError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the {self._label} worker is shutting down; retry on another replica",
                    Reason.SHUTTING_DOWN,
                )
            if stream:
                self._take_stream_slot()
            self._calls += 1
            self._gauge.inc()
        try:
            yield
        finally:
            with self._changed:
                self._streams -= stream
                self._calls -= 1
                self._gauge.dec()
                if self._calls == 0:
                    self._changed.notify_all()

    @contextmanager
    def stream_slot(self) -> Iterator[None]:
        """Hold a stream slot for an exempt stream (reflection), or raise the ServiceError that refuses it."""
        with self._changed:
            self._take_stream_slot()
        try:
            yield
        finally:
            with self._changed:
                self._streams -= 1

    @property
    def in_flight(self) -> int:
        """Application calls admitted and not finished."""
        return self._calls

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, deadline: float) -> Closing:
        """Refuse new calls from now on; the running ones must end by `deadline` (the earliest one asked)."""
        with self._changed:
            first = not self._closed
            self._closed = True
            shortened = self._deadline is None or deadline < self._deadline
            if shortened:
                self._deadline = deadline
                self._changed.notify_all()  # a drain in progress uses the new deadline
            assert self._deadline is not None
            return Closing(first, shortened and self._drained, self._deadline)

    def drain(self) -> tuple[int, float]:
        """After close(): wait until no admitted call is left or the deadline passed.

        Returns the calls still running (to be cancelled) and the seconds left until the deadline.
        """
        with self._changed:
            assert self._deadline is not None, "close() first"
            while self._calls > 0 and (remaining := self._deadline - time.monotonic()) > 0:
                self._changed.wait(remaining)
            self._drained = True
            return self._calls, max(0.0, self._deadline - time.monotonic())

    def _take_stream_slot(self) -> None:
        if self._streams >= self._stream_slots:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the {self._label} worker already has {self._stream_slots} streams open (--max-streams); "
                "close idle streams, retry with backoff, or use unary calls",
                Reason.OVERLOADED,
                limit="max_streams",
            )
        self._streams += 1


class AdmissionControl(RpcInterceptor):
    """Admits each application rpc through `Admission`; a reflection stream only takes a stream slot."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    def covers(self, service: str) -> bool:
        return service != health.SERVICE_NAME

    def around(self, rpc: Rpc) -> AbstractContextManager[None]:
        if rpc.service == reflection.SERVICE_NAME:
            return self._admission.stream_slot()
        return self._admission.call(stream=rpc.stream)
