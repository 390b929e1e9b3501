"""Messages gRPC would mishandle, refused with a status that says why.

- Request bytes that do not parse are INVALID_ARGUMENT / MALFORMED_REQUEST, after authentication
  (gRPC itself would answer INTERNAL and log a traceback, before anyone was authenticated).
- A response over the send limit is RESOURCE_EXHAUSTED / RESPONSE_TOO_LARGE (`limit`
  max_message_bytes), recorded as such: gRPC would refuse it after the fact and count it OK. The
  decoder refuses most such answers before computing them (decoder_service.budget); this is the
  last line of defence, for every rpc.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from sam3_serving.errors import Reason, ServiceError, response_too_large
from sam3_serving.interception import RpcInterceptor

__all__ = ["MessageChecks"]


class _Malformed:
    """What a request that does not parse becomes, so the call fails INVALID_ARGUMENT after auth."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


class MessageChecks(RpcInterceptor):
    def __init__(self, max_send_bytes: int) -> None:
        self._max_send_bytes = max_send_bytes

    def deserializer(self, parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
        """Parse errors become `_Malformed` instead of gRPC's INTERNAL with a logged traceback."""
        if parse is None:
            return None

        def tolerant(data: bytes) -> Any:
            try:
                return parse(data)
            except Exception as error:
                return _Malformed(str(error) or type(error).__name__)

        return tolerant

    def request(self, request: Any) -> Any:
        if isinstance(request, _Malformed):
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request is not a valid protobuf message for this method ({request.problem})",
                Reason.MALFORMED_REQUEST,
            )
        return request

    def response(self, response: Any) -> Any:
        size = len(response) if isinstance(response, bytes) else response.ByteSize()
        if size > self._max_send_bytes:
            raise response_too_large(
                f"the response would be {size} bytes, over the worker's {self._max_send_bytes}-byte message "
                "limit (--max-message-mb): ask for fewer objects or masks, or a compact mask format",
                limit="max_message_bytes",
            )
        return response
