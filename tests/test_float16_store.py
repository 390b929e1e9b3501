"""Float16 stored embeddings keep the masks: >= 99.9 % of pixels agree with the float32 path (tiny model).

The bench runs the same measurement on the full-size model at 1920x1080, 4000x3000 and portrait
(`float16_store_worst_mask_agreement`); random weights give speckled masks, the worst case for flips.
"""

from __future__ import annotations

from sam3_bench.fidelity import float16_agreement
from sam3_bench.images import synthetic_rgb
from sam3_bench.run import prompts_for
from sam3_core.predictor import encode
from service_stack import shared_model


def test_float16_store_keeps_at_least_999_permille_of_mask_pixels_at_photo_size() -> None:
    model = shared_model()
    embeddings = encode(model, synthetic_rgb(1920, 1080, seed=7))
    prompts = lambda width, height: {k: v for k, v in prompts_for(width, height).items() if k in ("1 click", "box")}  # noqa: E731
    result = float16_agreement(model, embeddings, {"1920x1080": (1920, 1080)}, prompts)
    assert set(result["cases"]) == {"1 click@1920x1080", "box@1920x1080"}
    assert result["worst_agreement"] >= 0.999, result
    assert all(row["same_best_mask"] for row in result["cases"].values())
    assert 0 < max(row["max_logit_change"] for row in result["cases"].values()) < 0.05  # rounding, not a bug
