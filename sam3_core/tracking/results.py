"""What a tracking session answers for a frame: per object, low-res mask logits and an object score."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sam3_core.postprocess import MASK_LOGIT_THRESHOLD, upsample_logits


@dataclass(frozen=True)
class ObjectFrame:
    """One object on one frame. `mask_logits` are transformers' `pred_masks` for it: the low-res logits
    (288 x 288 for SAM3), -1024 everywhere when the model thinks the object is absent."""

    obj_id: int
    mask_logits: np.ndarray = field(compare=False)
    object_score_logit: float
    original_size: tuple[int, int]

    @property
    def visible(self) -> bool:
        """Whether the model sees the object on this frame (its mask is then empty)."""
        return self.object_score_logit > 0

    def mask(self) -> np.ndarray:
        """bool [H, W] at the video's size: logits upsampled as transformers' post-processing, then > 0."""
        return upsample_logits(self.mask_logits, *self.original_size) > MASK_LOGIT_THRESHOLD


@dataclass(frozen=True)
class FrameResult:
    """One frame's answer, objects in the session's order (the requested subset when propagating)."""

    frame: int
    objects: tuple[ObjectFrame, ...]

    @property
    def object_ids(self) -> tuple[int, ...]:
        return tuple(obj.obj_id for obj in self.objects)

    def masks(self) -> np.ndarray:
        """bool [N, H, W], one mask per object in `objects` order."""
        if not self.objects:
            return np.zeros((0, 0, 0), bool)
        logits = np.stack([obj.mask_logits for obj in self.objects])
        return upsample_logits(logits, *self.objects[0].original_size) > MASK_LOGIT_THRESHOLD
