"""What one Segment may cost, decided from the request before any mask is computed.

A 271-byte request can ask for 32 objects x 3 masks at 30 megapixels: seconds of upsampling and
gigabytes of memory, for a response gRPC would refuse anyway. So the decoder checks, before running:

- size: the bytes every format fixes in advance (packed bits, low-res logits) against `max_response_bytes`;
- work: full-size mask pixels (objects x masks x height x width) against `max_mask_pixels`;

and, while encoding masks whose size depends on their content (PNG, RLE), stops as soon as the running
total passes `max_response_bytes`. Masks are produced one at a time, so one call holds at most one
full-size mask besides its response. Refusals are RESOURCE_EXHAUSTED / RESPONSE_TOO_LARGE naming the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from sam3_client.proto import decoder_pb2
from sam3_core.graphs import MASKS_PER_OBJECT
from sam3_serving.errors import Reason, ServiceError

_FLOAT32_BYTES = 4


@dataclass(frozen=True)
class ResponseLimits:
    """Bounds on one Segment answer (each SegmentStream item too)."""

    max_response_bytes: int = 64 * 1024 * 1024  # match the worker's send limit (--max-message-mb)
    max_mask_pixels: int = 512_000_000  # full-size mask pixels computed per call (--max-mask-megapixels)

    def __post_init__(self) -> None:
        if self.max_response_bytes <= 0 or self.max_mask_pixels <= 0:
            raise ValueError("max_response_bytes and max_mask_pixels must be positive")


def masks_per_object(request: decoder_pb2.SegmentRequest) -> int:
    return MASKS_PER_OBJECT if request.selection == decoder_pb2.MASK_SELECTION_ALL else 1


def check_request(
    request: decoder_pb2.SegmentRequest,
    image_size: tuple[int, int],
    low_res_size: tuple[int, int],
    limits: ResponseLimits,
) -> None:
    """Refuse, before decoding, a request whose work or fixed-size answer is over the limits."""
    height, width = image_size
    masks = len(request.objects) * masks_per_object(request)
    fmt = request.mask_format
    fixed = masks * (-(-height * width // 8) if fmt == decoder_pb2.MASK_FORMAT_PACKED_BITS else 0)
    if request.return_low_res_logits:
        fixed += masks * low_res_size[0] * low_res_size[1] * _FLOAT32_BYTES
    if fixed > limits.max_response_bytes:
        _refuse(
            f"{masks} masks of {width}x{height} make a response of at least {fixed} bytes, over the "
            f"{limits.max_response_bytes}-byte message limit (--max-message-mb): ask for fewer objects or "
            "masks, or RLE",
            "max_message_bytes",
        )

    if fmt != decoder_pb2.MASK_FORMAT_NONE and masks * height * width > limits.max_mask_pixels:
        _refuse(
            f"{masks} masks of {width}x{height} are {masks * height * width / 1e6:.0f} megapixels to compute, over "
            f"the limit of {limits.max_mask_pixels / 1e6:.0f} (--max-mask-megapixels): ask for fewer objects, "
            "the best mask only, or mask_format NONE with low-res logits",
            "max_mask_megapixels",
        )


class ResponseBudget:
    """Running size of an answer being built; refuses as soon as it passes the limit."""

    def __init__(self, limits: ResponseLimits) -> None:
        self._limit = limits.max_response_bytes
        self.spent = 0

    def spend(self, nbytes: int) -> None:
        self.spent += nbytes
        if self.spent > self._limit:
            _refuse(
                f"the masks encoded so far already take {self.spent} bytes, over the {self._limit}-byte message "
                "limit (--max-message-mb): ask for fewer objects or masks, or a more compact mask format",
                "max_message_bytes",
            )


def _refuse(message: str, limit: str) -> None:
    raise ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, Reason.RESPONSE_TOO_LARGE, limit=limit)
