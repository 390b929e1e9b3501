"""The split click decoder (mask_decoder_image.onnx once per image + mask_decoder_click.onnx per click)
computes what the standard graph computes.

It is the default wherever a folder has it, so every parity test against transformers (test_parity,
test_service_parity) already runs through it; these tests pin it against the standard graph on the
same embeddings, prompt shape by prompt shape, and check when the runtime falls back.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import references
from sam3_core import graphs
from sam3_core.model import DecoderEmbeddings, RuntimeOptions, Sam3Model
from sam3_core.predictor import Predictor, decode
from sam3_core.prompts import Prompt
from sam3_core.sources import download_patterns, materialize

WIDTH, HEIGHT = 640, 480
PROMPTS = {
    "1 click": [Prompt.of([[320, 240]])],
    "clicks fg/bg": [Prompt.of([[100, 100], [500, 400], [320, 50]], [1, 0, 1])],
    "box": [Prompt.of(box=[40, 30, 600, 420])],
    "box + clicks": [Prompt.of([[300, 200], [20, 20]], [1, 0], box=[100, 80, 500, 400])],
    # 12 points: more tokens than heads x head size folds away; the folded attention must still be exact.
    "12 clicks": [Prompt.of([[40 + 50 * i, 30 + 35 * i] for i in range(12)], [1, 0] * 6)],
    "3 objects": [Prompt.of([[50, 60]]), Prompt.of(box=[10, 10, 300, 200]), Prompt.of([[600, 400], [5, 5]], [1, 0])],
}


@pytest.fixture(scope="module")
def split() -> Sam3Model:
    return Sam3Model(references.MODEL_DIR)


@pytest.fixture(scope="module")
def standard() -> Sam3Model:
    return Sam3Model(references.MODEL_DIR, load_encoder=False, runtime=RuntimeOptions(split_decoder=False))


@pytest.fixture(scope="module")
def embeddings(split: Sam3Model):
    return Predictor(split).set_image(references.IMAGES_DIR / "landscape.jpg")


def test_our_exports_carry_the_split_graphs_and_the_runtime_uses_them(split: Sam3Model, standard: Sam3Model) -> None:
    assert all((references.MODEL_DIR / name).exists() for name in graphs.SPLIT_FILES)
    assert split.split_decoder and not standard.split_decoder
    assert split.embedding_shapes() == standard.embedding_shapes()
    assert split.mask_size == standard.mask_size


@pytest.mark.parametrize("case", PROMPTS)
def test_split_decoder_equals_the_standard_graph(split: Sam3Model, standard: Sam3Model, embeddings, case: str) -> None:
    prompts = PROMPTS[case]
    ours = decode(split, embeddings, prompts)
    theirs = decode(standard, embeddings, prompts)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a.low_res_logits, b.low_res_logits, atol=1e-4, rtol=0)
        np.testing.assert_allclose(a.iou_scores, b.iou_scores, atol=1e-5, rtol=0)
        assert a.object_score_logit == pytest.approx(b.object_score_logit, abs=1e-5)
        # A pixel can only flip where the standard graph's logit is within rounding of 0.
        flipped = (a.low_res_logits > 0) != (b.low_res_logits > 0)
        assert np.all(np.abs(b.low_res_logits[flipped]) < 1e-4)
        assert a.best_index == b.best_index


def test_prepared_embeddings_are_reused_not_recomputed(split: Sam3Model, embeddings) -> None:
    prepared = split.decoder_embeddings(embeddings)
    assert isinstance(prepared, DecoderEmbeddings)
    assert split.decoder_embeddings(prepared) is prepared
    assert len(prepared.tensors) == len(graphs.SPLIT_IMAGE_OUTPUTS)
    assert prepared.original_size == embeddings.original_size and prepared.model_id == embeddings.model_id
    once, again = decode(split, prepared, PROMPTS["box"]), decode(split, embeddings, PROMPTS["box"])
    np.testing.assert_array_equal(once[0].low_res_logits, again[0].low_res_logits)


def test_a_folder_without_the_split_graphs_uses_the_standard_one(tmp_path: Path, embeddings, standard) -> None:
    """onnx-community folders (and exports from before the split) have only the standard graph."""
    folder = tmp_path / "model"
    shutil.copytree(references.MODEL_DIR, folder, ignore=shutil.ignore_patterns(*graphs.SPLIT_FILES))
    model = Sam3Model(folder, load_encoder=False)
    assert not model.split_decoder
    assert model.model_id == standard.model_id  # the same encoder: the same cached embeddings
    (ours,) = decode(model, embeddings, PROMPTS["1 click"])
    (theirs,) = decode(standard, embeddings, PROMPTS["1 click"])
    np.testing.assert_array_equal(ours.low_res_logits, theirs.low_res_logits)


def test_another_decoder_variant_is_not_replaced_by_the_float32_split(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(references.MODEL_DIR, folder)
    shutil.copy(folder / "prompt_encoder_mask_decoder.onnx", folder / "prompt_encoder_mask_decoder_custom.onnx")
    assert not Sam3Model(folder, load_encoder=False, decoder_variant="custom").split_decoder
    assert Sam3Model(folder, load_encoder=False).split_decoder


def test_a_pulled_folder_keeps_the_split_graphs(tmp_path: Path) -> None:
    """`sam3 models pull --dir` copies a repo's files by download_patterns: ours include the split graphs."""
    written = materialize(references.MODEL_DIR, tmp_path / "pulled", patterns=download_patterns())
    assert {*graphs.SPLIT_FILES, graphs.SPLIT_MASK_FILE} <= {path.name for path in written}
    pulled = Sam3Model(tmp_path / "pulled", load_encoder=False)
    assert pulled.split_decoder and pulled.accepts_mask_input
    other = materialize(references.MODEL_DIR, tmp_path / "other", patterns=download_patterns(decoder_variant="fp16"))
    assert not {graphs.SPLIT_IMAGE_FILE, graphs.SPLIT_CLICK_FILE} & {path.name for path in other}
