"""Two ways to the same masks, compared pixel by pixel: worst case first.

- float16 stored embeddings against float32: the store can keep them at float16 (half the Redis
  memory, ~8x faster fetch); the decoder converts them back to float32.
- the split click decoder against the standard graph: the same function, summed in another order.
Rounding moves each logit a little, so a pixel can flip where its logit is within about that much of 0.
This measures, per image size and prompt, the share of pixels of all three masks at the original size
that agree, the best-mask index, and the largest logit change.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sam3_core.embeddings import ImageEmbeddings
from sam3_core.model import Sam3Model
from sam3_core.predictor import decode
from sam3_core.prompts import Prompt


def prompt_of(spec: dict[str, Any]) -> Prompt:
    """A bench prompt dict ({"points", "labels"} and/or {"box"}) as a core Prompt."""
    return Prompt.of(spec.get("points"), spec.get("labels"), spec.get("box"))


def float16_agreement(
    model: Sam3Model, embeddings: ImageEmbeddings, sizes: dict[str, tuple[int, int]], prompts: Any
) -> dict[str, Any]:
    """The float16 store against float32, on one decoder."""
    half = embeddings.astype(np.float16).astype(np.float32)
    return mask_agreement((model, embeddings.astype(np.float32)), (model, half), sizes, prompts)


def mask_agreement(
    reference: tuple[Sam3Model, ImageEmbeddings],
    candidate: tuple[Sam3Model, ImageEmbeddings],
    sizes: dict[str, tuple[int, int]],
    prompts: Any,
) -> dict[str, Any]:
    """(decoder, embeddings) pairs; `prompts(width, height)` -> {name: [prompt dicts]}; returns per-case rows
    and the worst agreement.

    The encoder sees every image at its fixed input size, so one image's embeddings serve every
    original size: only the upsampling to the original size (where flips show) depends on it.
    """
    rows: dict[str, Any] = {}
    for size_name, (width, height) in sizes.items():
        sized = [
            (model, ImageEmbeddings(e.tensors, (height, width), model.model_id)) for model, e in (reference, candidate)
        ]
        for prompt_name, specs in prompts(width, height).items():
            objects = [prompt_of(spec) for spec in specs]
            predictions = [decode(model, embeddings, objects) for model, embeddings in sized]
            for ours, theirs in zip(*predictions, strict=True):
                agreement = float(np.mean(ours.masks() == theirs.masks()))
                row = rows.setdefault(f"{prompt_name}@{size_name}", {"agreement": 1.0, "max_logit_change": 0.0})
                row["agreement"] = min(row["agreement"], round(agreement, 6))
                change = float(np.max(np.abs(ours.low_res_logits - theirs.low_res_logits)))
                row["max_logit_change"] = max(row["max_logit_change"], round(change, 6))
                row["same_best_mask"] = row.get("same_best_mask", True) and ours.best_index == theirs.best_index
    worst = min(rows, key=lambda key: rows[key]["agreement"])
    return {"cases": rows, "worst_case": worst, "worst_agreement": rows[worst]["agreement"]}
