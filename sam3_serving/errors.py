"""Typed rpc errors: servicers raise `ServiceError`, clients branch on its `Reason`, not on text.

A servicer raises `ServiceError(code, message, reason, **metadata)` anywhere below a handler; the
worker's interceptor (sam3_serving.server) calls `ServiceError.abort`, the one place that puts the
status and its `sam3.v1.ErrorInfo` on the wire. Inside a stream that carries on after a failed item,
`to_item_error()` puts it in the response instead. The reasons and the trailer key are the SDK's
(sam3_client.errors), which reads them back.
"""

from __future__ import annotations

from typing import NoReturn

import grpc

from sam3_client.errors import ERROR_INFO_KEY, Reason
from sam3_client.proto import common_pb2

__all__ = ["Reason", "ServiceError"]


class ServiceError(Exception):
    """An expected failure with a status code, a human message and a machine-readable reason.

    Raised by servicer code at any depth, so validation and store code need no access to the
    grpc context; the server interceptor converts it (never logged as a crash).
    """

    def __init__(self, code: grpc.StatusCode, message: str, reason: Reason, **metadata: str) -> None:
        super().__init__(message)
        if code == grpc.StatusCode.OK:
            raise ValueError("a ServiceError cannot carry StatusCode.OK")
        self.code = code
        self.message = message
        self.reason = Reason(reason)
        self.metadata: dict[str, str] = {key: str(value) for key, value in metadata.items()}

    def __repr__(self) -> str:
        return f"ServiceError({self.code.name}, {self.message!r}, {self.reason.value}, {self.metadata!r})"

    def _error_info(self) -> common_pb2.ErrorInfo:
        return common_pb2.ErrorInfo(reason=self.reason.value, metadata=self.metadata)

    def abort(self, context: grpc.ServicerContext) -> NoReturn:
        """End the rpc with this error: the status, and the ErrorInfo as trailing metadata."""
        kept = [(key, value) for key, value in (context.trailing_metadata() or ()) if key != ERROR_INFO_KEY]
        context.set_trailing_metadata((*kept, (ERROR_INFO_KEY, self._error_info().SerializeToString())))
        context.abort(self.code, self.message)

    def to_item_error(self) -> common_pb2.ItemError:
        """The per-item error for streams that carry on (SegmentStream, EncodeBatch)."""
        return common_pb2.ItemError(code=self.code.value[0], message=self.message, info=self._error_info())
