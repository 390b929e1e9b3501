"""Typed rpc errors: servicers raise `ServiceError`, clients branch on its `Reason`, not on text.

A servicer raises `ServiceError(code, message, reason, **metadata)` anywhere below a handler; the
worker's interceptor (sam3_serving.error_status) calls `ServiceError.abort`, the one place that puts the
status on the wire in gRPC's standard rich error model: "grpc-status-details-bin" holding a
google.rpc.Status with a google.rpc.ErrorInfo (reason, domain, metadata) and, when the metadata names
a request "field", a google.rpc.BadRequest. The deprecated "sam3-error-bin" trailer (a sam3.v1.ErrorInfo)
goes alongside for older SDKs. Inside a stream that carries on after a failed item, `to_item_error()`
puts it in the response instead. The reasons, domain and keys are the SDK's (sam3_client.errors).
"""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from sam3_client.errors import ERROR_DOMAIN, ERROR_INFO_KEY, Reason
from sam3_client.proto import common_pb2

__all__ = ["Reason", "ServiceError", "response_too_large"]


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

    def rich_status(self) -> status_pb2.Status:
        """The google.rpc.Status: code, message, ErrorInfo, and BadRequest when a request field is to blame."""
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        info = error_details_pb2.ErrorInfo(reason=self.reason.value, domain=ERROR_DOMAIN, metadata=self.metadata)
        status.details.add().Pack(info)
        if "field" in self.metadata:
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=self.metadata["field"], description=self.message
            )
            status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        return status

    def abort(self, context: grpc.ServicerContext) -> NoReturn:
        """End the rpc with this error: the status, and its details as trailing metadata."""
        details = (
            *rpc_status.to_status(self.rich_status()).trailing_metadata,
            (ERROR_INFO_KEY, self._error_info().SerializeToString()),
        )
        replaced = {key for key, _ in details}
        kept = [(key, value) for key, value in (context.trailing_metadata() or ()) if key not in replaced]
        context.set_trailing_metadata((*kept, *details))
        context.abort(self.code, self.message)

    def to_item_error(self) -> common_pb2.ItemError:
        """The per-item error for streams that carry on (SegmentStream, EncodeBatch)."""
        return common_pb2.ItemError(code=self.code.value[0], message=self.message, info=self._error_info())


def response_too_large(message: str, *, limit: str) -> ServiceError:
    """An answer over one of the worker's limits (`limit` names it: max_message_bytes, max_mask_megapixels):
    RESOURCE_EXHAUSTED / RESPONSE_TOO_LARGE, the one form every such refusal takes."""
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, Reason.RESPONSE_TOO_LARGE, limit=limit)
