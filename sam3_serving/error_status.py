"""Every failure of an rpc becomes a status a person can act on, with the rich error details.

`ServiceError` (raised by servicers, by authentication, admission and the message checks) goes on the
wire through `ServiceError.abort`: the status plus google.rpc.Status / ErrorInfo details. An unexpected
exception is INTERNAL (logged with its traceback; the worker keeps serving), a method the worker does
not implement UNIMPLEMENTED. A servicer's own `context.abort()` and a client that went away pass
through. Reflection is covered too (its streams take stream slots and may be refused), so only gRPC's
own statuses (unknown method, message too large, deadline exceeded) lack the details.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import grpc
from grpc_health.v1 import health

from sam3_serving.errors import Reason, ServiceError
from sam3_serving.interception import Rpc, RpcInterceptor, status_code

__all__ = ["ErrorStatus"]

log = logging.getLogger(__name__)
_INTERNAL_MESSAGE = "internal error; see the worker log"


class ErrorStatus(RpcInterceptor):
    def __init__(self, label: str) -> None:
        self._label = label  # the worker's, on the log line of an unexpected exception

    def covers(self, service: str) -> bool:
        return service != health.SERVICE_NAME

    @contextmanager
    def around(self, rpc: Rpc) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            self._fail(rpc, exc)

    def _fail(self, rpc: Rpc, exc: Exception) -> NoReturn:
        context = rpc.context
        if isinstance(exc, ServiceError):
            exc.abort(context)
        if _is_abort(exc, context) or not context.is_active():  # aborted by the servicer; or the client is gone
            raise exc
        if isinstance(exc, NotImplementedError):  # the generated base servicer's default
            message = f"{rpc.full_method} is not implemented by this worker"
            ServiceError(grpc.StatusCode.UNIMPLEMENTED, message, Reason.UNIMPLEMENTED).abort(context)
        log.error(
            "unhandled exception in %s",
            rpc.full_method,
            exc_info=exc,
            extra={"method": rpc.full_method, "worker": self._label},
        )
        ServiceError(grpc.StatusCode.INTERNAL, _INTERNAL_MESSAGE, Reason.INTERNAL).abort(context)


def _is_abort(exc: BaseException, context: grpc.ServicerContext) -> bool:
    """Whether `exc` is what context.abort() raises (a bare Exception after the code was set)."""
    return type(exc) is Exception and not exc.args and status_code(context) not in (None, grpc.StatusCode.OK)
