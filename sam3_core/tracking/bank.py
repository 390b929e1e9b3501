"""Which memories condition a frame, and which are kept: transformers' selection over a bounded bank.

For frame f of one object (transformers' `_gather_memory_frame_outputs` and `_get_object_pointers`):
- conditioning frames: all of them when there are at most `max_cond_frame_num`, else the closest one
  before f, the closest at or after f, then the nearest others (`select_conditioning`), each with the
  temporal encoding of distance 0;
- recent memories: the tracked frames f-1 .. f-(num_maskmem-1) (f+1 .. when tracking backwards), each with
  the temporal encoding of its distance, read from the ring or from an unselected conditioning frame;
- object pointers: those of the selected conditioning frames not after f (not before f backwards), then
  of tracked frames up to `max_object_pointers_in_encoder - 1` steps back, each with its signed distance
  over the pointer window (16, or the video's length when shorter, as transformers normalises it).

SAM3 picks pointers from the *selected* conditioning frames; transformers takes every conditioning frame,
which is the same whenever an object has at most `max_cond_frame_num` prompted frames (docs/video.md).

`remember` keeps a ring: storing frame f evicts the memories farthest from f beyond `num_maskmem` (and
pointers beyond `max_object_pointers_in_encoder`). That is exactly what the lookups above need while a
propagation runs in either direction, and when a prompt corrects the last frame tracked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sam3_core.tracking.state import ObjectState


@dataclass(frozen=True)
class BankLimits:
    """The model's memory sizes (from the folder's manifest)."""

    num_maskmem: int = 7
    max_cond_frame_num: int = 4
    max_object_pointers: int = 16


@dataclass(frozen=True)
class MemoryBank:
    """What memory attention reads for one object on one frame, in transformers' order."""

    memories: list[np.ndarray]  # uint16 [64, h, w] bfloat16 bit patterns
    memory_time: list[int]  # index into the temporal encodings: num_maskmem - 1 for conditioning, k - 1 for k back
    pointers: list[np.ndarray]  # float32 [C]
    pointer_time: list[float]  # float32 distances over the pointer window

    @property
    def shape_key(self) -> tuple[int, int]:
        """Objects whose banks have the same counts run through memory attention in one call."""
        return len(self.memories), len(self.pointers)


def select_conditioning(frame: int, frames: Sequence[int], limit: int) -> tuple[list[int], list[int]]:
    """(selected, unselected) conditioning frames, as transformers' `_select_closest_cond_frames`."""
    if limit == -1 or len(frames) <= limit:
        return list(frames), []
    selected: list[int] = []
    before = max((t for t in frames if t < frame), default=None)
    if before is not None:
        selected.append(before)
    after = min((t for t in frames if t >= frame), default=None)
    if after is not None:
        selected.append(after)
    rest = sorted((t for t in frames if t not in selected), key=lambda t: abs(t - frame))
    selected += rest[: limit - len(selected)]
    return selected, [t for t in frames if t not in selected]


def pointer_window(num_frames: int | None, limits: BankLimits) -> int:
    """How many pointers a frame may read: 16, or the video's length when shorter (not when streaming)."""
    return limits.max_object_pointers if num_frames is None else min(num_frames, limits.max_object_pointers)


def gather(state: ObjectState, frame: int, *, reverse: bool, num_frames: int | None, limits: BankLimits) -> MemoryBank:
    """The memories and pointers that condition `frame` (which must not be an initial conditioning frame)."""
    selected, unselected = select_conditioning(frame, list(state.conditioning), limits.max_cond_frame_num)
    memories = [state.conditioning[t].features for t in selected]
    memory_time = [limits.num_maskmem - 1] * len(selected)
    step = -1 if reverse else 1
    unselected_features: Mapping[int, np.ndarray] = {t: state.conditioning[t].features for t in unselected}
    for back in range(limits.num_maskmem - 1, 0, -1):
        previous = frame - step * back
        found = state.recent_memories.get(previous, unselected_features.get(previous))
        if found is not None:
            memories.append(found)
            memory_time.append(back - 1)

    window = pointer_window(num_frames, limits)
    pointers, distances = [], []
    for t in selected:
        if (t >= frame) if reverse else (t <= frame):
            pointers.append(state.conditioning[t].pointer)
            distances.append((frame - t) * step)
    for back in range(1, window):
        previous = frame - step * back
        if previous < 0 or (num_frames is not None and previous >= num_frames):
            break
        if previous in state.recent_pointers:
            pointers.append(state.recent_pointers[previous])
            distances.append(back)
    pointer_time = list(np.asarray(distances, np.float32) / np.float32(max(window - 1, 1)))
    return MemoryBank(memories, memory_time, pointers, [float(t) for t in pointer_time])


def remember(state: ObjectState, frame: int, features: np.ndarray, pointer: np.ndarray, limits: BankLimits) -> None:
    """Stores a tracked frame's memory and pointer, evicting what lies farthest from it beyond the ring sizes."""
    _store(state.recent_memories, frame, features, limits.num_maskmem)
    _store(state.recent_pointers, frame, pointer, limits.max_object_pointers)


def _store(ring: dict[int, np.ndarray], frame: int, value: np.ndarray, size: int) -> None:
    ring[frame] = value
    while len(ring) > size:
        del ring[max(ring, key=lambda t: (abs(t - frame), t))]
