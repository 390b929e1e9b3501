"""Answers, by test, the open questions of the model contract (docs/model-contract.md)."""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path

import numpy as np
import pytest

import references
from sam3_core.embeddings import ImageEmbeddings
from sam3_core.model import Sam3Model
from sam3_core.predictor import Predictor
from sam3_core.prompts import Prompt, build_batches


@cache
def model() -> Sam3Model:
    return Sam3Model(references.MODEL_DIR)


@cache
def landscape() -> ImageEmbeddings:
    return Predictor(model()).set_image(references.IMAGES_DIR / "landscape.jpg")


def run(points: np.ndarray, labels: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
    """IoU scores [P, 3] straight from the decoder graph."""
    boxes = np.zeros((1, 0, 4), np.float32) if boxes is None else boxes
    iou, _, _ = model().run_decoder(points, labels, boxes, landscape().tensors)
    return iou[0]


def test_clicks_only_prompts_need_the_pad_point_our_graph_does_not_add() -> None:
    """Q1: the exported graph never adds transformers' clicks-only pad: without it, scores leave the oracle."""
    reference = references.load("landscape.jpg", "click")
    size = landscape().original_size
    (with_pad,) = build_batches(reference.prompts, size, model().preprocessing.size, appends_pad_point=False)
    (without_pad,) = build_batches(reference.prompts, size, model().preprocessing.size, appends_pad_point=True)
    assert with_pad.labels[0, 0, -1] == -1
    np.testing.assert_allclose(run(with_pad.points, with_pad.labels), reference.iou_scores, atol=1e-4)
    assert np.abs(run(without_pad.points, without_pad.labels) - reference.iou_scores).max() > 1e-3
    assert model().appends_pad_point is False  # read from the folder's manifest.json


def test_one_box_per_prompt_through_input_boxes_equals_corner_points() -> None:
    """Q2: input_boxes is [B, P, 4], one box per prompt; corners labelled 2, 3 + a -1 pad are the same tokens."""
    box = np.array([[[100.0, 80.0, 400.0, 350.0]]], np.float32)
    graph_boxes = run(np.zeros((1, 1, 0, 2), np.float32), np.zeros((1, 1, 0), np.int64), box)
    corners = np.array([[[[100.0, 80.0], [400.0, 350.0], [0.0, 0.0]]]], np.float32)
    as_points = run(corners, np.array([[[2, 3, -1]]], np.int64))
    np.testing.assert_allclose(as_points, graph_boxes, atol=1e-5)
    (boxes_input,) = [i for i in model().decoder.get_inputs() if i.name == "input_boxes"]
    assert len(boxes_input.shape) == 3 and boxes_input.shape[-1] == 4


def test_several_boxes_in_one_object_as_corner_points() -> None:
    """Q2 (cont.): more boxes per object than input_boxes allows still run, as corner-point triples."""
    first = [[100.0, 80.0], [400.0, 350.0], [0.0, 0.0]]
    second = [[300.0, 200.0], [600.0, 450.0], [0.0, 0.0]]
    labels = [2, 3, -1]
    both = run(np.array([[first + second]], np.float32), np.array([[labels * 2]], np.int64))
    only_first = run(np.array([[first]], np.float32), np.array([[labels]], np.int64))
    assert both.shape == (1, 3) and np.all((both > 0) & (both < 1))
    assert np.abs(both - only_first).max() > 1e-3


def test_box_and_clicks_mix_across_objects_in_one_request() -> None:
    """Objects with and without boxes share one request; each equals its own single-object result."""
    predictor = Predictor(model())
    predictor.set_embeddings(landscape())
    click = Prompt.of([[320, 240]])
    boxed = Prompt.of([[320, 240]], box=[100, 80, 400, 350])
    together = predictor.predict_objects([click, boxed, click])
    alone = [predictor.predict_objects([p])[0] for p in (click, boxed)]
    np.testing.assert_allclose(together[0].iou_scores, alone[0].iou_scores, atol=1e-5)
    np.testing.assert_allclose(together[1].iou_scores, alone[1].iou_scores, atol=1e-5)
    np.testing.assert_allclose(together[2].iou_scores, alone[0].iou_scores, atol=1e-5)


def _variant_folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(references.MODEL_DIR, folder)
    return folder / name


def test_int8_variant_keeps_float32_io_and_tracks_fp32(tmp_path: Path) -> None:
    """Q3: dynamic int8 quantisation (as `sam3 export --quantize int8` does) keeps float32 I/O; masks track fp32."""
    from sam3_export.quantize import quantize

    target = _variant_folder(tmp_path, "vision_encoder_int8.onnx")
    quantize(target.parent, "int8")
    quantized = Sam3Model(target.parent, variant="int8")
    assert [i.type for i in quantized.encoder.get_inputs()] == ["tensor(float)"]
    assert {o.type for o in quantized.encoder.get_outputs()} == {"tensor(float)"}
    assert quantized.model_id != model().model_id
    prompt = [Prompt.of([[320, 240]])]
    ours = Predictor(quantized)
    ours.set_image(references.IMAGES_DIR / "landscape.jpg")
    fp32 = Predictor(model())
    fp32.set_embeddings(landscape())
    agreement = references.agreement(ours.predict_objects(prompt)[0].mask(), fp32.predict_objects(prompt)[0].mask())
    assert agreement > 0.97


def test_float16_io_graph_is_cast_by_the_runtime(tmp_path: Path) -> None:
    """Q3 (cont.): a graph with float16 inputs/outputs (as some published fp16 files have) still runs."""
    pytest.importorskip("onnx", reason="the fp16 conversion needs the onnx package (test extra)")
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    target = _variant_folder(tmp_path, "prompt_encoder_mask_decoder_fp16.onnx")
    converted = convert_float_to_float16(
        onnx.load(str(target.with_name("prompt_encoder_mask_decoder.onnx"))), keep_io_types=False
    )
    onnx.save(converted, str(target))
    half = Sam3Model(target.parent, decoder_variant="fp16", load_encoder=False)
    assert "tensor(float16)" in {i.type for i in half.decoder.get_inputs()}
    prompt = [Prompt.of([[320, 240]])]
    ours = Predictor(half)
    ours.set_embeddings(ImageEmbeddings(landscape().tensors, landscape().original_size, half.model_id))
    fp32 = Predictor(model())
    fp32.set_embeddings(landscape())
    result, expected = ours.predict_objects(prompt)[0], fp32.predict_objects(prompt)[0]
    assert result.iou_scores.dtype == np.float32
    np.testing.assert_allclose(result.iou_scores, expected.iou_scores, atol=2e-2)
    assert references.agreement(result.mask(), expected.mask()) > 0.99
