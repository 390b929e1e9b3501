"""Build a SAM3 tracker with transformers and write it as ONNX in the onnx-community layout.

Needs the `export` extra (torch + transformers): nothing else in the project imports this module.
The two graphs reproduce onnx-community/sam3-tracker-ONNX's contract (docs/model-contract.md):

- `vision_encoder.onnx`: pixel_values [1,3,S,S] -> image_embeddings.0/.1/.2: the FPN neck, the
  conv_s0/conv_s1 projections, and `no_memory_embedding` added to the 72x72 level as SAM3 itself does
  (`tracker_embeddings`; transformers' `Sam3TrackerModel.get_image_embeddings` drops it, see
  docs/model-contract.md).
- `prompt_encoder_mask_decoder.onnx`: input_points [B,P,N,2], input_labels [B,P,N], input_boxes [B,Pb,4]
  (Pb is P or 0) + the three embeddings -> iou_scores [B,P,3], pred_masks [B,P,3,h,w],
  object_score_logits [B,P,1]. The graph never adds the "not a point" pad that transformers appends to
  clicks-only prompts: callers append (0, 0, label -1) themselves (`manifest.json` says so).
- `mask_decoder_image.onnx` + `mask_decoder_click.onnx`: the same decoder split into its per-image and
  per-click shares (export_split_decoder; our exports only, the runtime falls back without them).
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sam3_core import no_memory
from sam3_core.export_split_decoder import export_split_decoder
from sam3_core.graphs import (
    DECODER_DYNAMIC_AXES,
    DECODER_OUTPUTS,
    DECODER_PROMPT_INPUTS,
    DECODER_STEM,
    EMBEDDING_NAMES,
    ENCODER_INPUT,
    ENCODER_STEM,
    PUBLISHED_DATA_SUFFIX,
    file_name,
)
from sam3_core.quantize import quantize

OPSET = 17
# Graphs above this size keep their weights in a `<name>.onnx_data` file beside them, as published.
EXTERNAL_DATA_BYTES = 256 * 1024 * 1024

# Sub-config overrides per named size. "tiny" keeps every I/O shape of the real model (1008 input,
# 256/64/32-channel embeddings at 72/144/288, 288x288 masks) and shrinks only what is inside the graphs:
# a 2-layer, 32-wide ViT and a narrower decoder MLP. The fixtures therefore exercise the true tensor
# contract, the true store sizes and the true decoder cost, at a few MB of ONNX.
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "vision_config": {
            "backbone_config": {
                "model_type": "sam3_vit_model",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "global_attn_indexes": [1],
            }
        },
        "mask_decoder_config": {"mlp_dim": 256, "iou_head_hidden_dim": 64},
    },
    "full": {},
}


def log(message: str) -> None:
    print(message, flush=True)


def build_model(*, checkpoint: Path | None, config: str, seed: int) -> nn.Module:
    """Loads a checkpoint folder, or builds the named config with variance-preserving random weights."""
    from transformers import Sam3TrackerConfig, Sam3TrackerModel

    if checkpoint is not None:
        model = load_checkpoint(checkpoint)
    else:
        torch.manual_seed(seed)
        model = Sam3TrackerModel(Sam3TrackerConfig(**CONFIGS[config]))
        reinitialise(model, seed)
    return model.eval()


class CheckpointError(ValueError):
    """A checkpoint folder that would not fill every tracker weight; the message says what is wrong."""


def load_checkpoint(folder: Path) -> nn.Module:
    """A Sam3TrackerModel with every weight from the folder, or a CheckpointError: never random leftovers.

    Two layouts: a `Sam3TrackerModel.save_pretrained` folder (model_type "sam3_tracker") and a
    `Sam3VideoModel.save_pretrained` one ("sam3_video", the facebook/sam3 layout), which
    `Sam3TrackerModel.from_pretrained` would load with 147 tracker tensors silently left random.
    """
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{folder} has no config.json: pass a transformers save_pretrained folder")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type == "sam3_video":
        return _tracker_from_video_checkpoint(folder)
    if model_type != "sam3_tracker":
        raise CheckpointError(
            f"{folder}: model_type {model_type!r}; expected 'sam3_tracker' (Sam3TrackerModel) or "
            "'sam3_video' (Sam3VideoModel, the facebook/sam3 layout)"
        )
    from transformers import Sam3TrackerModel

    model, info = Sam3TrackerModel.from_pretrained(folder, output_loading_info=True)
    problems = {kind: keys for kind, keys in info.items() if kind != "error_msgs" and keys}
    if problems or info.get("error_msgs"):
        raise CheckpointError(f"{folder} does not fit Sam3TrackerModel exactly: {_summarise(problems)}")
    return model


def video_checkpoint_key(key: str) -> str | None:
    """Sam3VideoModel key -> Sam3TrackerModel key, or None for weights the tracker does not use.

    The tracker shares the detector's ViT trunk and has its own neck; `save_pretrained` on a
    config-built Sam3VideoModel writes the tracker's own keys with a doubled `tracker_model.` prefix.
    """
    for prefix, replacement in (
        ("detector_model.vision_encoder.backbone.", "vision_encoder.backbone."),
        ("tracker_neck.", "vision_encoder.neck."),
        ("tracker_model.tracker_model.", ""),
        ("tracker_model.", ""),
    ):
        if key.startswith(prefix):
            return replacement + key.removeprefix(prefix)
    return None


def _tracker_from_video_checkpoint(folder: Path) -> nn.Module:
    from safetensors.torch import load_file
    from transformers import Sam3TrackerConfig, Sam3TrackerModel, Sam3TrackerVideoModel, Sam3VideoConfig

    video_config = Sam3VideoConfig.from_pretrained(folder)
    config = Sam3TrackerConfig(
        vision_config=video_config.detector_config.vision_config.to_dict(),
        prompt_encoder_config=video_config.tracker_config.prompt_encoder_config.to_dict(),
        mask_decoder_config=video_config.tracker_config.mask_decoder_config.to_dict(),
    )
    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    )
    if not all((folder / name).is_file() for name in files):
        raise CheckpointError(f"{folder}: missing weight files among {files}")
    state: dict[str, torch.Tensor] = {}
    memory_only: list[str] = []
    with torch.device("meta"):
        model = Sam3TrackerModel(config)
        video_tracker_keys = set(
            Sam3TrackerVideoModel(video_config.tracker_config, remove_vision_encoder=True).state_dict()
        )
    wanted = set(model.state_dict())
    unexpected: list[str] = []
    for name in files:
        for key, tensor in load_file(folder / name).items():
            mapped = video_checkpoint_key(key)
            if mapped in wanted:
                state[mapped] = tensor
            elif mapped is not None and key.startswith("tracker_model.") and mapped in video_tracker_keys:
                memory_only.append(key)  # the video tracker's memory modules: unused on single images
            elif mapped is not None:
                unexpected.append(key)
    missing = sorted(wanted - set(state))
    if missing or unexpected:
        problems = {"missing_keys": missing, "unexpected_keys": sorted(unexpected)}
        raise CheckpointError(
            f"{folder} (sam3_video layout) does not fill Sam3TrackerModel exactly: {_summarise(problems)}"
        )
    model = Sam3TrackerModel(config)
    model.load_state_dict(state, strict=True)
    log(f"  sam3_video checkpoint: {len(state)} tracker tensors mapped, {len(memory_only)} video-memory tensors unused")
    return model


def _summarise(problems: dict[str, list[str]]) -> str:
    return "; ".join(f"{len(keys)} {kind} (e.g. {', '.join(sorted(keys)[:3])})" for kind, keys in problems.items())


def reinitialise(model: nn.Module, seed: int) -> None:
    """Re-draws every weight so activations keep their scale through the network.

    transformers' own initialiser (N(0, 0.02), zero biases) makes a random SAM3 collapse to mask logits
    of ~1e-4, which would make every parity test pass trivially (docs/model-contract.md, "Random weights").
    """
    generator = torch.Generator().manual_seed(seed)

    def normal_(tensor: torch.Tensor, std: float) -> None:
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                normal_(module.weight, 1.0 / math.sqrt(module.weight[0].numel()))
            elif isinstance(module, nn.ConvTranspose2d):
                taps_per_output = module.weight.shape[0] * math.prod(module.kernel_size) / math.prod(module.stride)
                normal_(module.weight, 1.0 / math.sqrt(taps_per_output))
            elif isinstance(module, nn.Embedding):
                normal_(module.weight, 1.0)
            else:
                continue
            if getattr(module, "bias", None) is not None:
                normal_(module.bias, 0.1)
        for name, parameter in model.named_parameters():
            if name.endswith("position_embeddings") or name == "no_memory_embedding":
                normal_(parameter, 0.5)


def tracker_embeddings(fpn_levels: Sequence[torch.Tensor], tracker: nn.Module) -> tuple[torch.Tensor, ...]:
    """The tracker neck's FPN levels -> the three embeddings the click decoder reads, as SAM3 computes them.

    The neck returns NCHW levels at 4x, 2x, 1x and 0.5x the trunk's 72x72 grid; the tracker uses the
    first three. conv_s0/conv_s1 project the two high-resolution ones (to 32 and 64 channels) and
    `no_memory_embedding` goes onto the 72x72 level: SAM3 adds it to every frame without memory,
    single images included. transformers' `Sam3TrackerModel` adds it to the 0.5x level, which it then
    discards (docs/model-contract.md). `tracker` is a Sam3TrackerModel or a Sam3VideoModel's tracker.
    """
    high_res_0, high_res_1, lowest = fpn_levels[:3]
    no_memory = tracker.no_memory_embedding.reshape(1, -1, 1, 1)
    return (tracker.mask_decoder.conv_s0(high_res_0), tracker.mask_decoder.conv_s1(high_res_1), lowest + no_memory)


class VisionEncoderGraph(nn.Module):
    """pixel_values -> the three embeddings the tracker's mask decoder consumes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tracker_embeddings(self.model.vision_encoder(pixel_values).fpn_hidden_states, self.model)


def image_embeddings(model: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What the exported encoder computes, in torch (the SAM3 semantics, unlike `get_image_embeddings`)."""
    with torch.no_grad():
        return VisionEncoderGraph(model)(pixel_values)


class PromptDecoderGraph(nn.Module):
    """Prompt encoder + mask decoder on precomputed embeddings, always with three candidate masks."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_points: torch.Tensor,
        input_labels: torch.Tensor,
        input_boxes: torch.Tensor,
        embedding_0: torch.Tensor,
        embedding_1: torch.Tensor,
        embedding_2: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        prompt_encoder = self.model.prompt_encoder
        batch, prompts = input_points.shape[0], input_points.shape[1]
        point_tokens = prompt_encoder._embed_points(input_points, input_labels, pad=False)
        box_tokens = prompt_encoder._embed_boxes(input_boxes)
        # [B,0,3,D] when no prompt has a box: reshaping to [B,P,0,D] lets clicks-only prompts through.
        box_tokens = box_tokens.reshape(batch, prompts, -1, box_tokens.shape[-1])
        sparse = torch.cat([point_tokens, box_tokens], dim=2)
        height, width = embedding_2.shape[-2:]
        dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, height, width)
        positional = self.model.get_image_wide_positional_embeddings().repeat(batch, 1, 1, 1)
        masks, iou_scores, _, object_score_logits = self.model.mask_decoder(
            image_embeddings=embedding_2,
            image_positional_embeddings=positional,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            high_resolution_features=[embedding_0, embedding_1],
        )
        return iou_scores, masks, object_score_logits


@dataclass(frozen=True)
class GraphInputs:
    """Example inputs used to trace (and then to validate) the two graphs."""

    pixel_values: torch.Tensor
    points: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor


def example_inputs(image_size: int, seed: int) -> GraphInputs:
    generator = torch.Generator().manual_seed(seed)
    points = torch.rand((1, 2, 3, 2), generator=generator) * image_size
    labels = torch.tensor([[[1, 0, 1], [1, 1, -10]]], dtype=torch.int64)
    corners = torch.rand((1, 2, 2, 2), generator=generator).sort(dim=2).values * image_size
    return GraphInputs(
        pixel_values=torch.randn((1, 3, image_size, image_size), generator=generator),
        points=points,
        labels=labels,
        boxes=corners.reshape(1, 2, 4),
    )


def save_graph(onnx_path: Path, edit: Callable[[Any], None] | None = None) -> None:
    """Applies `edit` to the graph, and moves the weights of a large graph into `<name>.onnx_data`,
    the layout onnx-community publishes."""
    import onnx

    external = onnx_path.stat().st_size >= EXTERNAL_DATA_BYTES or bool(
        list(onnx_path.parent.glob(f"{onnx_path.name}*data"))
    )
    if edit is None and not external:
        return
    model = onnx.load(str(onnx_path))
    if edit is not None:
        edit(model)
    if not external:
        onnx.save_model(model, str(onnx_path))
        return
    for stale in onnx_path.parent.glob(f"{onnx_path.stem}*"):
        if stale != onnx_path and stale.suffix != ".json":
            stale.unlink()
    onnx.save_model(
        model,
        str(onnx_path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=onnx_path.name + PUBLISHED_DATA_SUFFIX,
        size_threshold=1024,
    )


def name_no_memory_constant(model: Any) -> None:
    """Renames the vector added to `image_embeddings.2` to `no_memory_embedding`.

    Constant folding calls it `onnx::Add_<n>`; under its own name, people reading the graph and
    `sam3_core.no_memory` can tell that the encoder adds it.
    """
    (add,) = [node for node in model.graph.node if EMBEDDING_NAMES[2] in node.output]
    initializers = {initializer.name: initializer for initializer in model.graph.initializer}
    constants = [name for name in add.input if name in initializers]
    if add.op_type != "Add" or len(constants) != 1:
        raise RuntimeError(
            f"{EMBEDDING_NAMES[2]} is not produced by adding one constant: {add.op_type}{list(add.input)}"
        )
    initializers[constants[0]].name = no_memory.GRAPH_CONSTANT
    for node in model.graph.node:
        node.input[:] = [no_memory.GRAPH_CONSTANT if name == constants[0] else name for name in node.input]


def fused_attention_symbolic(heads: int, head_size: int) -> Callable[..., Any]:
    """aten::scaled_dot_product_attention -> ONNX Runtime's com.microsoft::MultiHeadAttention.

    The plain ONNX export materialises every attention matrix: 16 heads x 5184 x 5184 floats (1.7 GB)
    for each of the ViT's global-attention blocks. ONNX Runtime's fused operator computes the same
    values blockwise (measured on one such block: 1.9 GB -> 0.24 GB peak, a little faster, outputs
    equal to 2e-7). Shapes are dynamic while tracing, so the head layout comes from the ViT's config
    (the encoder graph has no other attention). Anything unusual (a mask, causal) keeps the standard export.
    """
    from torch.onnx import symbolic_helper, symbolic_opset14

    def symbolic(g, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
        if not symbolic_helper._is_none(attn_mask) or symbolic_helper._maybe_get_const(is_causal, "b"):
            return symbolic_opset14.scaled_dot_product_attention(
                g, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa
            )
        scale_value = (
            head_size**-0.5 if symbolic_helper._is_none(scale) else symbolic_helper._get_const(scale, "f", "scale")
        )
        flat = g.op("Constant", value_t=torch.tensor([0, 0, -1], dtype=torch.int64))
        split = g.op("Constant", value_t=torch.tensor([0, 0, heads, head_size], dtype=torch.int64))

        def to_bsd(tensor):
            return g.op("Reshape", g.op("Transpose", tensor, perm_i=[0, 2, 1, 3]), flat)

        fused = g.op(
            "com.microsoft::MultiHeadAttention",
            to_bsd(query),
            to_bsd(key),
            to_bsd(value),
            num_heads_i=heads,
            scale_f=float(scale_value),
        )
        return g.op("Transpose", g.op("Reshape", fused, split), perm_i=[0, 2, 1, 3])

    return symbolic


def export_encoder(
    graph: nn.Module, pixel_values: torch.Tensor, path: Path, output_names: list[str], backbone_config: Any, fused: bool
) -> None:
    """Traces an encoder graph, its ViT attention fused for ONNX Runtime unless `fused` is False."""
    if fused:
        heads = backbone_config.num_attention_heads
        symbolic = fused_attention_symbolic(heads, backbone_config.hidden_size // heads)
        torch.onnx.register_custom_op_symbolic("aten::scaled_dot_product_attention", symbolic, OPSET)
    try:
        with torch.no_grad():
            torch.onnx.export(
                graph,
                (pixel_values,),
                str(path),
                input_names=[ENCODER_INPUT],
                output_names=output_names,
                opset_version=OPSET,
                dynamo=False,
            )
    finally:
        if fused:
            torch.onnx.unregister_custom_op_symbolic("aten::scaled_dot_product_attention", OPSET)


def export_graphs(
    model: nn.Module, out_dir: Path, image_size: int, *, fused_attention: bool = True
) -> dict[str, float]:
    """Traces both graphs with the legacy TorchScript exporter (`dynamo=False`, opset 17: the exporter the
    measured reference export used) and returns seconds per graph."""
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = example_inputs(image_size, seed=0)
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    encoder_path = out_dir / file_name(ENCODER_STEM)
    backbone = model.config.vision_config.backbone_config
    export_encoder(
        VisionEncoderGraph(model), inputs.pixel_values, encoder_path, list(EMBEDDING_NAMES), backbone, fused_attention
    )
    embeddings = image_embeddings(model, inputs.pixel_values)
    save_graph(encoder_path, edit=name_no_memory_constant)
    seconds["vision_encoder"] = time.perf_counter() - started
    log(f"  vision encoder written in {seconds['vision_encoder']:.1f} s")
    seconds["prompt_encoder_mask_decoder"] = export_decoder(model, out_dir, inputs, embeddings)
    return seconds


def export_decoder(model: nn.Module, out_dir: Path, inputs: GraphInputs, embeddings: tuple[torch.Tensor, ...]) -> float:
    """Traces the prompt encoder + mask decoder graph, and its split twin (export_split_decoder), on example
    embeddings; returns seconds taken."""
    started = time.perf_counter()
    decoder_path = out_dir / file_name(DECODER_STEM)
    with torch.no_grad():
        torch.onnx.export(
            PromptDecoderGraph(model),
            (inputs.points, inputs.labels, inputs.boxes, *embeddings),
            str(decoder_path),
            input_names=[*DECODER_PROMPT_INPUTS, *EMBEDDING_NAMES],
            output_names=list(DECODER_OUTPUTS),
            dynamic_axes=DECODER_DYNAMIC_AXES,
            opset_version=OPSET,
            dynamo=False,
        )
    save_graph(decoder_path)
    export_split_decoder(model, out_dir, embeddings, OPSET)
    seconds = time.perf_counter() - started
    log(f"  prompt encoder + mask decoder (standard and split) written in {seconds:.1f} s")
    return seconds


def write_preprocessor_config(out_dir: Path, image_size: int) -> None:
    """The transformers image-processor settings the runtime reads (size, mean, std, resample)."""
    config = {
        "image_processor_type": "Sam3ImageProcessor",
        "processor_class": "Sam3TrackerProcessor",
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "rescale_factor": 1 / 255,
        "resample": 2,
        "size": {"height": image_size, "width": image_size},
        "mask_size": {"height": image_size * 2 // 7, "width": image_size * 2 // 7},
    }
    (out_dir / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_manifest(out_dir: Path, model: nn.Module, source: dict[str, Any], fused_attention: bool) -> None:
    """Records how to rebuild the same weights, and the one fact the runtime must know about the graph.

    Deterministic (no timings, no dates): re-exporting the same weights rewrites identical bytes.
    """
    import onnx
    import transformers

    manifest = {
        "format": "sam3-service/model-folder/1",
        "source": source,
        # Our decoder graph never adds transformers' clicks-only "not a point" pad: the runtime must.
        "decoder_appends_pad_point": False,
        # image_embeddings.2 includes no_memory_embedding, as SAM3 computes a single image (`tracker_embeddings`).
        no_memory.MANIFEST_KEY: True,
        # com.microsoft::MultiHeadAttention in the encoder (ONNX Runtime only) instead of plain MatMul/Softmax.
        "encoder_attention": "fused" if fused_attention else "plain",
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": model.config.to_dict(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
        },
        "files": {path.name: path.stat().st_size for path in sorted(out_dir.iterdir()) if path.name != "manifest.json"},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")


def validate(model: nn.Module, out_dir: Path, image_size: int) -> dict[str, float]:
    """Runs torch and ONNX Runtime on fresh random inputs; returns the max |difference| per output."""
    import onnxruntime as ort

    inputs = example_inputs(image_size, seed=1234)
    errors: dict[str, float] = {}
    reference_embeddings = [e.numpy() for e in image_embeddings(model, inputs.pixel_values)]
    encoder = ort.InferenceSession(str(out_dir / file_name(ENCODER_STEM)), providers=["CPUExecutionProvider"])
    embeddings = encoder.run(list(EMBEDDING_NAMES), {ENCODER_INPUT: inputs.pixel_values.numpy()})
    for name, ours, theirs in zip(EMBEDDING_NAMES, embeddings, reference_embeddings, strict=True):
        errors[name] = float(np.abs(ours - theirs).max())

    decoder = ort.InferenceSession(str(out_dir / file_name(DECODER_STEM)), providers=["CPUExecutionProvider"])
    graph = PromptDecoderGraph(model)
    torch_embeddings = [torch.from_numpy(e) for e in reference_embeddings]
    no_boxes = torch.zeros((1, 0, 4))
    cases = {
        "clicks": (inputs.points, inputs.labels, no_boxes),
        "box": (torch.zeros((1, 2, 0, 2)), torch.zeros((1, 2, 0), dtype=torch.int64), inputs.boxes),
        "box+clicks": (inputs.points, inputs.labels, inputs.boxes),
    }
    for case, (points, labels, boxes) in cases.items():
        with torch.no_grad():
            expected = [t.numpy() for t in graph(points, labels, boxes, *torch_embeddings)]
        feeds = dict(zip(DECODER_PROMPT_INPUTS, (points.numpy(), labels.numpy(), boxes.numpy()), strict=True))
        feeds.update(zip(EMBEDDING_NAMES, reference_embeddings, strict=True))
        actual = decoder.run(list(DECODER_OUTPUTS), feeds)
        for name, ours, theirs in zip(DECODER_OUTPUTS, actual, expected, strict=True):
            key = f"{case}/{name}"
            errors[key] = float(np.abs(ours - theirs).max())
    return errors


def source_of(checkpoint: Path | None, config: str, seed: int) -> dict[str, Any]:
    """What the manifest records about where the weights came from."""
    return {"checkpoint": str(checkpoint)} if checkpoint else {"random_init": True, "config": config, "seed": seed}


def run(
    *,
    out_dir: Path,
    checkpoint: Path | None,
    config: str,
    seed: int,
    quantizations: list[str],
    check: bool,
    fused_attention: bool = True,
) -> dict[str, Any]:
    """The `sam3 export` command: build, export, optionally quantize and validate. Returns a summary."""
    started = time.perf_counter()
    source = source_of(checkpoint, config, seed)
    log(f"building Sam3TrackerModel ({source})")
    model = build_model(checkpoint=checkpoint, config=config, seed=seed)
    image_size = int(model.config.vision_config.backbone_config.image_size)
    log(f"  {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, input {image_size}x{image_size}")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    seconds = export_graphs(model, out_dir, image_size, fused_attention=fused_attention)
    quantize_all(out_dir, quantizations, seconds)
    write_preprocessor_config(out_dir, image_size)
    write_manifest(out_dir, model, source, fused_attention)
    return conclude(out_dir, seconds, validate(model, out_dir, image_size) if check else None, started)


def quantize_all(out_dir: Path, quantizations: list[str], seconds: dict[str, float]) -> None:
    """Writes each requested `vision_encoder_<kind>.onnx`, recording the seconds it took."""
    for kind in quantizations:
        started = time.perf_counter()
        path = quantize(out_dir, kind)
        seconds[f"quantize_{kind}"] = time.perf_counter() - started
        log(f"  {path.name} written in {seconds[f'quantize_{kind}']:.1f} s")


def conclude(out_dir: Path, seconds: dict[str, float], errors: dict[str, float] | None, started: float) -> dict:
    """Logs the validation errors and the files written; returns the export's summary."""
    summary: dict[str, Any] = {"out_dir": str(out_dir), "seconds": seconds}
    if errors is not None:
        summary["validation_max_abs_error"] = errors
        log("validation (max |torch - onnxruntime|):")
        for name, error in errors.items():
            log(f"  {name:50s} {error:.3g}")
    for path in sorted(out_dir.iterdir()):
        log(f"  {path.name:45s} {path.stat().st_size / 1e6:10.1f} MB")
    log(f"done in {time.perf_counter() - started:.1f} s (python {sys.version.split()[0]}, torch {torch.__version__})")
    return summary
