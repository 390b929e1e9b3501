"""The error half of the wire contract, shared by the workers (which raise) and this SDK (which reads).

A failed call carries a gRPC status code, a message for people, and gRPC's standard rich error
model: the trailer "grpc-status-details-bin" holds a `google.rpc.Status` whose details are a
`google.rpc.ErrorInfo` (a machine-readable `Reason`, domain "sam3.v1", metadata such as the "limit"
that was exceeded) and, for a bad request field, a `google.rpc.BadRequest` naming it (also in the
metadata as "field"). Every gRPC language reads it with its own helper (docs/api.md).
The workers encode it in one place (`sam3_serving.errors.ServiceError.abort`); this module decodes it
in one place (`Sam3Error.from_rpc`). Branch on `Sam3Error.code` or `Sam3Error.reason`, never on text.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from sam3_client.proto import common_pb2

__all__ = ["ERROR_DOMAIN", "ERROR_INFO_KEY", "Reason", "Sam3Error"]

# google.rpc.ErrorInfo.domain of every reason below.
ERROR_DOMAIN = "sam3.v1"
# Deprecated: the trailer of a serialized sam3.v1.ErrorInfo that workers before the standard model
# sent. Workers still send it alongside for SDKs that only read it; it goes in release 0.2.0
# (tests/test_protos.py fails at that version while it is still here).
ERROR_INFO_KEY = "sam3-error-bin"
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class Reason(enum.StrEnum):
    """Machine-readable failure reasons (ErrorInfo.reason), each with the status code it comes with."""

    EMBEDDING_NOT_FOUND = "EMBEDDING_NOT_FOUND"  # NOT_FOUND: call Encode, then retry.
    INVALID_IMAGE = "INVALID_IMAGE"  # INVALID_ARGUMENT: the bytes are not a decodable image.
    INVALID_PROMPT = "INVALID_PROMPT"  # INVALID_ARGUMENT: metadata "field" names the bad field.
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"  # RESOURCE_EXHAUSTED: metadata "limit" says which limit.
    OVERLOADED = "OVERLOADED"  # RESOURCE_EXHAUSTED: over a concurrency limit ("limit"), back off and retry.
    RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"  # RESOURCE_EXHAUSTED: the answer would exceed "limit".
    MALFORMED_REQUEST = "MALFORMED_REQUEST"  # INVALID_ARGUMENT: the request bytes are not a valid message.
    STREAM_IDLE = "STREAM_IDLE"  # DEADLINE_EXCEEDED: a stream sent nothing for too long; open a new one.
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"  # UNAVAILABLE: Redis cannot be reached.
    SHUTTING_DOWN = "SHUTTING_DOWN"  # UNAVAILABLE: the worker is draining; retry on another replica.
    UNAUTHENTICATED = "UNAUTHENTICATED"  # UNAUTHENTICATED: missing or wrong bearer token.
    CANCELLED = "CANCELLED"  # CANCELLED: the call ended mid-encode; nothing was stored.
    UNIMPLEMENTED = "UNIMPLEMENTED"  # UNIMPLEMENTED: this worker does not serve that service.
    CONCEPTS_NOT_SUPPORTED = "CONCEPTS_NOT_SUPPORTED"  # FAILED_PRECONDITION: the model serves clicks only.
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"  # NOT_FOUND: no such video session (closed, expired): open a new one.
    REVISION_MISMATCH = "REVISION_MISMATCH"  # FAILED_PRECONDITION: someone else wrote the session ("revision").
    SESSION_BUSY = "SESSION_BUSY"  # ABORTED: another call is writing the session; wait or cancel it, then retry.
    SESSION_LIMIT = "SESSION_LIMIT"  # RESOURCE_EXHAUSTED: a video session is at a limit ("limit").
    TRACKING_NOT_SUPPORTED = "TRACKING_NOT_SUPPORTED"  # FAILED_PRECONDITION: no tracking graphs or session store.
    MASK_INPUT_NOT_SUPPORTED = "MASK_INPUT_NOT_SUPPORTED"  # FAILED_PRECONDITION: the model takes no mask inputs.
    INTERNAL = "INTERNAL"  # INTERNAL: a bug in the worker (logged there); retrying will not help.

    @classmethod
    def parse(cls, text: str) -> Reason | None:
        """The member for a reason string; None for none or one this SDK does not know (a newer server)."""
        try:
            return cls(text)
        except ValueError:
            return None


class Sam3Error(Exception):
    """A failed call: the gRPC status code, the server's message, and its machine-readable reason.

    Branch on `code` (a grpc.StatusCode) or on `reason` (a `Reason`, or None when the failure came
    from the transport, e.g. nothing listening), never on the message text. `metadata` carries
    context such as the offending prompt "field" or the "limit" an image exceeded. `target` is the
    address the failed call went to (in a split deployment: the encoder's or the decoder's; with
    affinity: the replica's), None when no call failed (a timeout that expired between two rpcs).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
        target: str | None = None,
    ) -> None:
        super().__init__(f"{code.name}{f' from {target}' if target else ''}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.message, self.reason, self.metadata, self.target))

    @property
    def is_not_encoded(self) -> bool:
        """The decoder has no embeddings for this image: Encode, then ask again."""
        return self.code == grpc.StatusCode.NOT_FOUND

    def with_message(self, message: str) -> Sam3Error:
        """The same error (code, reason, metadata) explained differently."""
        return Sam3Error(self.code, message, self.reason, self.metadata, self.target)

    @classmethod
    def from_rpc(cls, error: Any, target: str | None = None) -> Sam3Error:
        """From a grpc.RpcError (sync stubs, streaming iterators) or grpc.aio.AioRpcError (async stubs)
        of a call sent to `target`.

        The only place that reads the error details back from a failed call: the standard
        google.rpc.Status, else (a worker from before it) the deprecated sam3-error-bin trailer.
        """
        try:
            info = _standard_error_info(error) or _legacy_error_info(error)
        except Exception:  # a garbled trailer must not hide the status itself
            info = None
        info = info or common_pb2.ErrorInfo()
        return cls(error.code(), error.details() or "", Reason.parse(info.reason), info.metadata, target)

    @classmethod
    def from_item(cls, item: common_pb2.ItemError, target: str | None = None) -> Sam3Error:
        """From the error of one item of a stream that carried on (EncodeBatch, SegmentStream) at `target`."""
        code = _CODES.get(item.code, grpc.StatusCode.UNKNOWN)
        return cls(code, item.message, Reason.parse(item.info.reason), item.info.metadata, target)


def _standard_error_info(error: Any) -> common_pb2.ErrorInfo | None:
    """The sam3 google.rpc.ErrorInfo in grpc-status-details-bin, as the ErrorInfo this SDK has always used."""
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
            return common_pb2.ErrorInfo(reason=info.reason, metadata=info.metadata)
    return None


def _legacy_error_info(error: Any) -> common_pb2.ErrorInfo | None:
    """The deprecated sam3-error-bin trailer of workers from before the standard model."""
    trailing = getattr(error, "trailing_metadata", None)
    metadata: Sequence[tuple[str, str | bytes]] = (trailing() if callable(trailing) else None) or ()
    for key, value in metadata:
        if key == ERROR_INFO_KEY:
            return common_pb2.ErrorInfo.FromString(value if isinstance(value, bytes) else value.encode("latin-1"))
    return None
