"""Access to the committed transformers references (tests/fixtures, made by tests/fixtures/generate.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from sam3_core.prompts import Prompt

FIXTURES = Path(__file__).parent / "fixtures"
MODEL_DIR = FIXTURES / "model-tiny"
IMAGES_DIR = FIXTURES / "images"
REFERENCES_DIR = FIXTURES / "references"

# The acceptance bar of the core issue, applied to every case and every service path.
MIN_MASK_AGREEMENT = 0.999
SCORE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Reference:
    """transformers' outputs for one image and one prompt set (one row per object)."""

    image: str
    case: str
    width: int
    height: int
    objects: list[dict]
    iou_scores: np.ndarray  # [P, 3]
    object_score_logits: np.ndarray  # [P, 1]
    low_res_logits: np.ndarray  # [P, 3, 288, 288] (stored as float16)
    masks: np.ndarray  # bool [P, 3, H, W]

    @property
    def image_path(self) -> Path:
        return IMAGES_DIR / self.image

    @property
    def prompts(self) -> list[Prompt]:
        return [Prompt.of(o.get("points"), o.get("labels"), o.get("box")) for o in self.objects]

    @property
    def id(self) -> str:
        return f"{self.image}:{self.case}"


@cache
def index() -> dict[str, dict]:
    return json.loads((REFERENCES_DIR / "index.json").read_text())


def all_cases() -> list[tuple[str, str]]:
    return [(image, case) for image, entry in index().items() for case in entry["cases"]]


@cache
def _arrays(image: str) -> dict[str, np.ndarray]:
    with np.load(REFERENCES_DIR / f"{Path(image).stem}.npz") as data:
        return {key: data[key] for key in data.files}


def load(image: str, case: str) -> Reference:
    entry = index()[image]
    return from_arrays(image, case, entry, _arrays(image), case, entry["cases"][case])


def from_arrays(
    image: str, case: str, entry: dict, arrays: dict[str, np.ndarray], prefix: str, objects: list[dict]
) -> Reference:
    """A Reference from generate.py's layout: `<prefix>/iou_scores`, `.../masks_packed`, ... in `arrays`."""
    return Reference(
        image=image,
        case=case,
        width=entry["width"],
        height=entry["height"],
        objects=objects,
        iou_scores=arrays[f"{prefix}/iou_scores"],
        object_score_logits=arrays[f"{prefix}/object_score_logits"],
        low_res_logits=arrays[f"{prefix}/low_res_logits"].astype(np.float32),
        masks=unpack_masks(arrays, prefix),
    )


def unpack_masks(arrays: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    """The boolean masks stored as `<prefix>/masks_packed` (bits along the last axis) + `<prefix>/masks_shape`."""
    shape = tuple(arrays[f"{prefix}/masks_shape"])
    masks = np.unpackbits(arrays[f"{prefix}/masks_packed"], axis=-1, count=shape[-1]).astype(bool)
    return masks.reshape(shape)


def agreement(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Fraction of pixels on which two binary masks agree."""
    assert ours.shape == theirs.shape, f"shape {ours.shape} != reference {theirs.shape}"
    return float(np.mean(ours == theirs))
