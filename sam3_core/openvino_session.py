"""OpenVINO as the encoder's runtime: the same `vision_encoder.onnx`, compiled for the CPU at f32 or bf16.

Why: the encode is the wait before a CPU user's first click, and ONNX Runtime has no bf16 kernels for
it. OpenVINO reads the ONNX graph as it is (ONNX Runtime's fused MultiHeadAttention included) and, at
bf16 inference precision, runs it on the AVX-512 BF16 / AMX units of recent x86 CPUs (docs/capacity.md
has the figures). Optional: `pip install 'sam3-service[openvino]'`.

`OpenVinoSession` answers the three calls `Sam3Model` makes of an encoder session (`get_inputs`,
`get_outputs`, `run`) the way an `onnxruntime.InferenceSession` does, so nothing else changes.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the CLI imports ENCODER_RUNTIMES for its flags: keep onnxruntime out of its start
    import onnxruntime as ort

# --encoder-runtime values: ONNX Runtime (the default), or OpenVINO at an inference precision.
ENCODER_RUNTIMES = ("onnxruntime", "openvino-f32", "openvino-bf16")
_PRECISION = {"openvino-f32": "f32", "openvino-bf16": "bf16"}
_ONNX_TYPES = {"f32": "tensor(float)", "f16": "tensor(float16)", "bf16": "tensor(bfloat16)"}
# How often a running encode looks at `run_options.terminate` (a cancelled call stops within this).
_CANCEL_POLL_MS = 50


class EncodeTerminated(RuntimeError):
    """The run was stopped through `run_options.terminate` (the caller's call ended)."""


@dataclass(frozen=True)
class TensorInfo:
    """What `InferenceSession.get_inputs()/get_outputs()` report of a tensor: name, shape, ONNX type."""

    name: str
    shape: tuple[int | str, ...]
    type: str


def precision_of(runtime: str) -> str | None:
    """The OpenVINO inference precision a --encoder-runtime value asks for; None for ONNX Runtime."""
    if runtime not in ENCODER_RUNTIMES:
        raise ValueError(f"unknown encoder runtime {runtime!r}: choose one of {', '.join(ENCODER_RUNTIMES)}")
    return _PRECISION.get(runtime)


class PrecisionUnavailableError(ValueError):
    """This CPU cannot compute at the precision asked for (bf16 without AVX-512 BF16 or AMX)."""


def cpu_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin can compute here ("BF16" only on CPUs with AVX-512 BF16 or AMX)."""
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def check_precision(precision: str, capabilities: Sequence[str]) -> None:
    """Refuses bf16 on a CPU without bf16 arithmetic. OpenVINO would silently compute at f32 there, and the
    embeddings would be stored under the bf16 model id: a fleet mixing CPU kinds would keep values of two
    precisions under one id."""
    if precision == "bf16" and "BF16" not in capabilities:
        raise PrecisionUnavailableError(
            "--encoder-runtime openvino-bf16: this CPU has no bf16 arithmetic (OpenVINO reports "
            f"{', '.join(capabilities) or 'nothing'}; bf16 needs AVX-512 BF16 or AMX), so OpenVINO would run at "
            "f32 under the bf16 model id. Use --encoder-runtime openvino-f32 or onnxruntime here (the float32 "
            "model id), or run bf16 encoders on CPUs that have it."
        )


class OpenVinoSession:
    """One ONNX graph compiled by OpenVINO for the CPU, run like an ONNX Runtime session."""

    def __init__(self, path: Path, precision: str, threads: int = 0) -> None:
        try:
            import openvino as ov
        except ImportError as error:
            raise ImportError(
                "the OpenVINO encoder runtime needs the openvino package: pip install 'sam3-service[openvino]'"
            ) from error
        check_precision(precision, cpu_capabilities())
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = ov.Core().compile_model(str(path), "CPU", config)
        # An input's tensor can carry several names; the graph input's own is its Parameter's friendly name.
        self._inputs = [_info(port, port.get_node().get_friendly_name()) for port in self._compiled.inputs]
        self._outputs = [_info(port, port.get_any_name()) for port in self._compiled.outputs]
        self._lock = threading.Lock()  # one infer request, one run at a time (as the encoder's slots allow)
        self._request = self._compiled.create_infer_request()

    def get_inputs(self) -> list[TensorInfo]:
        return list(self._inputs)

    def get_outputs(self) -> list[TensorInfo]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return ["OpenVINO CPU"]

    def run(
        self, output_names: list[str] | None, feeds: dict[str, np.ndarray], run_options: ort.RunOptions | None = None
    ) -> list[np.ndarray]:
        """Runs the graph; `run_options.terminate = True` from another thread stops it (EncodeTerminated)."""
        with self._lock:
            request = self._request
            request.start_async([np.ascontiguousarray(feeds[info.name]) for info in self._inputs])
            while not request.wait_for(_CANCEL_POLL_MS):
                if run_options is not None and run_options.terminate:
                    request.cancel()
                    self._request = self._compiled.create_infer_request()  # a cancelled request is spent
                    raise EncodeTerminated("encoder run terminated: its call ended")
            by_name = {info.name: index for index, info in enumerate(self._outputs)}
            wanted = output_names or [info.name for info in self._outputs]
            return [np.array(request.get_output_tensor(by_name[name]).data) for name in wanted]


def _info(port: Any, name: str) -> TensorInfo:
    shape = tuple(int(d.get_length()) if d.is_static else "?" for d in port.get_partial_shape())
    return TensorInfo(name, shape, _ONNX_TYPES.get(port.get_element_type().get_type_name(), "?"))
