"""What the worker's interceptors share: one concern around every application rpc, whatever its arity.

Each concern (sam3_serving.call_log, .error_status, .auth, .admission, .message_checks) is a
`RpcInterceptor`: `around(rpc)` is entered before the servicer runs and left when it has answered,
ended its stream or failed; `request` and `response` see each message. The worker chains them
outermost first, so an outer one sees what the inner ones decided (the call log sees the status the
error conversion set). Health and reflection are exempt unless an interceptor `covers` them: probes
and grpcurl must work as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection

__all__ = ["EXEMPT_SERVICES", "Continuation", "Rpc", "RpcInterceptor", "arity", "split_method", "status_code"]

# Reached without a token and never counted as load.
EXEMPT_SERVICES = frozenset({health.SERVICE_NAME, reflection.SERVICE_NAME})

Continuation = Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None]


def split_method(full_method: str) -> tuple[str, str]:
    """'/sam3.v1.DecoderService/Segment' -> ('sam3.v1.DecoderService', 'Segment')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def status_code(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    """The code the handler set so far (grpcio has ServicerContext.code() since 1.38; the stubs lag)."""
    code: grpc.StatusCode | None = context.code()  # type: ignore[attr-defined]
    return code


def arity(handler: grpc.RpcMethodHandler) -> str:
    """The RpcMethodHandler field holding the behavior: "unary_unary", ..., "stream_stream"."""
    return f"{'stream' if handler.request_streaming else 'unary'}_{'stream' if handler.response_streaming else 'unary'}"


@dataclass
class Rpc:
    """One application rpc as the interceptors see it."""

    service: str
    method: str
    # What inner interceptors and the servicer get; an interceptor may replace it (auth adds the caller).
    context: grpc.ServicerContext
    stream: bool  # its requests or its responses stream: it holds a handler thread for its whole life

    @property
    def full_method(self) -> str:
        return f"/{self.service}/{self.method}"


class RpcInterceptor(grpc.ServerInterceptor):
    """One concern around every application rpc of all four arities; override what the concern needs."""

    def covers(self, service: str) -> bool:
        """Whether this concern applies to `service`'s methods."""
        return service not in EXEMPT_SERVICES

    def around(self, rpc: Rpc) -> AbstractContextManager[object]:
        """Entered before the servicer runs, left when it has answered, ended its stream or failed."""
        return nullcontext()

    def request(self, request: Any) -> Any:
        """Each request, before the servicer sees it (after `around` was entered)."""
        return request

    def response(self, response: Any) -> Any:
        """Each response, before gRPC sends it."""
        return response

    def deserializer(self, parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
        """How request bytes become the message `request` receives."""
        return parse

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details) or _unserved(handler_call_details.method)
        if handler is None:
            return None  # a method no .proto of this process declares: gRPC answers UNIMPLEMENTED
        service, method = split_method(handler_call_details.method)
        if not self.covers(service):
            return handler
        return self._wrap(handler, service, method)

    def _wrap(self, handler: grpc.RpcMethodHandler, service: str, method: str) -> grpc.RpcMethodHandler:
        behavior = getattr(handler, arity(handler))
        stream = handler.request_streaming or handler.response_streaming
        requests = self._requests if handler.request_streaming else self.request

        def answer(request: Any, context: grpc.ServicerContext) -> Any:
            rpc = Rpc(service, method, context, stream)
            with self.around(rpc):
                return self.response(behavior(requests(request), rpc.context))

        def answer_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            rpc = Rpc(service, method, context, stream)
            with self.around(rpc):
                responses = behavior(requests(request), rpc.context)
                try:
                    for response in responses:
                        yield self.response(response)
                finally:  # a call abandoned between two responses ends the inner layers first
                    close = getattr(responses, "close", None)
                    if close is not None:
                        close()

        return handler._replace(  # type: ignore[attr-defined, no-any-return]
            request_deserializer=self.deserializer(handler.request_deserializer),
            **{arity(handler): answer_stream if handler.response_streaming else answer},
        )

    def _requests(self, requests: Iterator[Any]) -> Iterator[Any]:
        if type(self).request is RpcInterceptor.request:
            return requests  # nothing to see: the servicer reads gRPC's own iterator
        return (self.request(request) for request in requests)


def _not_served(*_args: Any) -> NoReturn:
    raise NotImplementedError  # -> UNIMPLEMENTED with details (sam3_serving.error_status)


def _unserved(full_method: str) -> grpc.RpcMethodHandler | None:
    """A handler refusing a declared method this worker does not serve (Segment on an encoder-only
    worker), so the UNIMPLEMENTED it gets carries the error details like every other status."""
    try:
        method = descriptor_pool.Default().FindMethodByName(".".join(split_method(full_method)))
    except KeyError:
        return None
    if method.client_streaming:
        if method.server_streaming:
            return grpc.stream_stream_rpc_method_handler(_not_served)
        return grpc.stream_unary_rpc_method_handler(_not_served)
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(_not_served)
    return grpc.unary_unary_rpc_method_handler(_not_served)
