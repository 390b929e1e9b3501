"""Access to the committed concept references (tests/fixtures/concept-references, made by generate.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

import references as click_references

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
    references: list[ConceptReference] = []
    for k, query in enumerate(entry["cases"][case]):
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
                masks=click_references.unpack_masks(arrays, f"{case}/{k}"),
            )
        )
    return references


def tokens() -> dict[str, dict[str, list[int]]]:
    """CLIPTokenizer's input_ids and attention_mask (padded and truncated to 32) for generate.py's phrases."""
    return json.loads((REFERENCES_DIR / "tokens.json").read_text())


def click_cases() -> list[tuple[str, str]]:
    return [(image, case) for image, entry in index().items() for case in entry["clicks"]]


def clicks(image: str, case: str) -> click_references.Reference:
    """transformers' clicks on the unified model's weights, its embeddings from the video tracker's path."""
    entry = index()[image]
    return click_references.from_arrays(image, case, entry, _arrays(image), f"clicks/{case}", entry["clicks"][case])
