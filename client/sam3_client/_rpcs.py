"""The rpcs this SDK makes, in one table, and the default deadline of each (`Deadlines`).

Per rpc: the service and stub method that carry it, which `Deadlines` field bounds it by default,
whether it is about one image (its request has an `image_id`: `_affinity` sends it to the decoder
replica that owns the image, with the id in the `sam3-image-id` header for proxies) and whether it
is unary or a stream. Everything else (`Connection`, `_affinity`, the flows) reads this table
instead of naming rpcs; `tests/test_sdk_rpcs.py` holds it to the .proto files.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any

ENCODER = "sam3.v1.EncoderService"
DECODER = "sam3.v1.DecoderService"


class Kind(enum.Enum):
    UNARY = "unary"  # one request, one response: run by the step runner (`_steps`)
    STREAM = "stream"  # a request stream answered by a response stream, one answer per request, in order


class Rpc(enum.Enum):
    """Every rpc the SDK makes: (service, stub method, `Deadlines` field, routed by image id, kind)."""

    ENCODE = (ENCODER, "Encode", "encode", False, Kind.UNARY)
    ENCODE_BATCH = (ENCODER, "EncodeBatch", "stream", False, Kind.STREAM)
    SEGMENT = (DECODER, "Segment", "segment", True, Kind.UNARY)
    SEGMENT_STREAM = (DECODER, "SegmentStream", "stream", False, Kind.STREAM)
    PREFETCH = (DECODER, "Prefetch", "segment", True, Kind.UNARY)
    SEGMENT_CONCEPT = (DECODER, "SegmentConcept", "concept", True, Kind.UNARY)
    MODEL_INFO = (DECODER, "GetModelInfo", "info", False, Kind.UNARY)

    def __init__(self, service: str, method: str, deadline: str, routed: bool, kind: Kind) -> None:
        self.service = service
        self.method = method  # the stub's method name, as in the .proto
        self.deadline = deadline
        self.routed = routed
        self.kind = kind


SERVICES = sorted({rpc.service for rpc in Rpc})


@dataclass(frozen=True)
class Deadlines:
    """Default per-call deadlines in seconds; every call can override its own with `timeout=`.

    A `segment` that has to encode first gets `segment + encode + segment` unless the call passes
    `timeout=`, which then bounds the whole operation.
    """

    encode: float = 300.0  # a full-size fp32 encode takes tens of seconds on a CPU
    segment: float = 10.0  # also Prefetch
    concept: float = 120.0  # a concept query runs a large decoder: seconds per phrase on a CPU
    info: float = 5.0
    stream: float = 3600.0  # a whole encode_many / segment_stream session

    def __post_init__(self) -> None:
        for field in fields(self):
            if not getattr(self, field.name) > 0:
                raise ValueError(f"Deadlines.{field.name} must be a positive number of seconds")

    def of(self, rpc: Rpc) -> float:
        """The default deadline of `rpc`."""
        return float(getattr(self, rpc.deadline))


@dataclass(frozen=True)
class Call:
    """One rpc to make: which, its request (an iterator for streams), its deadline in seconds."""

    rpc: Rpc
    request: Any
    timeout: float
