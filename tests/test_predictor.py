"""sam3_core.predictor on the tiny fixture: set an image once, predict many prompts, store and reuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sam3_core.embeddings import ImageEmbeddings, deserialize, serialize
from sam3_core.images import ImageError, ImageLimits
from sam3_core.model import Sam3Model
from sam3_core.predictor import Predictor, decode
from sam3_core.prompts import Prompt, PromptError, PromptLimits
from sam3_core.timing import StageTimer
from sam3_serving.store import EMBEDDINGS

FIXTURE = Path(__file__).parent / "fixtures" / "model-tiny"
HEIGHT, WIDTH = 90, 120  # not square, so (H, W) and (W, H) cannot be confused


def synthetic_image() -> np.ndarray:
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    background = np.stack([x * 2, y * 2, np.full_like(x, 90)], axis=-1).clip(0, 255).astype(np.uint8)
    canvas = Image.fromarray(background)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([10, 15, 50, 60], fill=(240, 30, 30))
    draw.ellipse([65, 20, 110, 75], fill=(20, 200, 40))
    return np.asarray(canvas)


@pytest.fixture(scope="module")
def model() -> Sam3Model:
    return Sam3Model(FIXTURE)


@pytest.fixture(scope="module")
def embeddings(model) -> ImageEmbeddings:
    return Predictor(model).set_image(synthetic_image())


@pytest.fixture
def predictor(model, embeddings) -> Predictor:
    predictor = Predictor(model)
    predictor.set_embeddings(embeddings)
    return predictor


@pytest.fixture(scope="module")
def click_result(model, embeddings):
    predictor = Predictor(model)
    predictor.set_embeddings(embeddings)
    return predictor.predict(points=[[30, 40]])


A = Prompt.of([[30, 40]])  # inside the rectangle
B_MORE = Prompt.of([[90, 50], [80, 30], [10, 80]], [1, 1, 0])  # more points: another token count
C_SAME = Prompt.of([[90, 50]])  # as many tokens as A: decoded in the same batch


PROMPTS = [
    A,
    B_MORE,
    C_SAME,
    Prompt.of(box=[5, 10, 55, 65]),
    Prompt.of([[100, 60]], [1], [60, 15, 115, 80]),
    Prompt.of([[60, 45], [20, 20]], [1, 0]),
]


@pytest.fixture(scope="module")
def fp32_results(model, embeddings):
    return decode(model, embeddings, PROMPTS)


def assert_same_prediction(a, b, atol=0.0):
    np.testing.assert_allclose(a.iou_scores, b.iou_scores, rtol=0, atol=atol)
    np.testing.assert_allclose(a.low_res_logits, b.low_res_logits, rtol=0, atol=atol)
    assert a.object_score_logit == pytest.approx(b.object_score_logit, abs=atol)
    assert a.original_size == b.original_size


# ------------------------------------------------------------------------------------------------
# set_image / set_embeddings
# ------------------------------------------------------------------------------------------------


def test_predict_before_set_image(model):
    with pytest.raises(RuntimeError, match=r"set_image\(\)"):
        Predictor(model).predict(points=[[1, 1]])


def test_set_image_embeddings(model, embeddings):
    assert embeddings.original_size == (HEIGHT, WIDTH)
    assert embeddings.model_id == model.model_id
    assert [t.shape for t in embeddings.tensors] == [tuple(s) for s in model.embedding_shapes()]
    assert all(t.dtype == np.float32 and np.isfinite(t).all() for t in embeddings.tensors)


def test_set_image_respects_image_limits(model):
    predictor = Predictor(model, image_limits=ImageLimits(max_pixels=HEIGHT * WIDTH - 1))
    with pytest.raises(ImageError) as info:
        predictor.set_image(synthetic_image())
    assert info.value.too_large


def test_set_embeddings_foreign_model(model, embeddings):
    foreign = ImageEmbeddings(embeddings.tensors, embeddings.original_size, "int8-0000000000000000")
    predictor = Predictor(model)
    with pytest.raises(ValueError, match="int8-0000000000000000"):
        predictor.set_embeddings(foreign)
    with pytest.raises(RuntimeError):
        predictor.predict(points=[[1, 1]])  # the foreign embeddings were not kept


# ------------------------------------------------------------------------------------------------
# predict
# ------------------------------------------------------------------------------------------------


def test_predict_click(click_result):
    result = click_result
    assert result.iou_scores.shape == (3,) and result.iou_scores.dtype == np.float32
    assert ((result.iou_scores >= 0) & (result.iou_scores <= 1)).all()
    assert result.best_index == int(np.argmax(result.iou_scores))
    assert 0 < result.presence < 1
    assert result.presence == pytest.approx(1 / (1 + np.exp(-result.object_score_logit)))
    assert result.low_res_logits.shape == (3, 288, 288)
    mask = result.mask()
    assert mask.shape == (HEIGHT, WIDTH) and mask.dtype == bool
    masks = result.masks()
    assert masks.shape == (3, HEIGHT, WIDTH) and masks.dtype == bool
    np.testing.assert_array_equal(mask, masks[result.best_index])
    for index in range(3):
        np.testing.assert_array_equal(result.mask(index), masks[index])


@pytest.mark.parametrize("index", [3, 5, -1])
def test_mask_index_out_of_range(click_result, index):
    with pytest.raises(IndexError, match=r"0\.\.2"):
        click_result.mask(index)


def test_predict_box_and_box_with_click(predictor):
    box = predictor.predict(box=[5, 10, 55, 65])
    assert box.mask().shape == (HEIGHT, WIDTH)
    with_click = predictor.predict(points=[[30, 40]], labels=[0], box=[5, 10, 55, 65])
    assert not np.array_equal(box.low_res_logits, with_click.low_res_logits)


def test_click_on_far_edge_is_accepted(predictor):
    assert predictor.predict(points=[[WIDTH, HEIGHT]]).mask().shape == (HEIGHT, WIDTH)


def test_invalid_prompt_raises_prompt_error(predictor):
    with pytest.raises(PromptError) as info:
        predictor.predict(points=[[WIDTH + 1, 10]])
    assert info.value.field == "objects[0].points[0].x"


def test_prompt_limits_applied(model, embeddings):
    predictor = Predictor(model, prompt_limits=PromptLimits(max_points=1))
    predictor.set_embeddings(embeddings)
    predictor.predict(points=[[1, 1]])
    with pytest.raises(PromptError):
        predictor.predict(points=[[1, 1], [2, 2]])


def test_background_label_changes_result(predictor):
    foreground = predictor.predict(points=[[30, 40], [90, 50]], labels=[1, 1])
    background = predictor.predict(points=[[30, 40], [90, 50]], labels=[1, 0])
    assert np.abs(foreground.low_res_logits - background.low_res_logits).max() > 1e-3


def test_objects_are_independent(predictor, click_result, fp32_results):
    """An object's result is what it gets alone, whatever else is in the request (and in its batch)."""
    with_other_count = predictor.predict_objects([A, B_MORE])
    assert len(with_other_count) == 2
    assert_same_prediction(with_other_count[0], click_result, atol=1e-5)
    # In PROMPTS, A shares a decoder batch with C_SAME, and B_MORE with the 4-token click + box.
    assert_same_prediction(fp32_results[0], click_result, atol=1e-5)
    assert_same_prediction(fp32_results[1], with_other_count[1], atol=1e-5)
    assert not np.allclose(fp32_results[2].low_res_logits, click_result.low_res_logits)


def test_results_in_request_order(model, embeddings, fp32_results):
    reversed_results = decode(model, embeddings, PROMPTS[::-1])
    for a, b in zip(fp32_results, reversed_results[::-1], strict=True):
        assert_same_prediction(a, b, atol=1e-5)


def test_decode_records_stages(model, embeddings):
    timer = StageTimer()
    decode(model, embeddings, [A], timer=timer)
    assert set(timer.milliseconds) == {"prepare", "prompt", "model"}  # the encoder's tensors: prepared first
    assert all(ms >= 0 for ms in timer.milliseconds.values())
    timer = StageTimer()
    decode(model, model.decoder_embeddings(embeddings), [A], timer=timer)
    assert set(timer.milliseconds) == {"prompt", "model"}  # prepared once (as the decoder's cache keeps them)


# ------------------------------------------------------------------------------------------------
# Stored embeddings
# ------------------------------------------------------------------------------------------------


def stored_and_read(embeddings: ImageEmbeddings, model_id: str) -> ImageEmbeddings:
    """The embeddings through the store's value format and back, as a decoder reads them."""
    blob = serialize(EMBEDDINGS.stored(embeddings, embeddings.model_id, "img"))
    return EMBEDDINGS.value(deserialize(blob, kind=EMBEDDINGS.name, model_id=model_id, subject="img"))


def test_serialized_embeddings_predict_identically(model, embeddings, fp32_results):
    restored = stored_and_read(embeddings, model.model_id)
    other = Predictor(model)
    other.set_embeddings(restored)
    for a, b in zip(fp32_results, other.predict_objects(PROMPTS), strict=True):
        assert_same_prediction(a, b)


def test_float16_embeddings_agree(model, embeddings, fp32_results):
    half = stored_and_read(embeddings.astype(np.float16), model.model_id)
    assert half.nbytes * 2 == embeddings.nbytes
    other = Predictor(model)
    other.set_embeddings(half)
    agree = total = 0
    max_iou_diff = max_presence_diff = 0.0
    for a, b in zip(fp32_results, other.predict_objects(PROMPTS), strict=True):
        masks_a, masks_b = a.masks(), b.masks()
        agree += int((masks_a == masks_b).sum())
        total += masks_a.size
        max_iou_diff = max(max_iou_diff, float(np.abs(a.iou_scores - b.iou_scores).max()))
        max_presence_diff = max(max_presence_diff, abs(a.presence - b.presence))
    agreement = agree / total
    print(
        f"fp16 vs fp32 embeddings: mask agreement {agreement:.6%} over {total} pixels, "
        f"max IoU-score difference {max_iou_diff:.2e}, max presence difference {max_presence_diff:.2e}"
    )
    assert agreement >= 0.999
    assert max_iou_diff < 1e-3
