"""sam3 masks -> Label Studio result regions, in the form the labelling config's answer control stores.

A brush answer is one region holding the mask in Label Studio's RLE. A polygon answer is one region per
part of the mask, its outline in percent of the image; Label Studio's polygons have no holes, so the
holes sam3 traces are left out (a brush answer keeps them).
"""

from __future__ import annotations

import uuid
from typing import Any

from sam3_client import Mask
from sam3_label_studio.brush import mask_to_rle
from sam3_label_studio.labeling import LabelingConfig

__all__ = ["mask_format", "regions"]


def mask_format(config: LabelingConfig) -> str:
    """How to ask sam3 for the masks this config's answer control stores (the SDK's mask_format)."""
    return "polygon" if config.answer.result_type == "polygonlabels" else "rle"


def regions(config: LabelingConfig, answer: Mask, label: str, score: float) -> list[dict[str, Any]]:
    """The result regions for one sam3 mask (asked for in `mask_format(config)`) under `label`."""
    kind = config.answer.result_type
    if kind == "polygonlabels":
        outline = answer.polygons
        assert outline is not None, "polygon answers are asked for as polygons"
        width, height = outline.width, outline.height
        values = [
            {
                "points": [[x * 100 / width, y * 100 / height] for x, y in zip(ring[::2], ring[1::2], strict=True)],
                "closed": True,
            }
            for ring in outline.outer
        ]
    else:
        mask = answer.mask
        assert mask is not None, "brush answers are asked for with their pixels"
        height, width = mask.shape
        values = [{"format": "rle", "rle": mask_to_rle(mask)}]
    return [
        {
            "id": uuid.uuid4().hex[:10],  # Label Studio's region ids are short random strings
            "from_name": config.answer.name,
            "to_name": config.image_name,
            "type": kind,
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": {**value, kind: [label]},
            "score": float(score),
            "readonly": False,
        }
        for value in values
    ]
