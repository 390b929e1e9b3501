"""The tracker-only export (`--tracker-only`): onnx-community/sam3-tracker-ONNX's graphs from a Sam3TrackerModel.

- `vision_encoder.onnx`: pixel_values [1,3,S,S] -> image_embeddings.0/.1/.2: the FPN neck, the
  conv_s0/conv_s1 projections, and `no_memory_embedding` added to the 72x72 level as SAM3 itself does
  (`tracker_graphs.tracker_embeddings`; docs/model-contract.md).
- `prompt_encoder_mask_decoder.onnx`: input_points [B,P,N,2], input_labels [B,P,N], input_boxes [B,Pb,4]
  (Pb is P or 0) + the three embeddings -> iou_scores [B,P,3], pred_masks [B,P,3,h,w],
  object_score_logits [B,P,1]. Callers append the "not a point" pad themselves (`manifest.json` says so).
- `mask_decoder_image.onnx` + `mask_decoder_click.onnx`: the same decoder split into its per-image and
  per-click shares (`split_decoder`; our exports only, the runtime falls back without them).

The concept export writes the same click graphs (`export_click_decoders`) next to its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from sam3_core.graphs import (
    DECODER_DYNAMIC_AXES,
    DECODER_OUTPUTS,
    DECODER_PROMPT_INPUTS,
    DECODER_STEM,
    EMBEDDING_NAMES,
    ENCODER_INPUT,
    ENCODER_STEM,
    file_name,
)
from sam3_export.progress import log
from sam3_export.split_decoder import export_split_decoder
from sam3_export.tracing import trace
from sam3_export.tracker_graphs import (
    GraphInputs,
    PromptDecoderGraph,
    VisionEncoderGraph,
    example_inputs,
    image_embeddings,
)
from sam3_export.weights import build_tracker


def export_click_decoders(
    tracker: nn.Module, out_dir: Path, inputs: GraphInputs, embeddings: tuple[torch.Tensor, ...]
) -> float:
    """Traces the prompt encoder + mask decoder graph and its split twin on example embeddings; returns seconds."""
    started = time.perf_counter()
    trace(
        PromptDecoderGraph(tracker),
        (inputs.points, inputs.labels, inputs.boxes, *embeddings),
        out_dir / file_name(DECODER_STEM),
        [*DECODER_PROMPT_INPUTS, *EMBEDDING_NAMES],
        DECODER_OUTPUTS,
        DECODER_DYNAMIC_AXES,
    )
    export_split_decoder(tracker, out_dir, embeddings)
    seconds = time.perf_counter() - started
    log(f"  prompt encoder + mask decoder (standard and split) written in {seconds:.1f} s")
    return seconds


def cpu_session(path: Path) -> ort.InferenceSession:
    """ONNX Runtime on the CPU, as validation runs every graph."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def max_error(ours: np.ndarray, theirs: torch.Tensor) -> float:
    return float(np.abs(ours - theirs.numpy()).max())


@dataclass
class TrackerExport:
    """A Sam3TrackerModel and how to write, describe and check its folder (`pipeline.ExportTarget`)."""

    architecture: ClassVar[str] = "Sam3TrackerModel"
    model: nn.Module

    @classmethod
    def build(cls, *, checkpoint: Path | None, config: str, seed: int) -> TrackerExport:
        return cls(build_tracker(checkpoint=checkpoint, config=config, seed=seed))

    @property
    def backbone_config(self) -> Any:
        return self.model.config.vision_config.backbone_config

    def encoder_graph(self) -> tuple[nn.Module, list[str]]:
        return VisionEncoderGraph(self.model), list(EMBEDDING_NAMES)

    def export_prompt_graphs(
        self, out_dir: Path, inputs: GraphInputs, encoded: tuple[torch.Tensor, ...]
    ) -> dict[str, float]:
        return {"prompt_encoder_mask_decoder": export_click_decoders(self.model, out_dir, inputs, encoded)}

    def write_extra_files(self, out_dir: Path) -> None:
        """The tracker's folder needs nothing beyond the graphs, the preprocessor config and the manifest."""

    def manifest_extra(self) -> dict[str, Any]:
        return {}

    def validate(self, out_dir: Path) -> dict[str, float]:
        """Runs torch and ONNX Runtime on fresh random inputs; returns the max |difference| per output."""
        inputs = example_inputs(int(self.backbone_config.image_size), seed=1234)
        errors: dict[str, float] = {}
        reference_embeddings = image_embeddings(self.model, inputs.pixel_values)
        encoder = cpu_session(out_dir / file_name(ENCODER_STEM))
        embeddings = encoder.run(list(EMBEDDING_NAMES), {ENCODER_INPUT: inputs.pixel_values.numpy()})
        for name, ours, theirs in zip(EMBEDDING_NAMES, embeddings, reference_embeddings, strict=True):
            errors[name] = max_error(ours, theirs)

        decoder = cpu_session(out_dir / file_name(DECODER_STEM))
        graph = PromptDecoderGraph(self.model)
        no_boxes = torch.zeros((1, 0, 4))
        cases = {
            "clicks": (inputs.points, inputs.labels, no_boxes),
            "box": (torch.zeros((1, 2, 0, 2)), torch.zeros((1, 2, 0), dtype=torch.int64), inputs.boxes),
            "box+clicks": (inputs.points, inputs.labels, inputs.boxes),
        }
        for case, (points, labels, boxes) in cases.items():
            with torch.no_grad():
                expected = graph(points, labels, boxes, *reference_embeddings)
            feeds = dict(zip(DECODER_PROMPT_INPUTS, (points.numpy(), labels.numpy(), boxes.numpy()), strict=True))
            feeds.update({name: e.numpy() for name, e in zip(EMBEDDING_NAMES, reference_embeddings, strict=True)})
            actual = decoder.run(list(DECODER_OUTPUTS), feeds)
            for name, ours, theirs in zip(DECODER_OUTPUTS, actual, expected, strict=True):
                errors[f"{case}/{name}"] = max_error(ours, theirs)
        return errors
