"""Access to the committed refinement references (tests/fixtures/refine-references, made by generate.py):
transformers' interactive loop, a first prompt then the next one with the first answer's best low-res logits
as `input_masks` (clamped to +-32, as SAM3 feeds them back)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

import references
from sam3_core.prompts import Prompt

REFERENCES_DIR = references.FIXTURES / "refine-references"


@dataclass(frozen=True)
class RefineReference:
    """One refinement step: the first prompt, then `expected` for the second with `mask_input`."""

    first: dict  # an object as in references: points / labels / box
    second: dict  # the next prompt ({} for the mask alone)
    scale: float  # the first answer's best logits times this is what was sent (4: past the clamp)
    mask_input: np.ndarray  # float32 [h, w], as sent (before the clamp)
    expected: references.Reference  # transformers on `second` with the clamped mask input
    unclamped_iou_scores: np.ndarray | None  # transformers fed `mask_input` unclamped, when scale != 1

    def second_prompt(self, mask_input: np.ndarray | None = None) -> Prompt:
        """The second prompt, with `mask_input` (default: the committed one)."""
        mask = self.mask_input if mask_input is None else mask_input
        return Prompt.of(self.second.get("points"), self.second.get("labels"), self.second.get("box"), mask)


@cache
def index() -> dict[str, dict]:
    return json.loads((REFERENCES_DIR / "index.json").read_text())


def all_cases() -> list[tuple[str, str]]:
    return [(image, case) for image, entry in index().items() for case in entry["cases"]]


@cache
def _arrays(image: str) -> dict[str, np.ndarray]:
    with np.load(REFERENCES_DIR / f"{Path(image).stem}.npz") as data:
        return {key: data[key] for key in data.files}


def load(image: str, case: str) -> RefineReference:
    entry, arrays = index()[image], _arrays(image)
    steps = entry["cases"][case]
    unclamped = arrays.get(f"{case}/unclamped/iou_scores")
    return RefineReference(
        first=steps["first"],
        second=steps["second"],
        scale=steps["scale"],
        mask_input=arrays[f"{case}/mask_input"].astype(np.float32),
        expected=references.from_arrays(image, case, entry, arrays, case, [steps["second"]]),
        unclamped_iou_scores=unclamped,
    )
