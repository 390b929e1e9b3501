"""sam3 masks -> Label Studio result regions, in the form the labelling config's answer control stores."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from sam3_label_studio.brush import mask_to_rle
from sam3_label_studio.labeling import LabelingConfig

__all__ = ["region"]


def region(config: LabelingConfig, mask: np.ndarray, label: str, score: float) -> dict[str, Any]:
    """One result region holding `mask` (boolean H x W at the image's size) under `label`."""
    height, width = mask.shape
    answer = config.answer
    return {
        "id": uuid.uuid4().hex[:10],  # Label Studio's region ids are short random strings
        "from_name": answer.name,
        "to_name": config.image_name,
        "type": answer.result_type,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask_to_rle(mask), answer.result_type: [label]},
        "score": float(score),
        "readonly": False,
    }
