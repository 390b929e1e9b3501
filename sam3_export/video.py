"""Writes and checks the video tracker's four graphs (`video_graphs`) beside a folder's encoder and click graphs.

Traced on random memories of the example frame's shape, with objects, memories, pointers and points as
dynamic axes; validation reruns them with other counts (no pointers at all included) against torch, and
against transformers' own modules where ours re-implement theirs (memory attention, the decoder's tokens).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from sam3_core.graphs import (
    MASK_PROMPT_FILE,
    MASK_PROMPT_INPUTS,
    MASK_PROMPT_OUTPUTS,
    MEMORY_ATTENTION_FILE,
    MEMORY_ATTENTION_INPUTS,
    MEMORY_ATTENTION_OUTPUT,
    MEMORY_ENCODER_FILE,
    MEMORY_ENCODER_INPUTS,
    MEMORY_ENCODER_OUTPUT,
    TRACKING_DECODER_FILE,
    TRACKING_DECODER_INPUTS,
    TRACKING_DECODER_OUTPUTS,
)
from sam3_export.configs import VIDEO_TRACKER_CONFIGS
from sam3_export.progress import log
from sam3_export.tracing import fused_attention, share_constants, trace
from sam3_export.tracker import TrackerExport, cpu_session, max_error
from sam3_export.tracker_graphs import GraphInputs, example_inputs, image_embeddings
from sam3_export.video_graphs import (
    MaskPromptGraph,
    MemoryAttentionGraph,
    MemoryEncoderGraph,
    TrackingDecoderGraph,
    frame_features,
)
from sam3_export.weights import reinitialise


@dataclass(frozen=True)
class VideoExample:
    """Inputs for every video graph at given object, memory, pointer and point counts."""

    memory_attention: tuple[torch.Tensor, ...]
    decoder: tuple[torch.Tensor, ...]
    memory_encoder: tuple[torch.Tensor, ...]
    mask_prompt: tuple[torch.Tensor, ...]


def video_example(
    tracker: nn.Module, embeddings: tuple[torch.Tensor, ...], *, objects: int, memories: int, pointers: int, seed: int
) -> VideoExample:
    generator = torch.Generator().manual_seed(seed)
    embedding_0, embedding_1, embedding_2 = embeddings
    _, channels, height, width = embedding_2.shape
    size, mask_size = tracker.image_size, tracker.prompt_encoder.mask_input_size
    memory = torch.randn((objects, memories, tracker.mem_dim, height, width), generator=generator)
    memory_time = torch.randint(0, tracker.num_maskmem, (objects, memories), generator=generator)
    object_pointers = torch.randn((objects, pointers, channels), generator=generator)
    pointer_time = torch.rand((objects, pointers), generator=generator)
    conditioned = torch.randn((objects, channels, height, width), generator=generator)
    points = torch.rand((objects, 3, 2), generator=generator) * size
    labels = torch.tensor([[1, 0, -1], [2, 3, -1], [-1, -1, -1]] * objects)[:objects]
    mask_logits = torch.randn((objects, 1, *mask_size), generator=generator) * 8
    use_mask = (torch.arange(objects) % 2).float()
    present = torch.ones(objects)
    binarize = torch.arange(objects) % 2 == 0
    scores = torch.randn((objects, 1), generator=generator)
    masks = (torch.rand((objects, 1, size, size), generator=generator) > 0.5).float()
    return VideoExample(
        memory_attention=(embedding_2, memory, memory_time, object_pointers, pointer_time),
        decoder=(conditioned, embedding_0, embedding_1, points, labels, mask_logits, use_mask, present),
        memory_encoder=(embedding_2, mask_logits, binarize, scores),
        mask_prompt=(masks, embedding_2),
    )


def _graphs(tracker: nn.Module, position: torch.Tensor) -> dict[str, nn.Module]:
    return {
        MEMORY_ATTENTION_FILE: MemoryAttentionGraph(tracker, position),
        TRACKING_DECODER_FILE: TrackingDecoderGraph(tracker),
        MEMORY_ENCODER_FILE: MemoryEncoderGraph(tracker),
        MASK_PROMPT_FILE: MaskPromptGraph(tracker),
    }


_NAMES = {
    MEMORY_ATTENTION_FILE: (MEMORY_ATTENTION_INPUTS, (MEMORY_ATTENTION_OUTPUT,)),
    TRACKING_DECODER_FILE: (TRACKING_DECODER_INPUTS, TRACKING_DECODER_OUTPUTS),
    MEMORY_ENCODER_FILE: (MEMORY_ENCODER_INPUTS, (MEMORY_ENCODER_OUTPUT,)),
    MASK_PROMPT_FILE: (MASK_PROMPT_INPUTS, MASK_PROMPT_OUTPUTS),
}
_OBJECTS = {0: "objects"}
_DYNAMIC = {
    MEMORY_ATTENTION_FILE: {
        "memory_features": {0: "objects", 1: "memories"},
        "memory_time": {0: "objects", 1: "memories"},
        "object_pointers": {0: "objects", 1: "pointers"},
        "pointer_time": {0: "objects", 1: "pointers"},
        MEMORY_ATTENTION_OUTPUT: _OBJECTS,
    },
    TRACKING_DECODER_FILE: {
        MEMORY_ATTENTION_OUTPUT: _OBJECTS,
        "input_points": {0: "objects", 1: "points"},
        "input_labels": {0: "objects", 1: "points"},
        **{name: _OBJECTS for name in ("mask_inputs", "use_mask_inputs", "object_present")},
        **{name: _OBJECTS for name in TRACKING_DECODER_OUTPUTS},
    },
    MEMORY_ENCODER_FILE: {
        "mask_logits": {0: "objects", 2: "height", 3: "width"},
        **{name: _OBJECTS for name in ("binarize", "object_score_logits", MEMORY_ENCODER_OUTPUT)},
    },
    MASK_PROMPT_FILE: {"masks": _OBJECTS, "mask_inputs": _OBJECTS},
}


def _inputs_of(example: VideoExample, name: str) -> tuple[torch.Tensor, ...]:
    field = {
        MEMORY_ATTENTION_FILE: "memory_attention",
        TRACKING_DECODER_FILE: "decoder",
        MEMORY_ENCODER_FILE: "memory_encoder",
        MASK_PROMPT_FILE: "mask_prompt",
    }[name]
    return getattr(example, field)


def export_video_graphs(
    tracker: nn.Module, position: torch.Tensor, out_dir: Path, embeddings: tuple[torch.Tensor, ...]
) -> dict[str, float]:
    """Traces the four graphs on the example frame's embeddings; seconds per graph."""
    example = video_example(tracker, embeddings, objects=2, memories=3, pointers=5, seed=0)
    attention = tracker.memory_attention.layers[0].self_attn
    seconds: dict[str, float] = {}
    for name, graph in _graphs(tracker, position).items():
        started = time.perf_counter()
        inputs, outputs = _NAMES[name]
        fused = fused_attention(attention.num_attention_heads, attention.head_dim)
        with fused if name == MEMORY_ATTENTION_FILE else contextlib.nullcontext():
            trace(graph, _inputs_of(example, name), out_dir / name, inputs, outputs, _DYNAMIC[name], share_constants)
        seconds[name.removesuffix(".onnx")] = time.perf_counter() - started
        log(f"  {name} written in {seconds[name.removesuffix('.onnx')]:.1f} s")
    return seconds


def validate_video_graphs(
    tracker: nn.Module, position: torch.Tensor, out_dir: Path, embeddings: tuple[torch.Tensor, ...]
) -> dict[str, float]:
    """ONNX Runtime vs torch at counts the tracing never saw, and our modules vs transformers' where we
    re-implement them; the max |difference| per check."""
    errors: dict[str, float] = {}
    graphs = _graphs(tracker, position)
    for label, counts in {
        "3 objects, 2 memories, 7 pointers": (3, 2, 7),
        "1 object, 1 memory, 0 pointers": (1, 1, 0),
    }.items():
        example = video_example(tracker, embeddings, objects=counts[0], memories=counts[1], pointers=counts[2], seed=7)
        for name, graph in graphs.items():
            inputs, outputs = _NAMES[name]
            values = _inputs_of(example, name)
            with torch.no_grad():
                expected = graph(*values)
            expected = expected if isinstance(expected, tuple) else (expected,)
            actual = cpu_session(out_dir / name).run(
                list(outputs), {n: v.numpy() for n, v in zip(inputs, values, strict=True)}
            )
            for output, ours, theirs in zip(outputs, actual, expected, strict=True):
                errors[f"{label}/{output}"] = max_error(ours, theirs)
    errors.update(_against_transformers(tracker, graphs, embeddings, position))
    return errors


def _against_transformers(
    tracker: nn.Module, graphs: dict[str, nn.Module], embeddings: tuple[torch.Tensor, ...], position: torch.Tensor
) -> dict[str, float]:
    """Memory attention for one object as transformers runs it (sequence-first, pointers split into tokens)."""
    example = video_example(tracker, embeddings, objects=1, memories=2, pointers=3, seed=11)
    embedding_2, memory, memory_time, pointers, pointer_time = example.memory_attention
    with torch.no_grad():
        ours = graphs[MEMORY_ATTENTION_FILE](*example.memory_attention)
        features = frame_features(tracker, embedding_2).flatten(2).permute(2, 0, 1)
        memory_position = tracker.memory_encoder.position_encoding(
            torch.Size([1, *memory.shape[2:]]), "cpu", torch.float32
        )
        memories, memory_positions = [], []
        for slot in range(memory.shape[1]):
            memories.append(memory[:, slot].flatten(2).permute(2, 0, 1))
            temporal = tracker.memory_temporal_positional_encoding[memory_time[0, slot]]
            memory_positions.append(memory_position.flatten(2).permute(2, 0, 1) + temporal.reshape(1, 1, -1))
        from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import get_1d_sine_pe

        pointer_position = tracker.temporal_positional_encoding_projection_layer(
            get_1d_sine_pe(pointer_time[0], dim=features.shape[-1])
        )
        splits = features.shape[-1] // tracker.mem_dim
        tokens = pointers[0].reshape(-1, 1, splits, tracker.mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
        memories.append(tokens)
        memory_positions.append(pointer_position[:, None].repeat_interleave(splits, dim=0))
        theirs = tracker.memory_attention(
            current_vision_features=features,
            memory=torch.cat(memories),
            current_vision_position_embeddings=position.flatten(2).permute(2, 0, 1),
            memory_posision_embeddings=torch.cat(memory_positions),
            num_object_pointer_tokens=tokens.shape[0],
        )
        theirs = theirs.squeeze(1).transpose(1, 2).reshape(ours.shape)
    return {"memory attention vs transformers (torch)": float((ours - theirs).abs().max())}


def level_position(neck: nn.Module, embedding_2: torch.Tensor) -> torch.Tensor:
    """The tracker neck's sine position encoding of the 72x72 level (transformers adds it before memory attention)."""
    return neck.position_encoding(embedding_2.shape, embedding_2.device, embedding_2.dtype)


def video_manifest(tracker: nn.Module) -> dict[str, Any]:
    """What the runtime must know to drive the video graphs as transformers drives its modules."""
    config, decoder = tracker.config, tracker.mask_decoder
    return {
        "video": {
            "memory_attention": MEMORY_ATTENTION_FILE,
            "tracking_decoder": TRACKING_DECODER_FILE,
            "memory_encoder": MEMORY_ENCODER_FILE,
            "mask_prompt": MASK_PROMPT_FILE,
            "image_size": int(tracker.image_size),
            "num_maskmem": int(config.num_maskmem),
            "max_cond_frame_num": int(config.max_cond_frame_num),
            "max_object_pointers_in_encoder": int(config.max_object_pointers_in_encoder),
            "multimask_output_in_sam": bool(config.multimask_output_in_sam),
            "multimask_output_for_tracking": bool(config.multimask_output_for_tracking),
            "multimask_min_pt_num": int(config.multimask_min_pt_num),
            "multimask_max_pt_num": int(config.multimask_max_pt_num),
            "dynamic_multimask_via_stability": bool(decoder.dynamic_multimask_via_stability),
            "dynamic_multimask_stability_delta": float(decoder.dynamic_multimask_stability_delta),
            "dynamic_multimask_stability_thresh": float(decoder.dynamic_multimask_stability_thresh),
        }
    }


# Added to the random object-score head's bias, so that objects are seen (scores around +1 instead of -0.9)
# and parity compares real masks rather than the "absent" constant.
OBJECT_SCORE_SHIFT = 2.0


@dataclass
class TrackerVideoExport(TrackerExport):
    """A standalone Sam3TrackerVideoModel: the tracker-only folder's graphs plus the video graphs. Builds
    the committed video fixture (config "micro") and the benchmark's full-size tracker ("full"), whose
    weights transformers' `Sam3TrackerVideoModel` runs as they are."""

    architecture: ClassVar[str] = "Sam3TrackerVideoModel"

    @classmethod
    def build(cls, *, checkpoint: Path | None, config: str, seed: int) -> TrackerVideoExport:
        from transformers import Sam3TrackerVideoConfig, Sam3TrackerVideoModel

        if checkpoint is not None:
            return cls(Sam3TrackerVideoModel.from_pretrained(checkpoint).eval())
        if config not in VIDEO_TRACKER_CONFIGS:
            raise ValueError(
                f"a standalone video tracker comes in configs {sorted(VIDEO_TRACKER_CONFIGS)}, not {config!r}"
            )
        torch.manual_seed(seed)
        model = Sam3TrackerVideoModel(Sam3TrackerVideoConfig(**VIDEO_TRACKER_CONFIGS[config]))
        reinitialise(model, seed)
        with torch.no_grad():  # random weights score every object absent (~ -0.9): all masks would be empty
            model.mask_decoder.pred_obj_score_head.proj_out.bias.add_(OBJECT_SCORE_SHIFT)
        return cls(model.eval())

    def export_prompt_graphs(
        self, out_dir: Path, inputs: GraphInputs, encoded: tuple[torch.Tensor, ...]
    ) -> dict[str, float]:
        seconds = super().export_prompt_graphs(out_dir, inputs, encoded)
        position = level_position(self.model.vision_encoder.neck, encoded[2])
        return seconds | export_video_graphs(self.model, position, out_dir, encoded)

    def manifest_extra(self) -> dict[str, Any]:
        return video_manifest(self.model)

    def validate(self, out_dir: Path) -> dict[str, float]:
        pixel_values = example_inputs(int(self.backbone_config.image_size), seed=1234).pixel_values
        embeddings = image_embeddings(self.model, pixel_values)
        position = level_position(self.model.vision_encoder.neck, embeddings[2])
        return super().validate(out_dir) | validate_video_graphs(self.model, position, out_dir, embeddings)
