"""The order a propagation visits frames in: the core's own, planned up front so the fleet can tell a caller
frames_total / frames_done and resume a dead replica's propagation at its next frame."""

from __future__ import annotations

from collections.abc import Sequence

from sam3_client.proto import tracker_pb2

__all__ = ["DIRECTIONS", "plan"]

DIRECTIONS = {
    tracker_pb2.PROPAGATION_DIRECTION_FORWARD: (False,),
    tracker_pb2.PROPAGATION_DIRECTION_BACKWARD: (True,),
    tracker_pb2.PROPAGATION_DIRECTION_BOTH: (False, True),
}


def plan(start: int, directions: Sequence[bool], max_frames: int | None, frame_count: int) -> list[list[int]]:
    """[frame, reverse] in the core's processing order: the start frame and up to `max_frames` more forward
    (to the end when None), then backward from the start (none from frame 0: transformers' own rule)."""
    order: list[list[int]] = []
    limit = frame_count if max_frames is None else max_frames
    for reverse in directions:
        if reverse:
            frames = range(start, max(start - limit, 0) - 1, -1) if start > 0 else range(0)
        else:
            frames = range(start, min(start + limit, frame_count - 1) + 1)
        order += [[frame, int(reverse)] for frame in frames]
    return order
