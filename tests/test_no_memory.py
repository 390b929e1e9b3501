"""SAM3's no-memory embedding (docs/model-contract.md): our encoder adds it to image_embeddings.2 as SAM3
does, it changes the masks, and every model folder says whether its encoder has it.

The references are transformers' video path (checked against our encoder's semantics bit for bit by
tests/fixtures/generate.py); beside them the generator stored what transformers' Sam3TrackerModel
returns from pixels, which loses the embedding. Our graphs with the vector taken out must give exactly that.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import references
from sam3_client.proto import common_pb2
from sam3_core import no_memory
from sam3_core.embeddings import ImageEmbeddings
from sam3_core.model import Sam3Model
from sam3_core.predictor import Predictor
from sam3_serving.model_info import model_info
from sam3_serving.store import StoreConfig, ValueStore

ENCODER = "vision_encoder.onnx"


@cache
def model() -> Sam3Model:
    return Sam3Model(references.MODEL_DIR)


@cache
def no_memory_vector() -> np.ndarray:
    """The vector as the committed encoder graph holds it: [1, 256, 1, 1]."""
    graph = onnx.load(str(references.MODEL_DIR / ENCODER)).graph
    (constant,) = [i for i in graph.initializer if i.name == no_memory.GRAPH_CONSTANT]
    return numpy_helper.to_array(constant)


@cache
def embeddings_for(image: str) -> ImageEmbeddings:
    return Predictor(model()).set_image(references.IMAGES_DIR / image)


def predict(embeddings: ImageEmbeddings, reference: references.Reference) -> list:
    predictor = Predictor(model())
    predictor.set_embeddings(embeddings)
    return predictor.predict_objects(reference.prompts)


def without_vector(embeddings: ImageEmbeddings) -> ImageEmbeddings:
    high_0, high_1, lowest = embeddings.tensors
    return dataclasses.replace(embeddings, tensors=(high_0, high_1, lowest - no_memory_vector()[0]))


def image_tracker_reference(image: str, case: str) -> dict[str, np.ndarray]:
    """Sam3TrackerModel(pixel_values)'s scores and 288x288 masks, as the generator stored them."""
    arrays = references._arrays(image)
    packed = arrays[f"{case}/image_tracker/low_res_masks_packed"]
    return {
        "iou_scores": arrays[f"{case}/image_tracker/iou_scores"],
        "object_score_logits": arrays[f"{case}/image_tracker/object_score_logits"],
        "masks": np.unpackbits(packed, axis=-1, count=packed.shape[-1] * 8).astype(bool),
    }


def test_the_committed_encoder_holds_a_real_vector() -> None:
    vector = no_memory_vector()
    assert vector.shape == (1, 256, 1, 1)
    assert np.abs(vector).max() > 0.1


@pytest.mark.parametrize(("image", "case"), references.all_cases(), ids=lambda v: str(v))
def test_the_vector_is_all_that_separates_sam3_from_transformers_image_tracker(image: str, case: str) -> None:
    """With the vector our graphs match the video-path references (test_parity); without it, they give
    exactly Sam3TrackerModel's outputs, and every best mask visibly changes."""
    reference = references.load(image, case)
    expected = image_tracker_reference(image, case)
    embeddings = embeddings_for(image)
    with_vector = predict(embeddings, reference)
    without = predict(without_vector(embeddings), reference)
    for k, (ours, theirs) in enumerate(zip(with_vector, without, strict=True)):
        np.testing.assert_allclose(theirs.iou_scores, expected["iou_scores"][k], atol=references.SCORE_TOLERANCE)
        assert abs(theirs.object_score_logit - expected["object_score_logits"][k, 0]) <= references.SCORE_TOLERANCE
        for i in range(3):
            agreement = references.agreement(theirs.low_res_logits[i] > 0, expected["masks"][k, i])
            assert agreement >= references.MIN_MASK_AGREEMENT, f"object {k} mask {i}: {agreement:.6f}"
        assert np.abs(ours.iou_scores - theirs.iou_scores).max() > 1e-3
        best_agreement = references.agreement(
            ours.low_res_logits[ours.best_index] > 0, theirs.low_res_logits[theirs.best_index] > 0
        )
        assert best_agreement < 0.99, f"object {k}: the vector changed only {1 - best_agreement:.4f} of the mask"


def test_our_folder_states_it_in_the_manifest_and_in_model_info() -> None:
    manifest = json.loads((references.MODEL_DIR / "manifest.json").read_text())
    assert manifest[no_memory.MANIFEST_KEY] is True
    assert model().no_memory_embedding == no_memory.NoMemoryEmbedding(
        no_memory.ADDED, f"manifest.json: {no_memory.MANIFEST_KEY} = True"
    )
    store = ValueStore(StoreConfig(url="redis://127.0.0.1:9"), model().model_id)  # never contacted
    assert model_info(model(), store).no_memory_embedding == common_pb2.NO_MEMORY_EMBEDDING_ADDED


def folder_without_manifest(tmp_path: Path, constant_name: str | None = None) -> Path:
    """The tiny model as another exporter might publish it: no manifest, optionally the vector renamed."""
    folder = tmp_path / "model"
    shutil.copytree(references.MODEL_DIR, folder)
    (folder / "manifest.json").unlink()
    if constant_name is not None:
        graph = onnx.load(str(folder / ENCODER))
        for initializer in graph.graph.initializer:
            if initializer.name == no_memory.GRAPH_CONSTANT:
                initializer.name = constant_name
        for node in graph.graph.node:
            node.input[:] = [constant_name if n == no_memory.GRAPH_CONSTANT else n for n in node.input]
        onnx.save(graph, str(folder / ENCODER))
    return folder


@pytest.mark.parametrize(
    ("constant_name", "state", "info"),
    [
        (None, no_memory.ADDED, common_pb2.NO_MEMORY_EMBEDDING_ADDED),
        ("tracker_model.no_mem_embed", no_memory.ADDED, common_pb2.NO_MEMORY_EMBEDDING_ADDED),
        ("onnx::Add_1079", no_memory.UNKNOWN, common_pb2.NO_MEMORY_EMBEDDING_UNKNOWN),
    ],
    ids=["our-name", "sam2-name", "anonymous"],
)
def test_without_a_manifest_the_graph_constant_decides_or_it_is_unknown(
    tmp_path: Path, constant_name: str | None, state: str, info: int
) -> None:
    loaded = Sam3Model(folder_without_manifest(tmp_path, constant_name), load_decoder=False)
    assert loaded.no_memory_embedding.state == state
    assert ENCODER in loaded.no_memory_embedding.evidence
    store = ValueStore(StoreConfig(url="redis://127.0.0.1:9"), loaded.model_id)
    assert model_info(loaded, store).no_memory_embedding == info


def test_a_constant_that_does_not_reach_the_72x72_output_is_not_taken_as_the_add(tmp_path: Path) -> None:
    folder = folder_without_manifest(tmp_path)
    graph = onnx.load(str(folder / ENCODER))
    (add,) = [node for node in graph.graph.node if "image_embeddings.2" in node.output]
    add.op_type, add.input[:] = "Identity", [add.input[0]]  # the vector stays, unused, as in transformers' graph
    onnx.save(graph, str(folder / ENCODER))
    assert no_memory.detect({}, folder / ENCODER).state == no_memory.UNKNOWN


@pytest.mark.parametrize(
    ("manifest", "state"),
    [
        ({"format": "sam3-service/model-folder/1"}, no_memory.ABSENT),  # exported before the key existed
        ({"format": "sam3-service/model-folder/1", no_memory.MANIFEST_KEY: False}, no_memory.ABSENT),
        ({no_memory.MANIFEST_KEY: True}, no_memory.ADDED),
    ],
)
def test_a_manifest_decides_before_the_graph(tmp_path: Path, manifest: dict, state: str) -> None:
    folder = folder_without_manifest(tmp_path)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert Sam3Model(folder, load_encoder=False, load_decoder=False).no_memory_embedding.state == state
