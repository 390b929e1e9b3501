"""What every application rpc leaves behind: its count and duration in Prometheus, and one log line.

The outermost interceptor, so it records the status the client saw: the one the error conversion set,
CANCELLED or DEADLINE_EXCEEDED for a client that went away, OK otherwise. INTERNAL and UNKNOWN lines
are errors, the rest INFO, on the logger "sam3_serving.rpc" (method, code, ms, peer, worker).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from sam3_serving import metrics
from sam3_serving.interception import Rpc, RpcInterceptor, status_code

__all__ = ["CallLog"]

rpc_log = logging.getLogger("sam3_serving.rpc")


class CallLog(RpcInterceptor):
    def __init__(self, label: str) -> None:
        self._label = label  # the worker's, on every line

    @contextmanager
    def around(self, rpc: Rpc) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._record(rpc, time.perf_counter() - start)

    def _record(self, rpc: Rpc, seconds: float) -> None:
        code = final_code(rpc.context)
        metrics.RPCS.labels(service=rpc.service, method=rpc.method, code=code.name).inc()
        metrics.RPC_SECONDS.labels(service=rpc.service, method=rpc.method).observe(seconds)
        level = logging.ERROR if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) else logging.INFO
        ms = round(seconds * 1000.0, 3)
        rpc_log.log(
            level,
            "%s %s %.1f ms",
            rpc.full_method,
            code.name,
            ms,
            extra={
                "method": rpc.full_method,
                "code": code.name,
                "ms": ms,
                "peer": rpc.context.peer(),
                "worker": self._label,
            },
        )


def final_code(context: grpc.ServicerContext) -> grpc.StatusCode:
    """The status an ended rpc had: the one set on it, else CANCELLED / DEADLINE_EXCEEDED when its client is
    gone, else OK."""
    code = status_code(context)
    if code not in (None, grpc.StatusCode.OK) or context.is_active():
        return code or grpc.StatusCode.OK
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED
