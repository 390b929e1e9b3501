"""Concept prompts in the core against transformers' Sam3Model (+ Sam3Processor) on the same weights.

The committed unified tiny folder serves clicks and concepts from one encode; every reference was made by
tests/fixtures/generate.py with transformers itself. No torch here.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

import concept_references as refs
import references
from sam3_core.concept import ConceptModel, Exemplar
from sam3_core.graphs import CONCEPT_FILES, DETECTOR_OUTPUTS
from sam3_core.model import ConceptsNotSupportedError, Sam3Model
from sam3_core.predictor import Predictor
from sam3_core.tokenizer import ClipTokenizer
from test_parity import assert_matches_reference


@cache
def model() -> Sam3Model:
    return Sam3Model(refs.MODEL_DIR)


@cache
def predictor_for(image: str) -> Predictor:
    predictor = Predictor(model(), concepts=concepts())
    predictor.set_image(refs.IMAGES_DIR / image)
    return predictor


@cache
def concepts() -> ConceptModel:
    return ConceptModel(refs.MODEL_DIR)


@pytest.mark.parametrize(("image", "case"), refs.all_cases(), ids=lambda v: str(v))
def test_concepts_match_transformers(image: str, case: str) -> None:
    """Same instances above the threshold, scores within 1e-4, boxes within 0.5 px, masks >= 99.9 %."""
    for reference in refs.load(image, case):
        query = reference.query
        instances = predictor_for(image).predict_concept(
            text=query.get("text"), exemplars=reference.exemplars, threshold=query["threshold"]
        )
        assert len(instances) == len(reference.scores), reference.id
        expected = zip(reference.scores, reference.boxes, reference.masks, strict=True)
        for instance, (score, box, mask) in zip(instances, expected, strict=True):
            assert abs(instance.score - score) <= refs.SCORE_TOLERANCE
            assert abs(instance.presence - reference.presence) <= refs.SCORE_TOLERANCE
            np.testing.assert_allclose(instance.box, box, atol=refs.BOX_TOLERANCE_PIXELS)
            assert references.agreement(instance.mask(), mask) >= refs.MIN_MASK_AGREEMENT


def test_references_cover_every_prompt_kind() -> None:
    """Instances exist (and vary) in the references, and the no-match case really has none."""
    counts: dict[str, int] = {}
    for image, case in refs.all_cases():
        for reference in refs.load(image, case):
            counts[case] = counts.get(case, 0) + len(reference.scores)
            fractions = reference.masks.mean(axis=(-2, -1))
            assert np.all((fractions > 0.01) & (fractions < 0.99)), (reference.id, fractions)
    assert counts["no_match"] == 0
    assert all(count > 0 for case, count in counts.items() if case != "no_match"), counts


@pytest.mark.parametrize(("image", "case"), refs.click_cases(), ids=lambda v: str(v))
def test_clicks_on_the_unified_folder_follow_the_video_tracker_path(image: str, case: str) -> None:
    """The unified encoder's tracker outputs: transformers' clicks on the video tracker's embeddings
    (no_memory_embedding on the 72x72 level), reproduced from the same encode as the concepts."""
    reference = refs.clicks(image, case)
    assert_matches_reference(predictor_for(image).predict_objects(reference.prompts), reference)


def test_tokenizer_equals_clip_tokenizer() -> None:
    tokenizer = ClipTokenizer(refs.MODEL_DIR)
    expected = refs.tokens()
    ids, mask = tokenizer(list(expected))
    for row, (phrase, encoding) in enumerate(expected.items()):
        assert ids[row].tolist() == encoding["input_ids"], phrase
        assert mask[row].tolist() == encoding["attention_mask"], phrase
    assert ids.shape == (len(expected), 32) and ids.dtype == np.int64


def test_text_features_are_cached_per_phrase() -> None:
    one_phrase = ConceptModel(refs.MODEL_DIR).encode_text("a dog").nbytes
    model = ConceptModel(refs.MODEL_DIR, text_cache_bytes=2 * one_phrase)
    first = model.text_features("a dog")
    assert model.text_features("a dog") is first
    model.text_features("cat")
    model.text_features("red car")  # evicts "a dog", the least recently used
    again = model.text_features("a dog")
    assert again is not first
    np.testing.assert_array_equal(again.features, first.features)


def test_clicks_and_concepts_share_one_encode() -> None:
    counting = Sam3Model(refs.MODEL_DIR)
    runs = []
    original = counting.run_encoder

    def run_encoder(*args, **kwargs):  # type: ignore[no-untyped-def]
        runs.append(kwargs)
        return original(*args, **kwargs)

    counting.run_encoder = run_encoder  # type: ignore[method-assign]
    predictor = Predictor(counting, concepts=concepts())
    predictor.set_image(refs.IMAGES_DIR / "landscape.jpg")
    predictor.predict(points=[[100, 100]])
    predictor.predict_concept("a dog", threshold=0.0)
    predictor.predict_concept(exemplars=[((10, 10, 200, 200), True)], threshold=0.0)
    assert runs == [{"detector_features": True}]


def test_tracker_only_folder_serves_clicks_and_refuses_concepts_clearly() -> None:
    predictor = Predictor(Sam3Model(references.MODEL_DIR))
    predictor.set_image(refs.IMAGES_DIR / "tiny_17x23.png")
    assert predictor.predict(points=[[5, 5]]).iou_scores.shape == (3,)
    with pytest.raises(ConceptsNotSupportedError, match=r"clicks and boxes only.*sam3 models export") as info:
        predictor.predict_concept("a dog")
    # It names what the folder lacks (docs/concepts.md says so): the concept files and the encoder's outputs.
    for missing in (*CONCEPT_FILES, "detector outputs of vision_encoder.onnx", *DETECTOR_OUTPUTS):
        assert missing in str(info.value)
    with pytest.raises(ConceptsNotSupportedError, match=r"need text_encoder\.onnx, exemplar_encoder\.onnx"):
        ConceptModel(references.MODEL_DIR)


def test_the_decoder_has_detrs_200_queries() -> None:
    """The most instances one concept can return, read from the graph (SAM3's DETR decoder: 200)."""
    assert concepts().queries == 200


def test_predict_concept_before_set_image_says_so() -> None:
    with pytest.raises(RuntimeError, match="set_image"):
        Predictor(model(), concepts=concepts()).predict_concept("a dog")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs a text phrase, exemplar boxes, or both"),
        ({"text": "   "}, "text prompt is empty"),
        ({"text": "dog", "threshold": 1.5}, "threshold"),
        ({"exemplars": [((10, 10, 5, 20), True)]}, "x2 > x1"),
        ({"exemplars": [((10, float("nan"), 50, 20), True)]}, "finite"),
        ({"exemplars": [(1, 2, 3)]}, "4 finite numbers"),
    ],
)
def test_bad_concept_prompts_are_refused_with_a_reason(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        predictor_for("tiny_17x23.png").predict_concept(**kwargs)


def test_exemplar_forms() -> None:
    box = (1.0, 2.0, 3.0, 4.0)
    assert Exemplar.of((box, False)) == Exemplar(box, False)
    assert Exemplar.of(box) == Exemplar(box, True)
    assert Exemplar.of(Exemplar(box, False)) == Exemplar(box, False)
