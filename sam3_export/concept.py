"""The default export: ONE model folder that serves clicks, concepts and video tracking, from a Sam3VideoModel.

The folder holds the tracker's graphs (`tracker`), the video tracker's (`video`, docs/video.md) and three
more (docs/concepts.md):

- `vision_encoder.onnx`: pixel_values -> the tracker's `image_embeddings.0/.1/.2` (today's contract,
  `no_memory_embedding` on the 72x72 level as SAM3's video path adds it) and `detector_features.0/.1/.2`
  (256 channels at 288/144/72). One trunk run serves both prompt kinds.
- `text_encoder.onnx`: input_ids + attention_mask [T, 32] -> text_features [T, 32, 256], one row per phrase.
- `exemplar_encoder.onnx`: detector_features.2 + boxes [1, N, 4] (cx, cy, w, h in [0, 1]) + labels [1, N]
  (1 positive, 0 negative) -> exemplar_features [1, N + 1, 256] (the boxes and a CLS token). N >= 1.
- `concept_decoder.onnx`: the three detector features + prompt_features [1, P, 256] + prompt_mask [1, P]
  -> pred_logits [1, Q], pred_boxes [1, Q, 4] (xyxy in [0, 1]), pred_masks [1, Q, 288, 288],
  presence_logits [1, 1]. The prompt length P is a dynamic axis.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from sam3_core.graphs import (
    BOX_ONLY_TEXT,
    CONCEPT_DECODER_FILE,
    CONCEPT_OUTPUTS,
    CONCEPT_PROMPT_INPUTS,
    DECODER_OUTPUTS,
    DECODER_PROMPT_INPUTS,
    DECODER_STEM,
    DETECTOR_OUTPUTS,
    EMBEDDING_NAMES,
    ENCODER_INPUT,
    ENCODER_STEM,
    EXEMPLAR_ENCODER_FILE,
    EXEMPLAR_INPUTS,
    EXEMPLAR_OUTPUT,
    TEXT_ENCODER_FILE,
    TEXT_INPUTS,
    TEXT_OUTPUT,
    file_name,
)
from sam3_core.tokenizer import TEXT_LENGTH
from sam3_export.concept_graphs import (
    ConceptDecoderGraph,
    ExemplarEncoderGraph,
    TextEncoderGraph,
    UnifiedEncoderGraph,
    example_prompt,
    video_tracker_embeddings,
)
from sam3_export.progress import log
from sam3_export.tokenizer_files import write_tokenizer
from sam3_export.tracing import trace
from sam3_export.tracker import cpu_session, export_click_decoders, max_error
from sam3_export.tracker_graphs import GraphInputs, PromptDecoderGraph, example_inputs
from sam3_export.video import export_video_graphs, level_position, validate_video_graphs, video_manifest
from sam3_export.weights import build_video_model, tracker_of


def _timed(graph: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: dict) -> float:
    started = time.perf_counter()
    trace(graph, args, path, inputs, outputs, dynamic)
    seconds = time.perf_counter() - started
    log(f"  {path.name} written in {seconds:.1f} s")
    return seconds


def _feeds(names: tuple[str, ...], *values: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip(names, values, strict=True))


@dataclass
class ConceptExport:
    """A Sam3VideoModel, its tracker, and how to write, describe and check their folder (`pipeline.ExportTarget`)."""

    architecture: ClassVar[str] = "Sam3VideoModel"
    model: nn.Module  # the video model: its parameters and config are what the manifest records
    tracker: nn.Module
    checkpoint: Path | None

    @classmethod
    def build(cls, *, checkpoint: Path | None, config: str, seed: int) -> ConceptExport:
        video = build_video_model(checkpoint=checkpoint, config=config, seed=seed)
        return cls(video, tracker_of(video), checkpoint)

    @property
    def backbone_config(self) -> Any:
        return self.model.config.detector_config.vision_config.backbone_config

    def encoder_graph(self) -> tuple[nn.Module, list[str]]:
        return UnifiedEncoderGraph(self.model), [*EMBEDDING_NAMES, *DETECTOR_OUTPUTS]

    def export_prompt_graphs(
        self, out_dir: Path, inputs: GraphInputs, encoded: tuple[torch.Tensor, ...]
    ) -> dict[str, float]:
        """The click decoders, then the text encoder, the exemplar encoder and the concept decoder."""
        detector = self.model.detector_model
        embeddings, features = encoded[:3], encoded[3:]
        seconds = {"prompt_encoder_mask_decoder": export_click_decoders(self.tracker, out_dir, inputs, embeddings)}
        ids, mask, boxes, labels = example_prompt(seed=0)
        phrases = {0: "phrases"}
        seconds["text_encoder"] = _timed(
            TextEncoderGraph(detector),
            (ids, mask),
            out_dir / TEXT_ENCODER_FILE,
            list(TEXT_INPUTS),
            [TEXT_OUTPUT],
            {name: phrases for name in (*TEXT_INPUTS, TEXT_OUTPUT)},
        )
        seconds["exemplar_encoder"] = _timed(
            ExemplarEncoderGraph(detector),
            (features[2], boxes, labels),
            out_dir / EXEMPLAR_ENCODER_FILE,
            list(EXEMPLAR_INPUTS),
            [EXEMPLAR_OUTPUT],
            {**{name: {1: "exemplars"} for name in EXEMPLAR_INPUTS[1:]}, EXEMPLAR_OUTPUT: {1: "tokens"}},
        )
        with torch.no_grad():
            text = TextEncoderGraph(detector)(ids, mask)
            exemplars = ExemplarEncoderGraph(detector)(features[2], boxes, labels)
        prompt = torch.cat([text, exemplars], dim=1)
        prompt_mask = torch.cat([mask.bool(), torch.ones(exemplars.shape[:2], dtype=torch.bool)], dim=1)
        seconds["concept_decoder"] = _timed(
            ConceptDecoderGraph(detector),
            (*features, prompt, prompt_mask),
            out_dir / CONCEPT_DECODER_FILE,
            [*DETECTOR_OUTPUTS, *CONCEPT_PROMPT_INPUTS],
            list(CONCEPT_OUTPUTS),
            {name: {1: "tokens"} for name in CONCEPT_PROMPT_INPUTS},
        )
        position = level_position(self.model.tracker_neck, embeddings[2])
        return seconds | export_video_graphs(self.model.tracker_model, position, out_dir, embeddings)

    def write_extra_files(self, out_dir: Path) -> None:
        write_tokenizer(out_dir, self.checkpoint)

    def manifest_extra(self) -> dict[str, Any]:
        """What the runtime must know about the concept graphs."""
        return {
            "concepts": {
                "text_encoder": TEXT_ENCODER_FILE,
                "exemplar_encoder": EXEMPLAR_ENCODER_FILE,
                "concept_decoder": CONCEPT_DECODER_FILE,
                "text_length": TEXT_LENGTH,
                "box_only_text": BOX_ONLY_TEXT,
            },
            **video_manifest(self.model.tracker_model),
        }

    def validate(self, out_dir: Path) -> dict[str, float]:
        """ONNX Runtime vs torch on fresh inputs, and the encoder's tracker outputs vs the video tracker path."""
        video, detector = self.model, self.model.detector_model
        inputs = example_inputs(int(self.backbone_config.image_size), seed=1234)
        errors: dict[str, float] = {}
        outputs = cpu_session(out_dir / file_name(ENCODER_STEM)).run(None, {ENCODER_INPUT: inputs.pixel_values.numpy()})
        with torch.no_grad():
            expected = UnifiedEncoderGraph(video)(inputs.pixel_values)
            video_path = video_tracker_embeddings(video, inputs.pixel_values)
        for name, ours, theirs in zip([*EMBEDDING_NAMES, *DETECTOR_OUTPUTS], outputs, expected, strict=True):
            errors[name] = max_error(ours, theirs)
        for name, ours, theirs in zip(EMBEDDING_NAMES, expected[:3], video_path, strict=True):
            errors[f"{name} vs video tracker path (torch)"] = float((ours - theirs).abs().max())
        prompts = (inputs.points, inputs.labels, inputs.boxes)
        with torch.no_grad():
            clicks = PromptDecoderGraph(self.tracker)(*prompts, *expected[:3])
        decoded = cpu_session(out_dir / file_name(DECODER_STEM)).run(
            None,
            {
                **{name: p.numpy() for name, p in zip(DECODER_PROMPT_INPUTS, prompts, strict=True)},
                **dict(zip(EMBEDDING_NAMES, outputs[:3], strict=True)),
            },
        )
        for name, ours, theirs in zip(DECODER_OUTPUTS, decoded, clicks, strict=True):
            errors[f"clicks/{name}"] = max_error(ours, theirs)

        ids, mask, boxes, labels = example_prompt(seed=99)
        text = cpu_session(out_dir / TEXT_ENCODER_FILE).run(None, _feeds(TEXT_INPUTS, ids.numpy(), mask.numpy()))[0]
        exemplar_feeds = _feeds(EXEMPLAR_INPUTS, outputs[5], boxes.numpy(), labels.numpy())
        exemplars = cpu_session(out_dir / EXEMPLAR_ENCODER_FILE).run(None, exemplar_feeds)[0]
        decoder = cpu_session(out_dir / CONCEPT_DECODER_FILE)
        text_mask = mask.numpy().astype(bool)
        cases = {
            "text": (text, text_mask, {}),
            "text+exemplars": (
                np.concatenate([text, exemplars], axis=1),
                np.concatenate([text_mask, np.ones(exemplars.shape[:2], bool)], axis=1),
                {"input_boxes": boxes, "input_boxes_labels": labels},
            ),
        }
        for case, (prompt, prompt_mask, box_kwargs) in cases.items():
            names = (*DETECTOR_OUTPUTS, *CONCEPT_PROMPT_INPUTS)
            ours = decoder.run(None, _feeds(names, *outputs[3:], prompt, prompt_mask))
            with torch.no_grad():
                reference = detector(pixel_values=inputs.pixel_values, input_ids=ids, attention_mask=mask, **box_kwargs)
            for name, value in zip(CONCEPT_OUTPUTS, ours, strict=True):
                errors[f"{case}/{name}"] = max_error(value, getattr(reference, name))
        embeddings = tuple(torch.from_numpy(output) for output in outputs[:3])
        position = level_position(video.tracker_neck, embeddings[2])
        return errors | validate_video_graphs(video.tracker_model, position, out_dir, embeddings)
