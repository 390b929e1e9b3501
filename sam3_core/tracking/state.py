"""A tracking session as plain typed data: the prompts and, per object, a bounded memory bank.

Everything the next frame needs lives here and nothing else: frame features are fetched per frame and
dropped, masks are answered and dropped. Per object the bank holds one memory per prompted frame (the
conditioning frames: their count grows with prompts, never with the video), a ring of recent memories
(`num_maskmem` entries) and of recent object pointers (`max_object_pointers_in_encoder`), and which frames
have been tracked, as intervals. Memories are kept as bfloat16 bit patterns: transformers stores them in
bfloat16 too, so this is exact, and half the bytes of float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class FramePrompt:
    """What the user gave for one object on one frame, in original pixels (a mask: bool at the video size)."""

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = field(default=None, compare=False)

    @property
    def point_count(self) -> int:
        """Points as transformers counts them for its multimask rule: clicks plus two per box."""
        return len(self.points) + (2 if self.box is not None else 0)


@dataclass
class Conditioning:
    """A prompted frame's answer and memory: reused as is when propagation passes the frame again."""

    features: np.ndarray  # uint16 [64, h, w]: bfloat16 bit patterns
    pointer: np.ndarray  # float32 [C]
    mask_logits: np.ndarray  # float32 [mask h, mask w]: the answer, "no object" pixels at -1024
    object_score_logit: float


@dataclass
class ObjectState:
    """One object's prompts and memory bank. Dicts keep insertion order, which selection ties follow."""

    obj_id: int
    prompts: dict[int, FramePrompt] = field(default_factory=dict)
    conditioning: dict[int, Conditioning] = field(default_factory=dict)
    recent_memories: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> uint16 [64, h, w]
    recent_pointers: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> float32 [C]
    tracked: list[tuple[int, int]] = field(default_factory=list)  # sorted, disjoint [start, stop) frame ranges

    def is_tracked(self, frame: int) -> bool:
        return any(start <= frame < stop for start, stop in self.tracked)

    def mark_tracked(self, frame: int) -> None:
        """Adds a frame to the tracked ranges, merging neighbours so the list stays short."""
        ranges = [*self.tracked, (frame, frame + 1)]
        ranges.sort()
        merged: list[tuple[int, int]] = []
        for start, stop in ranges:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
            else:
                merged.append((start, stop))
        self.tracked = merged

    @property
    def nbytes(self) -> int:
        """Bytes of arrays this object holds (prompts' masks included)."""
        arrays = [*self.recent_memories.values(), *self.recent_pointers.values()]
        for memory in self.conditioning.values():
            arrays += [memory.features, memory.pointer, memory.mask_logits]
        arrays += [prompt.mask for prompt in self.prompts.values() if prompt.mask is not None]
        return sum(array.nbytes for array in arrays)


@dataclass
class SessionState:
    """The whole session: `serialise.to_bytes` it, resume it in any process from `serialise.from_bytes`."""

    model_id: str  # the tracking graphs' identity: memories from another model are meaningless
    video_size: tuple[int, int]  # (height, width)
    num_frames: int | None  # None: a stream of unknown length
    objects: dict[int, ObjectState] = field(default_factory=dict)

    def nbytes_per_object(self) -> dict[int, int]:
        return {obj_id: state.nbytes for obj_id, state in self.objects.items()}
