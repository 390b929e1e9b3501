"""Access to the committed concept references (tests/fixtures/concept-references, made by generate.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

import references

FIXTURES = Path(__file__).parent / "fixtures"
MODEL_DIR = FIXTURES / "model-tiny-concept"
IMAGES_DIR = FIXTURES / "images"
REFERENCES_DIR = FIXTURES / "concept-references"

# The acceptance bar of the concept issue.
MIN_MASK_AGREEMENT = 0.999
SCORE_TOLERANCE = 1e-4
BOX_TOLERANCE_PIXELS = 0.5


@dataclass(frozen=True)
class ConceptReference:
    """transformers' instances for one query (one phrase and/or exemplar set) on one image."""

    image: str
    case: str
    query: dict
    width: int
    height: int
    scores: np.ndarray  # [N]
    boxes: np.ndarray  # [N, 4] xyxy in original pixels
    presence: float
    masks: np.ndarray  # bool [N, H, W]

    @property
    def exemplars(self) -> list[tuple[list[float], bool]]:
        return [(box, bool(positive)) for box, positive in self.query.get("exemplars", [])]

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


def load(image: str, case: str) -> list[ConceptReference]:
    entry = index()[image]
    arrays = _arrays(image)
    references = []
    for k, query in enumerate(entry["cases"][case]):
        shape = tuple(arrays[f"{case}/{k}/masks_shape"])
        masks = np.unpackbits(arrays[f"{case}/{k}/masks_packed"], axis=-1, count=shape[-1]).astype(bool)
        references.append(
            ConceptReference(
                image=image,
                case=case,
                query=query,
                width=entry["width"],
                height=entry["height"],
                scores=arrays[f"{case}/{k}/scores"],
                boxes=arrays[f"{case}/{k}/boxes"],
                presence=float(arrays[f"{case}/{k}/presence"][0]),
                masks=masks.reshape(shape),
            )
        )
    return references


def tokens() -> dict[str, dict[str, list[int]]]:
    """CLIPTokenizer's input_ids and attention_mask (padded and truncated to 32) for generate.py's phrases."""
    return json.loads((REFERENCES_DIR / "tokens.json").read_text())


def click_cases() -> list[tuple[str, str]]:
    return [(image, case) for image, entry in index().items() for case in entry["clicks"]]


def clicks(image: str, case: str) -> references.Reference:
    """transformers' clicks on the unified model's weights, its embeddings from the video tracker's path."""
    entry = index()[image]
    arrays = _arrays(image)
    shape = tuple(arrays[f"clicks/{case}/masks_shape"])
    masks = np.unpackbits(arrays[f"clicks/{case}/masks_packed"], axis=-1, count=shape[-1]).astype(bool)
    return references.Reference(
        image=image,
        case=case,
        width=entry["width"],
        height=entry["height"],
        objects=entry["clicks"][case],
        iou_scores=arrays[f"clicks/{case}/iou_scores"],
        object_score_logits=arrays[f"clicks/{case}/object_score_logits"],
        low_res_logits=arrays[f"clicks/{case}/low_res_logits"].astype(np.float32),
        masks=masks.reshape(shape),
    )
