"""Typed rpc errors: servicers raise `ServiceError`, clients branch on `ErrorInfo.reason`, not on text.

A servicer raises `ServiceError(code, message, reason, **metadata)` anywhere below a handler; the
worker's interceptor (sam3_serving.server) turns it into the gRPC status plus the trailing metadata
key "sam3-error-bin" holding a serialized `sam3.v1.ErrorInfo` (see protos/sam3/v1/common.proto).
Inside a stream that carries on after a failed item, use `ServiceError.to_item_error()` instead.
Clients (and tests) read the detail back with `error_info(rpc_error)`.
"""

from __future__ import annotations

import enum

import grpc

from sam3_client._channel import ERROR_INFO_KEY, error_info
from sam3_client.proto import common_pb2

__all__ = ["ERROR_INFO_KEY", "Reason", "ServiceError", "error_info"]


class Reason(enum.StrEnum):
    """Machine-readable failure reasons (ErrorInfo.reason), each with the status code it comes with."""

    EMBEDDING_NOT_FOUND = "EMBEDDING_NOT_FOUND"  # NOT_FOUND: call Encode, then retry.
    INVALID_IMAGE = "INVALID_IMAGE"  # INVALID_ARGUMENT: the bytes are not a decodable image.
    INVALID_PROMPT = "INVALID_PROMPT"  # INVALID_ARGUMENT: metadata "field" names the bad field.
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"  # RESOURCE_EXHAUSTED: metadata "limit" says which limit.
    OVERLOADED = "OVERLOADED"  # RESOURCE_EXHAUSTED: over the concurrency limit, back off and retry.
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"  # UNAVAILABLE: Redis cannot be reached.
    SHUTTING_DOWN = "SHUTTING_DOWN"  # UNAVAILABLE: the worker is draining; retry on another replica.
    UNAUTHENTICATED = "UNAUTHENTICATED"  # UNAUTHENTICATED: missing or wrong bearer token.
    CANCELLED = "CANCELLED"  # CANCELLED: the call ended mid-encode; nothing was stored.


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

    def to_error_info(self) -> common_pb2.ErrorInfo:
        """The ErrorInfo message that travels in the trailer (or inside an ItemError)."""
        return common_pb2.ErrorInfo(reason=self.reason.value, metadata=self.metadata)

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        """Trailing metadata to set before aborting: the serialized ErrorInfo under ERROR_INFO_KEY."""
        return ((ERROR_INFO_KEY, self.to_error_info().SerializeToString()),)

    def to_item_error(self) -> common_pb2.ItemError:
        """The per-item error for streams that carry on (SegmentStream, EncodeBatch)."""
        return common_pb2.ItemError(code=self.code.value[0], message=self.message, info=self.to_error_info())
