"""The rpcs this SDK makes, in one table, and the default deadline of each (`Deadlines`).

Per rpc: the service and stub method that carry it, which `Deadlines` field bounds it by default,
which request field routes it (`image_id`: `_affinity` sends it to the decoder replica that owns the
image, with the id in the `sam3-image-id` header for proxies; `session_id`: to the replica that holds
the video session, header `sam3-session-id`, also for a request stream, whose `Call` carries the id as
`key`; "" for none) and whether it is unary or a stream.
Everything else (`Connection`, `_affinity`, the flows) reads this table instead of naming rpcs;
`tests/test_sdk_rpcs.py` holds it to the .proto files.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any

ENCODER = "sam3.v1.EncoderService"
DECODER = "sam3.v1.DecoderService"
TRACKER = "sam3.v1.TrackerService"


class Kind(enum.Enum):
    UNARY = "unary"  # one request, one response: run by the step runner (`_steps`)
    STREAM = "stream"  # a request stream answered by a response stream, one answer per request, in order
    SERVER_STREAM = "server_stream"  # one request answered by a response stream (a propagation)


class Rpc(enum.Enum):
    """Every rpc the SDK makes: (service, stub method, `Deadlines` field, the request field routing it, kind)."""

    ENCODE = (ENCODER, "Encode", "encode", "", Kind.UNARY)
    ENCODE_BATCH = (ENCODER, "EncodeBatch", "stream", "", Kind.STREAM)
    SEGMENT = (DECODER, "Segment", "segment", "image_id", Kind.UNARY)
    SEGMENT_STREAM = (DECODER, "SegmentStream", "stream", "", Kind.STREAM)
    PREFETCH = (DECODER, "Prefetch", "segment", "image_id", Kind.UNARY)
    SEGMENT_CONCEPT = (DECODER, "SegmentConcept", "concept", "image_id", Kind.UNARY)
    MODEL_INFO = (DECODER, "GetModelInfo", "info", "", Kind.UNARY)
    CREATE_SESSION = (TRACKER, "CreateSession", "track", "", Kind.UNARY)
    APPEND_FRAMES = (TRACKER, "AppendFrames", "stream", "session_id", Kind.STREAM)
    ADD_PROMPT = (TRACKER, "AddPrompt", "track", "session_id", Kind.UNARY)
    PROPAGATE = (TRACKER, "Propagate", "stream", "session_id", Kind.SERVER_STREAM)
    READ_RESULTS = (TRACKER, "ReadResults", "stream", "session_id", Kind.SERVER_STREAM)
    REMOVE_OBJECT = (TRACKER, "RemoveObject", "track", "session_id", Kind.UNARY)
    CLEAR_PROMPTS = (TRACKER, "ClearPrompts", "track", "session_id", Kind.UNARY)
    DESCRIBE_SESSION = (TRACKER, "DescribeSession", "info", "session_id", Kind.UNARY)
    CLOSE_SESSION = (TRACKER, "CloseSession", "info", "session_id", Kind.UNARY)

    def __init__(self, service: str, method: str, deadline: str, route: str, kind: Kind) -> None:
        self.service = service
        self.method = method  # the stub's method name, as in the .proto
        self.deadline = deadline
        self.route = route  # the request field whose value picks the replica; "" for none
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
    stream: float = 3600.0  # a whole encode_many / segment_stream session (also a propagation)
    track: float = 60.0  # a video session's change: the model on one frame, maybe after waiting for its lease

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
    key: str = ""  # a routed request stream's id (its requests are not read ahead to find it)

    @property
    def route_key(self) -> str:
        """The id that picks the replica for this call ("" for none)."""
        if not self.rpc.route:
            return ""
        return self.key if self.rpc.kind is Kind.STREAM else str(getattr(self.request, self.rpc.route))
