"""A tracked frame on the wire and in the store: per object its mask in the caller's format, score and presence.

A frame's result is stored when it is committed ("results:<object>" field "<frame>": the object score, the
revision and the mask as COCO RLE runs at the frame's size), so ReadResults answers from the store in any
format, the same pixels as the stream that computed it. Each frame's answer has its own response budget,
like a SegmentStream item.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from decoder_service.budget import Remedy, ResponseBudget, ResponseLimits
from decoder_service.mask_wire import MaskWire, empty_mask, encode
from sam3_client.proto import decoder_pb2, tracker_pb2
from sam3_core import masks as mask_codecs
from sam3_core.polygons import DEFAULT_TOLERANCE
from sam3_core.timing import StageTimer
from sam3_core.tracking import ObjectFrame

__all__ = ["StoredObject", "decode_rle", "frame_result", "stored"]

REMEDY = Remedy(
    bytes="track fewer objects per call (object_ids) or ask for a more compact mask format (RLE)",
    pixels="track fewer objects per call (object_ids), or ask for MASK_FORMAT_NONE",
)
_HEAD = struct.Struct("<fi")  # object score logit, revision


@dataclass(frozen=True)
class StoredObject:
    """One object's result on one frame, as committed."""

    object_id: int
    score: float  # the object score logit
    revision: int
    mask: np.ndarray  # bool [H, W]

    def to_bytes(self) -> bytes:
        counts = mask_codecs.to_coco_rle(self.mask).counts
        return _HEAD.pack(self.score, self.revision) + np.asarray(counts, "<u4").tobytes()

    @classmethod
    def from_bytes(cls, object_id: int, data: bytes, size: tuple[int, int]) -> StoredObject:
        """ValueError when the runs do not cover a frame of `size`."""
        score, revision = _HEAD.unpack_from(data)
        return cls(object_id, score, revision, decode_rle(np.frombuffer(data, "<u4", offset=_HEAD.size), size))


def stored(objects: Sequence[ObjectFrame], revision: int) -> list[StoredObject]:
    """The frame's objects as they are stored and answered (the masks computed once, here)."""
    return [StoredObject(o.obj_id, float(o.object_score_logit), revision, o.mask()) for o in objects]


def frame_result(
    frame: int,
    frame_id: str,
    objects: Sequence[StoredObject],
    size: tuple[int, int],
    mask_format: int,
    limits: ResponseLimits,
    timer: StageTimer,
) -> tracker_pb2.FrameResult:
    """One frame's answer, its masks counted against one answer's budget."""
    budget = ResponseBudget(limits, size, REMEDY)
    budget.reserve(
        len(objects),
        f"{len(objects)} objects",
        mask_format=mask_format,
        full_size=mask_format != decoder_pb2.MASK_FORMAT_NONE,
    )
    wire = MaskWire(mask_format, DEFAULT_TOLERANCE, budget)
    tracked = []
    for obj in objects:
        message = empty_mask(0, 0.0, mask_format, size)
        if mask_format != decoder_pb2.MASK_FORMAT_NONE:
            encode(message, obj.mask, timer, wire, f"object {obj.object_id}")
        budget.spend(message.ByteSize())
        tracked.append(
            tracker_pb2.TrackedObject(
                object_id=obj.object_id, mask=message, presence=_sigmoid(obj.score), object_score_logit=obj.score
            )
        )
    height, width = size
    revision = max((obj.revision for obj in objects), default=0)
    return tracker_pb2.FrameResult(
        frame_index=frame, frame_id=frame_id, objects=tracked, revision=revision, width=width, height=height
    )


def _sigmoid(logit: float) -> float:
    return 1.0 / (1.0 + math.exp(-logit)) if logit >= 0 else math.exp(logit) / (1.0 + math.exp(logit))


def decode_rle(counts: Sequence[int], size: tuple[int, int]) -> np.ndarray:
    """bool [H, W] from COCO RLE runs (column-major, background first); ValueError when they do not cover it."""
    runs = np.asarray(counts, np.int64)
    if (runs.size and runs.min() < 0) or int(runs.sum()) != size[0] * size[1]:
        raise ValueError(f"runs covering {int(runs.sum())} pixels for a {size[1]}x{size[0]} mask")
    flat = np.repeat(np.arange(runs.size) % 2 == 1, runs)
    return flat.reshape(size[1], size[0]).T
