"""Refining from the previous mask (a mask prompt) in the core, against transformers' own interactive loop.

The oracle (tests/fixtures/refine-references) is `Sam3TrackerModel(input_masks=...)` on SAM3's embeddings,
fed the first answer's best low-res logits clamped to +-32 as SAM3 does; our runtime runs the mask-prompt
graph and then the unchanged click graph (docs/model-contract.md).
"""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path

import numpy as np
import pytest

import references
import refine_references
from sam3_core import graphs
from sam3_core.model import MaskInputNotSupportedError, RuntimeOptions, Sam3Model
from sam3_core.predictor import Predictor
from sam3_core.prompts import MASK_INPUT_LIMIT, Prompt, PromptError, build_batches
from test_parity import assert_matches_reference


@cache
def model() -> Sam3Model:
    return Sam3Model(references.MODEL_DIR)


@cache
def predictor_for(image: str) -> Predictor:
    predictor = Predictor(model())
    predictor.set_image(references.IMAGES_DIR / image)
    return predictor


def test_our_exports_carry_the_mask_prompt_graph() -> None:
    assert (references.MODEL_DIR / graphs.SPLIT_MASK_FILE).exists()
    assert model().accepts_mask_input


@pytest.mark.parametrize(("image", "case"), refine_references.all_cases(), ids=lambda v: str(v))
def test_a_mask_input_matches_transformers(image: str, case: str) -> None:
    """The logits as sent (the committed ones, 4x past the clamp in the "clamped" case) -> transformers' answer."""
    reference = refine_references.load(image, case)
    predictions = predictor_for(image).predict_objects([reference.second_prompt()])
    assert_matches_reference(predictions, reference.expected)


@pytest.mark.parametrize("image", refine_references.index())
def test_the_loop_with_our_own_logits_matches_transformers_loop(image: str) -> None:
    """What a user does: click, then send our answer's best logits back with the next clicks."""
    reference = refine_references.load(image, "add_click")
    predictor = predictor_for(image)
    first = predictor.predict(reference.first["points"], reference.first["labels"])
    mask_input = first.low_res_logits[first.best_index]
    assert np.abs(mask_input - reference.mask_input).max() < 1e-2  # ours vs transformers' (stored as float16)
    second = predictor.predict(reference.second["points"], reference.second["labels"], mask_input=mask_input)
    assert_matches_reference([second], reference.expected)


def test_logits_past_32_are_clamped_as_sam3_does() -> None:
    """transformers takes `input_masks` as given; SAM3 clamps what it feeds back to +-32, and so do we. The
    mask embedding's layer norm makes the clamp small, but measurable: our scores sit on the clamped answer."""
    for image in refine_references.index():
        reference = refine_references.load(image, "clamped")
        assert np.abs(reference.mask_input).max() > 1.5 * MASK_INPUT_LIMIT
        (prediction,) = predictor_for(image).predict_objects([reference.second_prompt()])
        to_clamped = np.abs(prediction.iou_scores - reference.expected.iou_scores[0]).max()
        to_unclamped = np.abs(prediction.iou_scores - reference.unclamped_iou_scores[0]).max()
        assert to_clamped < 1e-6 < to_unclamped, (image, to_clamped, to_unclamped)
        clamped = np.clip(reference.mask_input, -MASK_INPUT_LIMIT, MASK_INPUT_LIMIT)
        (same,) = predictor_for(image).predict_objects([reference.second_prompt(clamped)])
        assert np.array_equal(same.low_res_logits, prediction.low_res_logits)


def test_the_mask_input_changes_the_answer() -> None:
    """The same clicks with and without the previous mask give different masks (else the test proves little)."""
    reference = refine_references.load("landscape.jpg", "add_click")
    predictor = predictor_for("landscape.jpg")
    plain = predictor.predict(reference.second["points"], reference.second["labels"])
    refined = predictor.predict(reference.second["points"], reference.second["labels"], mask_input=reference.mask_input)
    assert np.mean(plain.mask() != refined.mask()) > 0.05


def test_objects_with_and_without_masks_in_one_call_equal_each_alone() -> None:
    """Each object with a mask is decoded alone; the others keep sharing a run; the order is the request's."""
    reference = refine_references.load("portrait.png", "add_click")
    predictor = predictor_for("portrait.png")
    points, labels = reference.second["points"], reference.second["labels"]
    other_mask = refine_references.load("portrait.png", "box_then_click").mask_input
    prompts = [
        Prompt.of(points, labels),
        Prompt.of(points, labels, mask_input=reference.mask_input),
        Prompt.of([[50, 60], [400, 300]], [1, 0]),
        Prompt.of(points, labels, mask_input=other_mask),
    ]
    together = predictor.predict_objects(prompts)
    for prompt, prediction in zip(prompts, together, strict=True):
        (alone,) = predictor.predict_objects([prompt])
        np.testing.assert_allclose(prediction.low_res_logits, alone.low_res_logits, atol=1e-5)
    assert_matches_reference([together[1]], reference.expected)
    batches = build_batches(prompts, (640, 480), (1008, 1008))
    assert sorted(len(batch.object_indices) for batch in batches) == [1, 1, 2]


def test_sam_predictor_layout_is_accepted() -> None:
    """SamPredictor takes mask_input as 1 x H x W; so does Prompt.of (the wire takes exactly one map)."""
    reference = refine_references.load("landscape.jpg", "add_click")
    predictor = predictor_for("landscape.jpg")
    points, labels = reference.second["points"], reference.second["labels"]
    flat = predictor.predict(points, labels, mask_input=reference.mask_input)
    stacked = predictor.predict(points, labels, mask_input=reference.mask_input[None])
    assert np.array_equal(flat.low_res_logits, stacked.low_res_logits)


@pytest.mark.parametrize(
    ("mask", "problem"),
    [
        (np.zeros((288, 288), np.float64), "float32"),
        (np.zeros((144, 144), np.float32), "shape"),
        (np.zeros((2, 288, 288), np.float32), "shape"),
        (np.full((288, 288), np.nan, np.float32), "NaN"),
        (np.full((288, 288), np.inf, np.float32), "infinite"),
    ],
)
def test_bad_mask_inputs_name_the_field(mask: np.ndarray, problem: str) -> None:
    predictor = predictor_for("landscape.jpg")
    prompts = [Prompt.of([[10, 10]]), Prompt.of([[320, 240]], mask_input=mask)]
    with pytest.raises(PromptError, match=problem) as error:
        predictor.predict_objects(prompts)
    assert error.value.field == "objects[1].mask_input"


def test_a_folder_without_the_mask_prompt_graph_says_so(tmp_path: Path) -> None:
    """Older exports and onnx-community folders: clicks work, mask inputs are refused with what to do."""
    folder = tmp_path / "model"
    shutil.copytree(references.MODEL_DIR, folder, ignore=shutil.ignore_patterns(graphs.SPLIT_MASK_FILE))
    for runtime in (RuntimeOptions(), RuntimeOptions(split_decoder=False)):
        older = Sam3Model(references.MODEL_DIR if not runtime.split_decoder else folder, runtime=runtime)
        assert not older.accepts_mask_input
        predictor = Predictor(older)
        predictor.set_image(references.IMAGES_DIR / "tiny_17x23.png")
        assert predictor.predict([[5, 5]]).mask().shape == (23, 17)
        with pytest.raises(MaskInputNotSupportedError, match=graphs.SPLIT_MASK_FILE):
            predictor.predict([[5, 5]], mask_input=np.zeros(older.mask_size, np.float32))


def test_io_binding_keeps_the_mask_prompt_tensors_on_the_device() -> None:
    """With I/O binding the mask-prompt graph's outputs stay where the click graph reads them (GPU memory
    under CUDA; the CPU provider binds the same way): the same answer as plain runs."""
    reference = refine_references.load("landscape.jpg", "add_click")
    bound = Predictor(Sam3Model(references.MODEL_DIR, runtime=RuntimeOptions(io_binding=True)))
    bound.set_image(references.IMAGES_DIR / "landscape.jpg")
    (prediction,) = bound.predict_objects([reference.second_prompt()])
    (plain,) = predictor_for("landscape.jpg").predict_objects([reference.second_prompt()])
    np.testing.assert_allclose(prediction.low_res_logits, plain.low_res_logits, atol=1e-5)
