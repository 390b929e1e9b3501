"""The encoder under OpenVINO (--encoder-runtime): the same graph file, the same embeddings at f32, a
namespace of its own at bf16 (refused on a CPU that cannot compute it), and a run a cancelled call can stop."""

from __future__ import annotations

import sys
import threading

import numpy as np
import onnxruntime as ort
import pytest

import references
from sam3_bench.run import relative_rms
from sam3_core import openvino_session
from sam3_core.model import RuntimeOptions, Sam3Model
from sam3_core.openvino_session import (
    EncodeTerminated,
    OpenVinoSession,
    PrecisionUnavailableError,
    check_precision,
    cpu_capabilities,
    precision_of,
)
from sam3_core.predictor import Predictor, encode

RGB = np.random.default_rng(11).integers(0, 256, (240, 320, 3), dtype=np.uint8)


def _model(runtime: str) -> Sam3Model:
    return Sam3Model(references.MODEL_DIR, runtime=RuntimeOptions(encoder_runtime=runtime))


@pytest.fixture(scope="module")
def onnxruntime_embeddings():
    return encode(_model("onnxruntime"), RGB)


def test_openvino_f32_gives_onnx_runtimes_embeddings_under_the_same_model_id(onnxruntime_embeddings) -> None:
    model = _model("openvino-f32")
    assert isinstance(model.encoder, OpenVinoSession)
    assert model.model_id == onnxruntime_embeddings.model_id  # a fleet may mix them: same numbers
    embeddings = encode(model, RGB)
    assert [t.shape for t in embeddings.tensors] == [t.shape for t in onnxruntime_embeddings.tensors]
    assert relative_rms(onnxruntime_embeddings, embeddings) < 1e-4


def test_openvino_bf16_is_close_and_namespaced_apart(onnxruntime_embeddings) -> None:
    if "BF16" not in cpu_capabilities():  # this CPU cannot compute it: refused (the next test's decision)
        with pytest.raises(PrecisionUnavailableError):
            _model("openvino-bf16")
        return
    model = _model("openvino-bf16")
    assert model.model_id.startswith("fp32.bf16-") and model.model_id != onnxruntime_embeddings.model_id
    embeddings = encode(model, RGB)
    assert embeddings.model_id == model.model_id
    assert all(t.dtype == np.float32 for t in embeddings.tensors)
    # bf16 keeps 8 bits of mantissa: about 1 % here, 1.3 % on the full-size model (docs/capacity.md). Not
    # ~0: the run really was at bf16.
    assert 1e-4 < relative_rms(onnxruntime_embeddings, embeddings) < 0.05


@pytest.mark.parametrize(
    ("capabilities", "refused"),
    [
        (["FP32", "INT8", "BIN", "EXPORT_IMPORT"], True),  # AVX2-only (an AMD EPYC without AVX-512): f32 at best
        (["BF16", "WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT"], False),  # AVX-512 BF16 (this machine)
    ],
    ids=["avx2-only", "avx512-bf16"],
)
def test_bf16_is_refused_at_start_up_where_openvino_would_run_f32(monkeypatch, capabilities, refused) -> None:
    """Loading the model is the start-up check: the capability list is injected, the decision is the real one.
    The bf16 model id is kept only for embeddings computed at bf16; f32 stays available everywhere."""
    monkeypatch.setattr(openvino_session, "cpu_capabilities", lambda: capabilities)
    if refused:
        with pytest.raises(PrecisionUnavailableError, match="no bf16 arithmetic") as info:
            _model("openvino-bf16")
        assert "FP32, INT8" in str(info.value) and "--encoder-runtime openvino-f32" in str(info.value)
        assert isinstance(_model("openvino-f32").encoder, OpenVinoSession)
    else:
        check_precision("bf16", capabilities)
        if "BF16" in cpu_capabilities():  # compiling for bf16 needs the real thing
            assert _model("openvino-bf16").model_id.startswith("fp32.bf16-")
    check_precision("f32", capabilities)  # f32 is never refused
    # A decoder loads no encoder: it only names the namespace, on any CPU.
    decoder = Sam3Model(
        references.MODEL_DIR, load_encoder=False, runtime=RuntimeOptions(encoder_runtime="openvino-bf16")
    )
    assert decoder.model_id.startswith("fp32.bf16-")


def test_a_predictor_segments_from_an_openvino_encode() -> None:
    predictor = Predictor(_model("openvino-f32"))
    predictor.set_image(RGB)
    prediction = predictor.predict([[160, 120]])
    assert prediction.masks().shape == (3, 240, 320)


def test_a_terminated_run_stops_and_the_session_keeps_working() -> None:
    """The encoder service sets run_options.terminate when a call is cancelled or expires."""
    model = _model("openvino-f32")
    pixels = np.zeros((1, 3, *model.preprocessing.size), np.float32)
    options = ort.RunOptions()
    timer = threading.Timer(0.01, lambda: setattr(options, "terminate", True))
    timer.start()
    with pytest.raises(EncodeTerminated):
        for _ in range(1000):  # far longer than the timer: one of these runs is stopped
            model.run_encoder(pixels, options)
    timer.join()
    assert model.run_encoder(pixels)[2].shape == tuple(model.embedding_shapes()[2])


def test_an_unknown_runtime_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="openvino-bf16"):
        precision_of("tensorrt")
    with pytest.raises(ValueError, match="choose one of"):
        _model("openvino-int4")


def test_without_the_package_the_error_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ImportError, match=r"pip install 'sam3-service\[openvino\]'"):
        _model("openvino-bf16")
