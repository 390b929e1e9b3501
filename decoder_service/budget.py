"""What one answer may cost, decided before the work it bounds: one budget for Segment and SegmentConcept.

A 271-byte request can ask for 32 objects x 3 masks at 30 megapixels: seconds of upsampling and
gigabytes of memory, for a response gRPC would refuse anyway. So each answer (a Segment response, each
SegmentStream item, a SegmentConcept response) has a `ResponseBudget` with three limits:

- work: full-size mask pixels to compute, against `max_mask_pixels`;
- work: polygon corners to trace (MASK_FORMAT_POLYGON), against `max_polygon_corners`;
- size: the response's bytes, against `max_response_bytes`.

Masks are counted as soon as their number is known, before the first one is computed: from the request
(Segment), from its worst case (`check`: SegmentConcept with `max_instances`, before the concept
decoder runs), or from what the model found (`reserve`: each concept's instances). The bytes a mask
format fixes in advance (packed bits; decoder_service.mask_wire.fixed_bytes) and the low-res logits
count with them. Bytes that depend on content (PNG, RLE, a label image) are `spend`t as each mask is
encoded, and the answer stops as soon as the running total passes the limit; masks are produced one
at a time, so a call holds at most one full-size mask besides its response. A polygon outline is
budgeted before it is traced (`trace`): its corners are counted from the mask's runs in one cheap pass,
and at tolerance 0 its size is known exactly then too; a simplified outline is spent as encoded. A
speckled mask (random weights make them: 500,000 corners at 4000x3000) is therefore refused, or
answered, without tracing more than the limit allows. A video's per-frame result in a tracking stream
is one answer with its own budget, like a SegmentStream item. Every refusal is RESOURCE_EXHAUSTED /
RESPONSE_TOO_LARGE naming the limit (`max_message_bytes`, `max_mask_megapixels`, `max_polygon_corners`)
and what the caller can change (`Remedy`).
"""

from __future__ import annotations

from dataclasses import dataclass

from decoder_service.mask_wire import fixed_bytes
from sam3_serving.errors import response_too_large

__all__ = ["Remedy", "ResponseBudget", "ResponseLimits"]


@dataclass(frozen=True)
class ResponseLimits:
    """Bounds on one answer: a Segment or SegmentConcept response, each SegmentStream item."""

    max_response_bytes: int = 64 * 1024 * 1024  # match the worker's send limit (--max-message-mb)
    max_mask_pixels: int = 512_000_000  # full-size mask pixels computed per call (--max-mask-megapixels)
    max_polygon_corners: int = 2_000_000  # polygon corners traced per call (--max-polygon-corners)

    def __post_init__(self) -> None:
        if self.max_response_bytes <= 0 or self.max_mask_pixels <= 0 or self.max_polygon_corners <= 0:
            raise ValueError("max_response_bytes, max_mask_pixels and max_polygon_corners must be positive")


@dataclass(frozen=True)
class Remedy:
    """What a caller of one rpc can change when its answer is over a limit: the end of the refusal's message."""

    bytes: str  # over max_response_bytes
    pixels: str  # over max_mask_pixels
    # over max_polygon_corners (the same advice for every rpc: tracing comes before any simplification)
    corners: str = "ask for MASK_FORMAT_RLE, or fewer objects or masks: polygons are for object outlines"


class ResponseBudget:
    """The masks and bytes of one answer about an image of `size` (height, width), refused past `limits`."""

    def __init__(self, limits: ResponseLimits, size: tuple[int, int], remedy: Remedy) -> None:
        self.limits = limits
        self.size = size
        self.remedy = remedy
        self.masks = 0  # full-size masks to compute, reserved
        self.fixed = 0  # bytes known before encoding: fixed-size masks, low-res logits
        self.spent = 0  # bytes encoded so far
        self.corners = 0  # polygon corners traced so far

    def check(self, masks: int, because: str, *, mask_format: int, full_size: bool, extra_bytes: int = 0) -> None:
        """Refuse if `masks` more masks in `mask_format` (computed at full size or not) and `extra_bytes` would
        put the answer over a limit; reserve nothing. `because` says where the count comes from."""
        self._totals(masks, because, mask_format=mask_format, full_size=full_size, extra_bytes=extra_bytes)

    def reserve(self, masks: int, because: str, *, mask_format: int, full_size: bool, extra_bytes: int = 0) -> None:
        """`check`, then count the masks and bytes toward this answer."""
        self.masks, self.fixed = self._totals(
            masks, because, mask_format=mask_format, full_size=full_size, extra_bytes=extra_bytes
        )

    def _totals(
        self, masks: int, because: str, *, mask_format: int, full_size: bool, extra_bytes: int
    ) -> tuple[int, int]:
        """(masks to compute, fixed bytes) of the answer with these masks too; refused past a limit."""
        height, width = self.size
        fixed = self.fixed + masks * fixed_bytes(mask_format, self.size) + extra_bytes
        if fixed > self.limits.max_response_bytes:
            raise response_too_large(
                f"{masks} masks of {width}x{height} ({because}) make a response of at least {fixed} bytes, over "
                f"the {self.limits.max_response_bytes}-byte message limit (--max-message-mb): {self.remedy.bytes}",
                limit="max_message_bytes",
            )
        computed = self.masks + (masks if full_size else 0)
        if computed * height * width > self.limits.max_mask_pixels:
            raise response_too_large(
                f"{computed} masks of {width}x{height} ({because}) are {computed * height * width / 1e6:.0f} "
                f"megapixels to compute, over the limit of {self.limits.max_mask_pixels / 1e6:.0f} "
                f"(--max-mask-megapixels): {self.remedy.pixels}",
                limit="max_mask_megapixels",
            )
        return computed, fixed

    def trace(self, corners: int, because: str, exact_bytes: int | None = None) -> None:
        """Count an outline's `corners` (the work of tracing it) before it is traced; `exact_bytes`, when its
        encoded size is already known (tolerance 0), is checked too. Refused past a limit; the bytes are
        spent by the caller once encoded."""
        if self.corners + corners > self.limits.max_polygon_corners:
            raise response_too_large(
                f"{because}: {corners} polygon corners to trace, {self.corners + corners} in this answer, over the "
                f"limit of {self.limits.max_polygon_corners} (--max-polygon-corners): {self.remedy.corners}",
                limit="max_polygon_corners",
            )
        if exact_bytes is not None and self.fixed + self.spent + exact_bytes > self.limits.max_response_bytes:
            raise response_too_large(
                f"{because}: an outline of {exact_bytes} bytes would take the answer over the "
                f"{self.limits.max_response_bytes}-byte message limit (--max-message-mb): {self.remedy.bytes}",
                limit="max_message_bytes",
            )
        self.corners += corners

    def spend(self, nbytes: int) -> None:
        """Count encoded bytes; refuse as soon as the running total passes the limit."""
        self.spent += nbytes
        if self.spent > self.limits.max_response_bytes:
            raise response_too_large(
                f"the masks encoded so far already take {self.spent} bytes, over the "
                f"{self.limits.max_response_bytes}-byte message limit (--max-message-mb): {self.remedy.bytes}",
                limit="max_message_bytes",
            )
