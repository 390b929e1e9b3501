"""sam3_core.model on the tiny fixture: file discovery, the model id, variants, runtime options, shapes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from sam3_core.model import (
    ModelNotFoundError,
    Preprocessing,
    RuntimeOptions,
    Sam3Model,
    compute_model_id,
    graph_path,
)
from sam3_core.predictor import encode

FIXTURE = Path(__file__).parent / "fixtures" / "model-tiny"
ENCODER, DECODER, CONFIG = "vision_encoder.onnx", "prompt_encoder_mask_decoder.onnx", "preprocessor_config.json"
SAM3_EMBEDDING_SHAPES = [(1, 32, 288, 288), (1, 64, 144, 144), (1, 256, 72, 72)]


def model_id_of(folder: Path, **kwargs) -> str:
    """The model id without building any session (fast)."""
    return Sam3Model(folder, load_encoder=False, load_decoder=False, **kwargs).model_id


def copy_model(destination: Path, files=(ENCODER, DECODER, CONFIG, "manifest.json"), subfolder: str = "") -> Path:
    (destination / subfolder).mkdir(parents=True, exist_ok=True)
    for name in files:
        shutil.copy(FIXTURE / name, destination / subfolder / name)
    return destination


@pytest.fixture(scope="module")
def decoder_only() -> Sam3Model:
    return Sam3Model(FIXTURE, load_encoder=False, runtime=RuntimeOptions(intra_op_threads=1))


# ------------------------------------------------------------------------------------------------
# Model id
# ------------------------------------------------------------------------------------------------


def test_model_id_stable_across_loads():
    first, second = model_id_of(FIXTURE), model_id_of(FIXTURE)
    assert first == second
    assert first.startswith("fp32-") and len(first) == len("fp32-") + 16
    assert first == compute_model_id(graph_path(FIXTURE, "vision_encoder", None), Preprocessing.from_folder(FIXTURE))


def test_model_id_does_not_depend_on_location_or_layout(tmp_path):
    flat = copy_model(tmp_path / "flat")
    hub = copy_model(tmp_path / "hub", files=(ENCODER, DECODER), subfolder="onnx")
    shutil.copy(FIXTURE / CONFIG, hub / CONFIG)
    assert model_id_of(flat) == model_id_of(hub) == model_id_of(FIXTURE)


def test_model_id_same_for_fp32_variant_name():
    assert model_id_of(FIXTURE, variant="fp32") == model_id_of(FIXTURE)


@pytest.mark.parametrize(
    "edit",
    [
        {"image_mean": [0.485, 0.456, 0.406]},
        {"image_std": [0.229, 0.224, 0.225]},
        {"size": {"height": 1024, "width": 1024}},
        {"size": {"longest_edge": 1008}, "image_mean": [0.5, 0.5, 0.49]},
    ],
    ids=["mean", "std", "size", "mean-slightly"],
)
def test_model_id_changes_with_preprocessing(tmp_path, edit):
    folder = copy_model(tmp_path)
    config = json.loads((folder / CONFIG).read_text())
    config.update(edit)
    (folder / CONFIG).write_text(json.dumps(config))
    assert model_id_of(folder) != model_id_of(FIXTURE)


def test_model_id_unchanged_by_equivalent_config(tmp_path):
    """The id follows the settings, not the file: a config restating the defaults matches no config."""
    folder = copy_model(tmp_path, files=(ENCODER, DECODER))
    without = model_id_of(folder)
    (folder / CONFIG).write_text(
        json.dumps(
            {"size": {"height": 1008, "width": 1008}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
        )
    )
    assert model_id_of(folder) == without == model_id_of(FIXTURE)


def test_model_id_changes_with_encoder_file(tmp_path):
    folder = copy_model(tmp_path)
    with (folder / ENCODER).open("ab") as handle:
        handle.write(b"\0")
    assert model_id_of(folder) != model_id_of(FIXTURE)


def test_model_id_covers_external_data(tmp_path):
    folder = copy_model(tmp_path)
    ids = {model_id_of(folder)}
    (folder / (ENCODER + "_data")).write_bytes(b"weights v1")
    ids.add(model_id_of(folder))
    (folder / (ENCODER + "_data")).write_bytes(b"weights v2")
    ids.add(model_id_of(folder))
    assert len(ids) == 3


def test_model_id_ignores_decoder(tmp_path):
    """Cached embeddings stay valid when only the decoder changes."""
    folder = copy_model(tmp_path)
    with (folder / DECODER).open("ab") as handle:
        handle.write(b"\0")
    assert model_id_of(folder) == model_id_of(FIXTURE)


# ------------------------------------------------------------------------------------------------
# Finding the graphs
# ------------------------------------------------------------------------------------------------


def test_graph_path_in_onnx_subfolder(tmp_path):
    folder = copy_model(tmp_path, files=(ENCODER, DECODER), subfolder="onnx")
    assert graph_path(folder, "vision_encoder", None) == folder / "onnx" / ENCODER
    model = Sam3Model(folder, load_encoder=False)
    assert model.decoder_path == folder / "onnx" / DECODER
    assert model.mask_size == (288, 288)
    assert model.preprocessing == Preprocessing()  # no config: the defaults


@pytest.mark.parametrize(
    ("variant", "name"),
    [
        (None, "vision_encoder.onnx"),
        ("fp32", "vision_encoder.onnx"),
        ("fp16", "vision_encoder_fp16.onnx"),
        ("q4f16", "vision_encoder_q4f16.onnx"),
    ],
)
def test_graph_path_variant_names(tmp_path, variant, name):
    for file_name in ("vision_encoder.onnx", "vision_encoder_fp16.onnx", "vision_encoder_q4f16.onnx"):
        (tmp_path / file_name).touch()
    assert graph_path(tmp_path, "vision_encoder", variant) == tmp_path / name


def test_missing_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="sam3 export") as info:
        Sam3Model(tmp_path / "nowhere")
    assert isinstance(info.value, FileNotFoundError)
    assert "nowhere" in str(info.value)


def test_missing_encoder_graph(tmp_path):
    folder = copy_model(tmp_path, files=(DECODER,))
    with pytest.raises(ModelNotFoundError, match="sam3 export") as info:
        Sam3Model(folder)
    message = str(info.value)
    assert ENCODER in message
    assert DECODER in message  # what is present is listed


def test_missing_decoder_graph(tmp_path):
    folder = copy_model(tmp_path, files=(ENCODER,))
    with pytest.raises(ModelNotFoundError, match="sam3 export") as info:
        Sam3Model(folder, load_decoder=False)  # the decoder path is resolved even when not loaded
    assert DECODER in str(info.value)


def test_missing_variant_names_file():
    with pytest.raises(ModelNotFoundError, match=r"vision_encoder_int8\.onnx"):
        Sam3Model(FIXTURE, variant="int8", load_encoder=False, load_decoder=False)


# ------------------------------------------------------------------------------------------------
# A quantized variant
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_folder(tmp_path_factory) -> Path:
    pytest.importorskip("onnx", reason="onnxruntime.quantization needs the onnx package")
    from sam3_export.quantize import quantize

    folder = copy_model(tmp_path_factory.mktemp("int8"))
    quantize(folder, "int8")
    return folder


def saturating_weights(encoder: Path) -> list[str]:
    """The int8 weights of a quantized graph that ONNX Runtime's int8 kernels can saturate on CPUs without
    VNNI (AVX2 only: MLAS multiplies uint8 activations by int8 weights with vpmaddubsw, which adds two products
    into an int16: 2 x 255 x |w| must stay within 32767, so |w| <= 64). uint8 weights take another kernel."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(encoder), load_external_data=False).graph
    initializers = {i.name: i for i in graph.initializer}
    weights = [n.input[1] for n in graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    assert weights, f"{encoder.name} has no quantized MatMul"
    return [
        name
        for name in weights
        if initializers[name].data_type == onnx.TensorProto.INT8
        and 2 * 255 * int(np.abs(numpy_helper.to_array(initializers[name]).astype(np.int32)).max()) > 32767
    ]


def test_int8_variant(int8_folder):
    """The int8 encoder's fidelity holds on every x86 CPU: its weights never saturate the AVX2 kernels (the
    check fails here too, where the AVX-512 VNNI kernels would not show it), and the embeddings stay within
    3 % of fp32 (docs/model-contract.md has the figures per CPU)."""
    runtime = RuntimeOptions(providers=("CPUExecutionProvider",))
    fp32 = Sam3Model(int8_folder, load_decoder=False, runtime=runtime)
    int8 = Sam3Model(int8_folder, variant="int8", load_decoder=False, runtime=runtime)
    assert int8.encoder_path.name == "vision_encoder_int8.onnx"
    assert int8.model_id.startswith("int8-")
    assert int8.model_id != fp32.model_id
    assert int8.decoder_path == fp32.decoder_path  # the decoder stays fp32 unless asked
    assert saturating_weights(int8.encoder_path) == []

    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    reference, quantized = encode(fp32, rgb), encode(int8, rgb)
    assert quantized.model_id == int8.model_id
    for name, a, b in zip(("0", "1", "2"), reference.tensors, quantized.tensors, strict=True):
        assert b.dtype == np.float32 and b.shape == a.shape
        relative_rms = float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(a**2)))
        print(f"int8 vs fp32 image_embeddings.{name}: relative RMS {relative_rms:.4f}")
        assert 0 < relative_rms < 0.03


def test_the_saturation_check_catches_full_range_int8_weights(tmp_path):
    """The check above is not vacuous: full-range int8 weights (ONNX Runtime's default, 7.8 % off fp32 on an
    AVX2-only EPYC) fail it."""
    onnx = pytest.importorskip("onnx", reason="onnxruntime.quantization needs the onnx package")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = copy_model(tmp_path)
    target = folder / "vision_encoder_full_range.onnx"
    quantize_dynamic(
        folder / ENCODER,
        target,
        op_types_to_quantize=["MatMul"],
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    assert saturating_weights(target)


# ------------------------------------------------------------------------------------------------
# Runtime options
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("providers", [["CPUExecutionProvider"], ("CPUExecutionProvider",)])
def test_explicit_cpu_provider(providers):
    model = Sam3Model(FIXTURE, load_encoder=False, runtime=RuntimeOptions(providers=providers))
    assert model.providers == ["CPUExecutionProvider"]
    assert model.decoder.get_providers() == ["CPUExecutionProvider"]


def test_single_provider_string():
    """BUG (model.py, RuntimeOptions.resolved_providers): the type allows one provider as a plain str,
    but anything other than "auto" is iterated character by character ('C', 'P', 'U', ...)."""
    assert RuntimeOptions(providers="CPUExecutionProvider").resolved_providers() == ["CPUExecutionProvider"]


def test_unavailable_provider_lists_available():
    options = RuntimeOptions(providers=("NoSuchExecutionProvider", "CPUExecutionProvider"))
    with pytest.raises(ValueError, match="NoSuchExecutionProvider") as info:
        options.resolved_providers()
    for available in ort.get_available_providers():
        assert available in str(info.value)
    with pytest.raises(ValueError):
        Sam3Model(FIXTURE, load_encoder=False, load_decoder=False, runtime=options)


def test_auto_providers_end_with_cpu():
    providers = RuntimeOptions().resolved_providers()
    assert providers[-1] == "CPUExecutionProvider"
    assert len(providers) == len(set(providers))
    assert set(providers) <= set(ort.get_available_providers())


def test_thread_options_applied(decoder_only):
    options = decoder_only.decoder.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 1


# ------------------------------------------------------------------------------------------------
# Shapes and the decoder call
# ------------------------------------------------------------------------------------------------


def test_decoder_only_knows_shapes(decoder_only):
    assert decoder_only.embedding_shapes() == SAM3_EMBEDDING_SHAPES
    assert decoder_only.mask_size == (288, 288)
    with pytest.raises(RuntimeError, match="load_encoder=False"):
        _ = decoder_only.encoder


def test_encoder_only_knows_shapes():
    model = Sam3Model(FIXTURE, load_decoder=False)
    assert model.embedding_shapes() == SAM3_EMBEDDING_SHAPES
    assert model.mask_size == (288, 288)
    with pytest.raises(RuntimeError, match="load_decoder=False"):
        _ = model.decoder


def test_appends_pad_point_from_manifest(tmp_path, decoder_only):
    assert decoder_only.appends_pad_point is False
    folder = copy_model(tmp_path, files=(ENCODER, DECODER))
    assert Sam3Model(folder, load_encoder=False, load_decoder=False).appends_pad_point is False
    (folder / "manifest.json").write_text(json.dumps({"decoder_appends_pad_point": True}))
    assert Sam3Model(folder, load_encoder=False, load_decoder=False).appends_pad_point is True


@pytest.fixture(scope="module")
def random_embeddings() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(5)
    return tuple(rng.standard_normal(shape).astype(np.float32) for shape in SAM3_EMBEDDING_SHAPES)


def _prompt_tensors():
    points = np.array([[[[100.0, 200.0], [0.0, 0.0]], [[500.0, 600.0], [0.0, 0.0]]]], np.float32)
    labels = np.array([[[1, -1], [1, -1]]], np.int64)
    return points, labels, np.zeros((1, 0, 4), np.float32)


def test_run_decoder_shapes_and_dtypes(decoder_only, random_embeddings):
    iou, masks, objects = decoder_only.run_decoder(*_prompt_tensors(), random_embeddings)
    assert iou.shape == (1, 2, 3) and masks.shape == (1, 2, 3, 288, 288) and objects.shape == (1, 2, 1)
    assert iou.dtype == masks.dtype == objects.dtype == np.float32
    assert ((iou >= 0) & (iou <= 1)).all()  # already sigmoided
    assert not np.array_equal(masks[0, 0], masks[0, 1])  # the two prompts differ


def test_run_decoder_casts_inputs_to_graph_types(decoder_only, random_embeddings):
    points, labels, boxes = _prompt_tensors()
    exact = decoder_only.run_decoder(points, labels, boxes, random_embeddings)
    cast = decoder_only.run_decoder(
        points.astype(np.float64),
        labels.astype(np.int32),
        boxes,
        tuple(e.astype(np.float64) for e in random_embeddings),
    )
    for a, b in zip(exact, cast, strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------------
# Preprocessing settings
# ------------------------------------------------------------------------------------------------


def test_preprocessing_fixture_config():
    assert Preprocessing.from_folder(FIXTURE) == Preprocessing((1008, 1008), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_preprocessing_sam21_config(tmp_path):
    (tmp_path / CONFIG).write_text(
        json.dumps(
            {
                "image_processor_type": "Sam2ImageProcessor",
                "size": {"longest_edge": 1024},
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
            }
        )
    )
    settings = Preprocessing.from_folder(tmp_path)
    assert settings.size == (1024, 1024)
    assert settings.mean == (0.485, 0.456, 0.406)
    assert settings.std == (0.229, 0.224, 0.225)


def test_preprocessing_non_square_size(tmp_path):
    (tmp_path / CONFIG).write_text(json.dumps({"size": {"height": 768, "width": 1024}}))
    settings = Preprocessing.from_folder(tmp_path)
    assert settings.size == (768, 1024)
    assert settings.mean == settings.std == (0.5, 0.5, 0.5)


def test_preprocessing_missing_file(tmp_path):
    settings = Preprocessing.from_folder(tmp_path)
    assert settings.size == (1008, 1008)
    assert settings.mean == settings.std == (0.5, 0.5, 0.5)
