"""The SAM3 tracker's two sessions, read from a folder in the onnx-community layout: ONNX Runtime's
(the encoder's optionally OpenVINO's, see openvino_session).

One class for the model family (as rembg does): it knows the file names, the tensor contract, the
preprocessing settings and the model id that namespaces cached embeddings. Graph shapes are read
from the sessions, never assumed, so SAM2.1 onnx-community folders load through the same path.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from sam3_core import graphs, no_memory
from sam3_core.embeddings import ImageEmbeddings
from sam3_core.openvino_session import OpenVinoSession, precision_of

# GPU and NPU providers in order of preference; the CPU provider is always the fallback.
ACCELERATED_PROVIDERS = ("CUDAExecutionProvider", "CoreMLExecutionProvider", "DmlExecutionProvider")
_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


@dataclass(frozen=True)
class DeviceTensor:
    """One embedding resident on the decoder's device (an OrtValue: GPU memory under CUDA), bound to
    the decoder without a copy. Stands in for a numpy array in `ImageEmbeddings.tensors`."""

    value: ort.OrtValue

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape())

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(_NUMPY_TYPES[self.value.data_type()])

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def device(self) -> str:
        return str(self.value.device_name()).lower()

    def numpy(self) -> np.ndarray:
        """A host copy (tests, debugging)."""
        return np.asarray(self.value.numpy())


class DecoderEmbeddings(ImageEmbeddings):
    """Embeddings prepared for one Sam3Model's decoder (`Sam3Model.decoder_embeddings`): in its input
    dtype, on its device, and with a split decoder the per-image tensors its click graph reads."""


class ModelNotFoundError(FileNotFoundError):
    """The folder lacks the graph files; the message lists what was looked for and what to do."""


class MaskInputNotSupportedError(ModelNotFoundError):
    """A folder without the mask-prompt graph (onnx-community's, or exported before it existed): clicks and
    boxes work, refining from a previous mask does not."""

    def __init__(self, folder: Path) -> None:
        super().__init__(
            f"model folder {folder} cannot take mask inputs (a previous mask's low-res logits): that needs the "
            f"split click decoder with {graphs.SPLIT_MASK_FILE}, which `sam3 models export` writes (--checkpoint DIR "
            "for real weights). Send the clicks alone instead."
        )


class ConceptsNotSupportedError(ModelNotFoundError):
    """A tracker-only folder (e.g. onnx-community/sam3-tracker-ONNX): clicks and boxes work, phrases do not.

    The message names what the folder lacks: the concept graph files, and (`encoder`, when the caller
    knows that graph has no detector outputs) the encoder's detector features."""

    def __init__(self, folder: Path, encoder: Path | None = None) -> None:
        self.missing = graphs.missing_concept_files(folder)
        if encoder is not None:
            self.missing.append(f"the detector outputs of {encoder.name} ({', '.join(graphs.DETECTOR_OUTPUTS)})")
        super().__init__(
            f"model folder {folder} serves clicks and boxes only: concept prompts (phrases, exemplar boxes) need "
            f"{', '.join(self.missing)}. Export a folder that serves both with `sam3 models export --checkpoint "
            "DIR --out DIR` (a Sam3VideoModel checkpoint) or `--random-init --config tiny|full`."
        )


@dataclass(frozen=True)
class Preprocessing:
    """Image-processor settings that change the embeddings (and so the model id)."""

    size: tuple[int, int] = (1008, 1008)  # (height, width) of the encoder input
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_folder(cls, folder: Path) -> Preprocessing:
        """Reads preprocessor_config.json when present (SAM2.1 folders: 1024 px, ImageNet mean/std)."""
        path = folder / "preprocessor_config.json"
        if not path.exists():
            return cls()
        config = json.loads(path.read_text())
        size = config.get("size", {})
        if "longest_edge" in size:
            height = width = int(size["longest_edge"])
        else:
            height, width = int(size.get("height", 1008)), int(size.get("width", 1008))
        return cls(
            size=(height, width),
            mean=tuple(float(v) for v in config.get("image_mean", cls.mean)),  # type: ignore[arg-type]
            std=tuple(float(v) for v in config.get("image_std", cls.std)),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions run: execution providers ("auto" picks an accelerator when one is installed) and threads."""

    providers: tuple[str, ...] | str = "auto"
    intra_op_threads: int = 0  # 0 lets ONNX Runtime use every core
    inter_op_threads: int = 1
    # Spinning worker threads win microseconds on an idle machine and lose tens of milliseconds when
    # gRPC, numpy or another session want the same cores (measured: a click 40 -> 60+ ms). Off by default.
    allow_spinning: bool = False
    # ONNX Runtime's memory pattern plans one block for a whole run after the first; for the full encoder
    # that block pushed the worker's peak from 2.75 to 3.55 GB at the second image, for no speed gain.
    memory_pattern: bool = False
    # Decoder inputs through I/O binding, embeddings kept as OrtValues on the decoder's device: on a GPU
    # a cached image is then never uploaded again (a cache living in host memory re-uploads ~21 MB per
    # click). "auto" = on when the decoder runs on an accelerator; True also works on the CPU provider.
    io_binding: bool | str = "auto"
    # Who runs the encoder: ONNX Runtime, or OpenVINO at f32 or bf16 (openvino_session.ENCODER_RUNTIMES).
    encoder_runtime: str = "onnxruntime"
    # Use the split click decoder (mask_decoder_image.onnx + mask_decoder_click.onnx) when the folder has
    # it: the same masks (float32 rounding) in about half the arithmetic per click. False: the standard graph.
    split_decoder: bool = True

    def resolved_providers(self) -> list[str]:
        available = ort.get_available_providers()
        if self.providers == "auto":
            return [p for p in ACCELERATED_PROVIDERS if p in available] + ["CPUExecutionProvider"]
        providers = [self.providers] if isinstance(self.providers, str) else list(self.providers)
        missing = [p for p in providers if p not in available]
        if missing:
            raise ValueError(f"execution providers {missing} are not in this onnxruntime build; available: {available}")
        return providers

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_mem_pattern = self.memory_pattern
        options.log_severity_level = 3  # errors only: shape-merge notices on load are noise to users
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "1" if self.allow_spinning else "0")
        return options


def graph_path(folder: Path, stem: str, variant: str | None) -> Path:
    """`<stem>[_variant].onnx` in the folder or its `onnx/` subfolder (the hub repos' layout)."""
    name = graphs.file_name(stem, variant)
    for candidate in (folder / name, folder / "onnx" / name):
        if candidate.exists():
            return candidate
    present = sorted(p.name for p in [*folder.glob("*.onnx"), *folder.glob("onnx/*.onnx")])
    raise ModelNotFoundError(
        f"{name} not found in {folder} (nor in {folder / 'onnx'}); present: {present or 'no .onnx files'}. "
        "Point --model-dir at a folder in the onnx-community layout, or create one with `sam3 export`."
    )


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for part in graphs.data_files(path):
        with part.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def compute_model_id(encoder_path: Path, preprocessing: Preprocessing, encoder_runtime: str = "onnxruntime") -> str:
    """Changes whenever the encoder weights, the preprocessing or the encoder's arithmetic change: cached
    embeddings stay valid. An encoder computing at bf16 gets its own namespace (`fp32.bf16-...`), so a
    fleet never mixes its embeddings with float32 ones; OpenVINO at f32 matches ONNX Runtime (1e-6) and shares it."""
    precision = precision_of(encoder_runtime)
    label = graphs.variant_of(encoder_path) + (f".{precision}" if precision not in (None, "f32") else "")
    digest = hashlib.sha256(_file_digest(encoder_path).encode())
    digest.update(json.dumps([preprocessing.size, preprocessing.mean, preprocessing.std]).encode())
    return f"{label}-{digest.hexdigest()[:16]}"


class Sam3Model:
    """Loads the encoder and/or decoder graphs of one model folder and runs them."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        variant: str | None = None,
        decoder_variant: str | None = None,
        runtime: RuntimeOptions = RuntimeOptions(),
        load_encoder: bool = True,
        load_decoder: bool = True,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ModelNotFoundError(
                f"model folder {self.folder} does not exist; pass a folder in the onnx-community layout "
                "or create one with `sam3 export --random-init --config tiny --out DIR`"
            )
        self.variant = variant or graphs.DEFAULT_VARIANT
        self.preprocessing = Preprocessing.from_folder(self.folder)
        self.encoder_path = graph_path(self.folder, graphs.ENCODER_STEM, variant)
        self.decoder_path = graph_path(self.folder, graphs.DECODER_STEM, decoder_variant)
        self.manifest = self._read_manifest()
        self.model_id = compute_model_id(self.encoder_path, self.preprocessing, runtime.encoder_runtime)
        self.runtime = runtime
        providers = runtime.resolved_providers()
        if "CUDAExecutionProvider" in providers and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels of onnxruntime-gpu[cuda,cudnn]
        self.providers = providers
        self._encoder = self._encoder_session(providers) if load_encoder else None
        # The split graphs are the float32 twin of the unsuffixed decoder: another decoder variant means that one.
        split = runtime.split_decoder and (decoder_variant or graphs.DEFAULT_VARIANT) == graphs.DEFAULT_VARIANT
        split = split and all((self.folder / name).exists() for name in graphs.SPLIT_FILES)
        self.split_decoder = split and load_decoder
        self._mask_side: ort.InferenceSession | None = None
        if self.split_decoder:
            self._image_side = self._session(self.folder / graphs.SPLIT_IMAGE_FILE, providers)
            self._decoder = self._session(self.folder / graphs.SPLIT_CLICK_FILE, providers)
            if (self.folder / graphs.SPLIT_MASK_FILE).exists():
                self._mask_side = self._session(self.folder / graphs.SPLIT_MASK_FILE, providers)
        else:
            self._decoder = self._session(self.decoder_path, providers) if load_decoder else None
        accelerated = self._decoder is not None and self._decoder.get_providers()[0] != "CPUExecutionProvider"
        self.io_binding = accelerated if runtime.io_binding == "auto" else bool(runtime.io_binding)

    def _read_manifest(self) -> dict[str, Any]:
        path = self.folder / "manifest.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _session(self, path: Path, providers: list[str]) -> ort.InferenceSession:
        return ort.InferenceSession(str(path), sess_options=self.runtime.session_options(), providers=providers)

    def _encoder_session(self, providers: list[str]) -> ort.InferenceSession | OpenVinoSession:
        precision = precision_of(self.runtime.encoder_runtime)
        if precision is None:
            return self._session(self.encoder_path, providers)
        return OpenVinoSession(self.encoder_path, precision, self.runtime.intra_op_threads)

    @property
    def appends_pad_point(self) -> bool:
        """Whether the decoder graph adds transformers' clicks-only pad itself (our exports: no).

        Graphs traced with `input_boxes` as an input never take transformers' pad branch, so the
        default for folders without a manifest is False too (see docs/model-contract.md).
        """
        return bool(self.manifest.get("decoder_appends_pad_point", False))

    @cached_property
    def no_memory_embedding(self) -> no_memory.NoMemoryEmbedding:
        """Whether `image_embeddings.2` includes SAM3's no-memory embedding (else masks differ from
        SAM3's own): from the manifest, else the graph's named constant, else UNKNOWN (never a guess)."""
        return no_memory.detect(self.manifest, self.encoder_path)

    @property
    def accepts_mask_input(self) -> bool:
        """Whether objects may carry a mask prompt (the split decoder and its mask-prompt graph are loaded)."""
        return self._mask_side is not None

    @property
    def encoder(self) -> ort.InferenceSession | OpenVinoSession:
        if self._encoder is None:
            raise RuntimeError("this Sam3Model was loaded without its encoder (load_encoder=False)")
        return self._encoder

    @property
    def decoder(self) -> ort.InferenceSession:
        if self._decoder is None:
            raise RuntimeError("this Sam3Model was loaded without its decoder (load_decoder=False)")
        return self._decoder

    def embedding_shapes(self) -> list[tuple[int, ...]]:
        """[C, H, W]-style shapes of the three embeddings, read from whichever graph is loaded."""
        if self._encoder is not None:
            return [tuple(o.shape) for o in self._encoder.get_outputs() if o.name not in graphs.DETECTOR_OUTPUTS]
        embedding_inputs = (self._image_side if self.split_decoder else self.decoder).get_inputs()
        inputs = {i.name: i for i in embedding_inputs}
        return [tuple(inputs[name].shape) for name in graphs.EMBEDDING_NAMES]

    @property
    def mask_size(self) -> tuple[int, int]:
        """(height, width) of the low-resolution masks: 4x the finest embedding's stride."""
        shape = self.embedding_shapes()[0]
        return int(shape[-2]), int(shape[-1])

    def detector_shapes(self) -> list[tuple[int | str, ...]]:
        """Shapes of the concept detector's features a unified encoder emits (empty for tracker-only)."""
        return [tuple(o.shape) for o in self.encoder.get_outputs() if o.name in graphs.DETECTOR_OUTPUTS]

    @property
    def has_detector_features(self) -> bool:
        """Whether the encoder also emits the concept detector's features (a unified export)."""
        return set(graphs.DETECTOR_OUTPUTS) <= {o.name for o in self.encoder.get_outputs()}

    def run_encoder(
        self, pixel_values: np.ndarray, run_options: ort.RunOptions | None = None, *, detector_features: bool = False
    ) -> tuple[np.ndarray, ...]:
        """pixel_values [1,3,H,W] float32 -> the three float32 embeddings (cast if the graph is fp16), followed
        by the detector's three feature levels when `detector_features` is set (unified encoders only).

        ONNX Runtime runs the whole graph either way (measured): asking only for the tracker's outputs saves
        copying the detector's ~111 MB out, not compute. Setting `run_options.terminate = True` from another
        thread aborts a run in progress (a cancelled request then stops burning the CPU).
        """
        (model_input,) = self.encoder.get_inputs()
        feed = pixel_values.astype(_NUMPY_TYPES.get(model_input.type, np.float32), copy=False)
        wanted = [o.name for o in self.encoder.get_outputs() if o.name not in graphs.DETECTOR_OUTPUTS]
        if detector_features:
            if not self.has_detector_features:
                raise ConceptsNotSupportedError(self.folder, self.encoder_path)
            wanted += graphs.DETECTOR_OUTPUTS
        outputs = self.encoder.run(wanted, {model_input.name: feed}, run_options)
        return tuple(np.asarray(o, dtype=np.float32) for o in outputs)

    @property
    def decoder_device(self) -> tuple[str, int]:
        """(ONNX Runtime device name, id) where the decoder's inputs live: "cuda" under CUDA, else "cpu"."""
        return ("cuda", 0) if self.decoder.get_providers()[0] == "CUDAExecutionProvider" else ("cpu", 0)

    @property
    def _prepared_names(self) -> tuple[str, ...]:
        """The decoder graph's per-image inputs, in the order of `DecoderEmbeddings.tensors`."""
        return graphs.SPLIT_IMAGE_OUTPUTS if self.split_decoder else graphs.EMBEDDING_NAMES

    def decoder_embeddings(self, embeddings: ImageEmbeddings) -> DecoderEmbeddings:
        """The embeddings the way the decoder takes them, prepared once per image (the decoder's cache and
        the Predictor keep this): with a split decoder the image's share of the decoder's work, run here;
        in the graph's input dtype; with I/O binding as DeviceTensors on its device."""
        if isinstance(embeddings, DecoderEmbeddings):
            return embeddings
        names = self._prepared_names
        tensors = list(embeddings.tensors)
        if self.split_decoder:
            feeds = dict(zip(graphs.EMBEDDING_NAMES, (np.asarray(t, np.float32) for t in tensors), strict=True))
            tensors = self._image_side.run(list(names), feeds)
        types = {i.name: _NUMPY_TYPES.get(i.type, np.float32) for i in self.decoder.get_inputs()}
        arrays = [np.ascontiguousarray(t, dtype=types[name]) for name, t in zip(names, tensors, strict=True)]
        prepared: list[np.ndarray | DeviceTensor] = list(arrays)
        if self.io_binding:
            device, device_id = self.decoder_device
            prepared = [DeviceTensor(ort.OrtValue.ortvalue_from_numpy(t, device, device_id)) for t in arrays]
        return DecoderEmbeddings(tuple(prepared), embeddings.original_size, embeddings.model_id)  # type: ignore[arg-type]

    def run_decoder(
        self,
        points: np.ndarray,
        labels: np.ndarray,
        boxes: np.ndarray,
        embeddings: ImageEmbeddings | Sequence[np.ndarray],
        mask_input: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns (iou_scores [1,P,3], pred_masks [1,P,3,h,w], object_score_logits [1,P,1]) as float32.

        Pass what `decoder_embeddings` returned when decoding an image more than once: anything else (the
        encoder's three tensors) is prepared again on every call. With I/O binding the prompts are copied
        to the device, the embeddings are bound where they are, and only the small outputs come back to
        the host (masks are upsampled on the CPU).

        `mask_input` (float32 [1, 1, h, w], one object: P = 1) is a mask prompt: the mask-prompt graph first
        recomputes the image-side tensors it changes, and the click graph runs on those (plain clicks never
        pay for it). MaskInputNotSupportedError when the folder lacks that graph.
        """
        if not isinstance(embeddings, ImageEmbeddings):
            embeddings = ImageEmbeddings(tuple(embeddings), (0, 0), self.model_id)
        embeddings = self.decoder_embeddings(embeddings)
        feeds: dict[str, Any] = dict(zip(graphs.DECODER_PROMPT_INPUTS, (points, labels, boxes), strict=True))
        feeds.update(zip(self._prepared_names, embeddings.tensors, strict=True))
        if mask_input is not None:
            feeds.update(zip(graphs.SPLIT_MASK_REPLACES, self._mask_prompt_tensors(mask_input, feeds), strict=True))
        outputs = self._run(self.decoder, feeds, graphs.DECODER_OUTPUTS)
        iou, masks, objects = (np.asarray(output, np.float32) for output in outputs)
        return iou, masks, objects

    def _mask_prompt_tensors(self, mask_input: np.ndarray, feeds: dict[str, Any]) -> list[Any]:
        """The image-side tensors a mask prompt changes (`graphs.SPLIT_MASK_REPLACES`), left on the decoder's
        device with I/O binding."""
        if self._mask_side is None:
            raise MaskInputNotSupportedError(self.folder)
        (_, tokens_name) = graphs.SPLIT_MASK_INPUTS
        mask_feeds = dict(zip(graphs.SPLIT_MASK_INPUTS, (mask_input, feeds[tokens_name]), strict=True))
        return self._run(self._mask_side, mask_feeds, graphs.SPLIT_MASK_OUTPUTS, keep_on_device=True)

    def _run(
        self, session: ort.InferenceSession, feeds: dict[str, Any], outputs: Sequence[str], keep_on_device: bool = False
    ) -> list[Any]:
        """One run with inputs cast to the graph's declared types; through I/O binding when it is on or an
        input already lives on the device (then `keep_on_device` leaves the outputs there as DeviceTensors)."""
        for model_input in session.get_inputs():
            wanted = _NUMPY_TYPES.get(model_input.type)
            value = feeds[model_input.name]
            if wanted is not None and not isinstance(value, DeviceTensor) and value.dtype != wanted:
                feeds[model_input.name] = value.astype(wanted)
        if not (self.io_binding or any(isinstance(v, DeviceTensor) for v in feeds.values())):
            return list(session.run(list(outputs), feeds))
        binding = session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, DeviceTensor):
                binding.bind_ortvalue_input(name, value.value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        device, device_id = self.decoder_device if keep_on_device else ("cpu", 0)
        for name in outputs:
            binding.bind_output(name, device, device_id)
        session.run_with_iobinding(binding)
        if keep_on_device:
            return [DeviceTensor(value) for value in binding.get_outputs()]
        return list(binding.copy_outputs_to_cpu())
