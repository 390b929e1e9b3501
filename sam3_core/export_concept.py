"""Build SAM3 the way its checkpoint ships it and write ONE model folder that serves clicks and concepts.

Needs the `export` extra (torch + transformers). The real checkpoint is a `Sam3VideoModel`: one ViT trunk
shared by the detector (`Sam3Model`: FPN neck, CLIP text encoder, geometry encoder, DETR, mask decoder)
and the tracker (its own neck, prompt encoder, mask decoder). The folder holds five graphs:

- `vision_encoder.onnx`: pixel_values -> the tracker's `image_embeddings.0/.1/.2` (today's contract,
  `no_memory_embedding` on the 72x72 level as SAM3's video path adds it) and `detector_features.0/.1/.2`
  (256 channels at 288/144/72). One trunk run serves both prompt kinds.
- `prompt_encoder_mask_decoder.onnx`: the click/box decoder, unchanged (`export.PromptDecoderGraph`).
- `text_encoder.onnx`: input_ids + attention_mask [T, 32] -> text_features [T, 32, 256], one row per phrase.
- `exemplar_encoder.onnx`: detector_features.2 + boxes [1, N, 4] (cx, cy, w, h in [0, 1]) + labels [1, N]
  (1 positive, 0 negative) -> exemplar_features [1, N + 1, 256] (the boxes and a CLS token). N >= 1.
- `concept_decoder.onnx`: the three detector features + prompt_features [1, P, 256] + prompt_mask [1, P]
  -> pred_logits [1, Q], pred_boxes [1, Q, 4] (xyxy in [0, 1]), pred_masks [1, Q, 288, 288],
  presence_logits [1, 1].

Why the exemplar encoder is a graph of its own: transformers runs the geometry encoder only when boxes
are given (zero boxes would still add a CLS token and change the answer), so the caller concatenates
[text tokens, exemplar tokens] and their masks, exactly as `Sam3Model.forward` does, and text-only
prompts never trace a zero-sized RoiAlign. The prompt length P is a dynamic axis.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sam3_core import export
from sam3_core.export import EMBEDDING_NAMES, OPSET, log, reinitialise
from sam3_core.graphs import DECODER_STEM, DETECTOR_OUTPUTS, ENCODER_STEM, file_name

TEXT_FILE = "text_encoder.onnx"
EXEMPLAR_FILE = "exemplar_encoder.onnx"
CONCEPT_FILE = "concept_decoder.onnx"
CONCEPT_OUTPUTS = ("pred_logits", "pred_boxes", "pred_masks", "presence_logits")
TEXT_LENGTH = 32

_TINY_VISION = {
    "model_type": "sam3_vision_model",
    "backbone_config": export.CONFIGS["tiny"]["vision_config"]["backbone_config"],
}
_TINY_DETR = {"num_layers": 1, "intermediate_size": 256}
# "tiny" keeps every I/O shape of the real model (1008 input, the tracker's 32/64/256-channel embeddings,
# 256-channel detector features, 32 text tokens, CLIP's 49,408-token vocabulary, 200 queries, 288x288
# masks) and shrinks what is inside: a 2-layer ViT of width 32, a 1-layer CLIP of width 16, one layer each
# for the geometry encoder and the DETR encoder/decoder, and a 2x2 RoiAlign (7x7 in the real model: its
# 256x256x7x7 projection alone would be 13 MB of fixture).
VIDEO_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "detector_config": {
            "vision_config": _TINY_VISION,
            "text_config": {
                "model_type": "clip_text_model",
                "vocab_size": 49408,
                "hidden_size": 16,
                "intermediate_size": 32,
                "projection_dim": 16,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "max_position_embeddings": TEXT_LENGTH,
                "hidden_act": "gelu",
            },
            "geometry_encoder_config": {"num_layers": 1, "intermediate_size": 256, "roi_size": 2},
            "detr_encoder_config": _TINY_DETR,
            "detr_decoder_config": _TINY_DETR,
        },
        "tracker_config": {
            "vision_config": _TINY_VISION,
            "mask_decoder_config": export.CONFIGS["tiny"]["mask_decoder_config"],
            "memory_attention_num_layers": 1,
            "memory_attention_feed_forward_hidden_size": 64,
            "memory_fuser_num_layers": 1,
            "memory_fuser_intermediate_dim": 64,
        },
    },
    "full": {},
}


def build_video_model(*, checkpoint: Path | None, config: str, seed: int) -> nn.Module:
    """A `Sam3VideoModel.save_pretrained` folder, or the named config with variance-preserving random weights."""
    from transformers import Sam3VideoConfig, Sam3VideoModel

    if checkpoint is not None:
        model = Sam3VideoModel.from_pretrained(checkpoint)
    else:
        torch.manual_seed(seed)
        model = Sam3VideoModel(Sam3VideoConfig(**VIDEO_CONFIGS[config]))
        reinitialise(model, seed)
    return model.eval()


def tracker_model(video: nn.Module) -> nn.Module:
    """The video model's tracker as a `Sam3TrackerModel`, every weight mapped explicitly (strict load).

    `Sam3TrackerModel.from_pretrained` on a video checkpoint silently leaves the mask decoder random; the
    mapping that holds: trunk = the detector's backbone, neck = `tracker_neck`, the rest = `tracker_model`.
    """
    from transformers import Sam3TrackerConfig, Sam3TrackerModel

    config = video.config
    tracker = Sam3TrackerModel(
        Sam3TrackerConfig(
            vision_config=config.detector_config.vision_config.to_dict(),
            prompt_encoder_config=config.tracker_config.prompt_encoder_config.to_dict(),
            mask_decoder_config=config.tracker_config.mask_decoder_config.to_dict(),
        )
    )
    source = video.state_dict()

    def source_key(key: str) -> str:
        if key.startswith("vision_encoder.backbone."):
            return "detector_model." + key
        if key.startswith("vision_encoder.neck."):
            return "tracker_neck." + key.removeprefix("vision_encoder.neck.")
        return "tracker_model." + key

    tracker.load_state_dict({key: source[source_key(key)] for key in tracker.state_dict()}, strict=True)
    return tracker.eval()


class UnifiedEncoderGraph(nn.Module):
    """pixel_values -> the tracker's three embeddings and the detector's three FPN levels, one trunk run."""

    def __init__(self, video: nn.Module) -> None:
        super().__init__()
        self.video = video

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        detector = self.video.detector_model.vision_encoder
        tracker = self.video.tracker_model
        trunk = detector.backbone(pixel_values).last_hidden_state
        side = pixel_values.shape[-1] // detector.config.backbone_config.patch_size
        spatial = trunk.view(trunk.shape[0], side, side, -1).permute(0, 3, 1, 2)
        tracker_levels, _ = self.video.tracker_neck(spatial)
        detector_levels, _ = detector.neck(spatial)
        # The detector's 0.5x level is unused, as the tracker's is.
        return (*export.tracker_embeddings(tracker_levels, tracker), *detector_levels[:3])


def video_tracker_embeddings(video: nn.Module, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """The oracle for the tracker's embeddings of a single frame: transformers' own Sam3VideoModel path (shared
    trunk, tracker neck, then the initial-conditioning-frame features: the no-memory embedding on 72x72)."""
    tracker = video.tracker_model
    with torch.no_grad():
        vision = video.detector_model.get_vision_features(pixel_values=pixel_values)
        features, positions = video.get_vision_features_for_tracker(vision)
        conditioned = tracker._prepare_memory_conditioned_features(
            inference_session=None,
            frame_idx=0,
            obj_idx=0,
            is_initial_conditioning_frame=True,
            current_vision_features=features[-1],
            current_vision_positional_embeddings=positions[-1],
            num_total_frames=1,
        )
    high_resolution = [
        feature.permute(1, 2, 0).view(pixel_values.shape[0], -1, *size)
        for feature, size in zip(features[:-1], tracker.backbone_feature_sizes[:-1], strict=True)
    ]
    return [*high_resolution, conditioned]


class TextEncoderGraph(nn.Module):
    """Token ids -> the projected text features the DETR consumes, one row per phrase."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.detector.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


def _positions(detector: nn.Module, levels: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The detector neck's sine position encodings: functions of the shapes only, constants in the graph."""
    encoding = detector.vision_encoder.neck.position_encoding
    return tuple(encoding(level.shape, level.device, level.dtype) for level in levels)


class ExemplarEncoderGraph(nn.Module):
    """Exemplar boxes -> prompt tokens, as `Sam3Model.forward` computes them when boxes are given."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, features_2: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        outputs = self.detector.geometry_encoder(
            box_embeddings=boxes,
            box_mask=torch.ones_like(labels, dtype=torch.bool),
            box_labels=labels,
            img_feats=(features_2,),
            img_pos_embeds=_positions(self.detector, (features_2,)),
        )
        return outputs.last_hidden_state


class ConceptDecoderGraph(nn.Module):
    """Detector features + prompt tokens -> every query's logit, box, mask and the presence logit."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(
        self,
        features_0: torch.Tensor,
        features_1: torch.Tensor,
        features_2: torch.Tensor,
        prompt_features: torch.Tensor,
        prompt_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        levels = (features_0, features_1, features_2)
        positions = _positions(self.detector, levels)
        # Sam3Model.forward drops the last (0.5x) level of what it is given: pass a placeholder for it.
        vision = Sam3VisionEncoderOutput(
            fpn_hidden_states=(*levels, features_2), fpn_position_encoding=(*positions, positions[-1])
        )
        outputs = self.detector(
            vision_embeds=vision,
            text_embeds=BaseModelOutputWithPooling(pooler_output=prompt_features),
            attention_mask=prompt_mask,
        )
        return outputs.pred_logits, outputs.pred_boxes, outputs.pred_masks, outputs.presence_logits


# ---------------------------------------------------------------- tokenizer files


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable character table, in vocabulary order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    table = dict(zip(printable, codes, strict=True))
    return [chr(table[byte]) for byte in printable]


def clip_tokenizer_from_bpe(bpe_gz: Path) -> Any:
    """CLIPTokenizer built from OpenAI's `bpe_simple_vocab_16e6.txt.gz` (as open_clip ships it): 49,408 tokens."""
    from transformers import CLIPTokenizer

    with gzip.open(bpe_gz, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    characters = _bytes_to_unicode()
    tokens = characters + [c + "</w>" for c in characters] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)


def open_clip_bpe() -> Path:
    spec = importlib.util.find_spec("open_clip")
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz" if spec and spec.origin else None
    if path is None or not path.exists():
        raise SystemExit(
            "a random-init export needs CLIP's BPE vocabulary, which open-clip-torch ships: "
            "pip install --no-deps open-clip-torch"
        )
    return path


def write_tokenizer(out_dir: Path, checkpoint: Path | None) -> None:
    """The checkpoint's own CLIP tokenizer files, or CLIP's public vocabulary for random weights.

    Saved through transformers, so the folder always has `tokenizer.json`, which the runtime reads
    with the `tokenizers` library (no torch, no transformers).
    """
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(checkpoint) if checkpoint else clip_tokenizer_from_bpe(open_clip_bpe())
    tokenizer.save_pretrained(out_dir)


# ---------------------------------------------------------------- export and validation


def _export(graph: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: dict) -> float:
    started = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(
            graph,
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )
    export.save_graph(path)
    seconds = time.perf_counter() - started
    log(f"  {path.name} written in {seconds:.1f} s")
    return seconds


def example_prompt(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids with padding, two exemplar boxes (cx, cy, w, h) and their labels (one positive, one negative)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 49408, (1, TEXT_LENGTH), generator=generator)
    mask = torch.zeros((1, TEXT_LENGTH), dtype=torch.int64)
    mask[:, :5] = 1
    boxes = torch.rand((1, 2, 2), generator=generator) * 0.5 + 0.25
    sizes = torch.rand((1, 2, 2), generator=generator) * 0.3 + 0.05
    return ids, mask, torch.cat([boxes, sizes], dim=-1), torch.tensor([[1, 0]])


def export_graphs(video: nn.Module, tracker: nn.Module, out_dir: Path, *, fused_attention: bool) -> dict[str, float]:
    """Traces the five graphs; returns seconds per graph."""
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = export.example_inputs(int(video.config.detector_config.vision_config.backbone_config.image_size), seed=0)
    detector = video.detector_model
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    encoder_path = out_dir / file_name(ENCODER_STEM)
    backbone = video.config.detector_config.vision_config.backbone_config
    names = [*EMBEDDING_NAMES, *DETECTOR_OUTPUTS]
    graph = UnifiedEncoderGraph(video)
    export.export_encoder(graph, inputs.pixel_values, encoder_path, names, backbone, fused_attention)
    export.save_graph(encoder_path, edit=export.name_no_memory_constant)
    seconds["vision_encoder"] = time.perf_counter() - started
    log(f"  {encoder_path.name} written in {seconds['vision_encoder']:.1f} s")
    with torch.no_grad():
        outputs = UnifiedEncoderGraph(video)(inputs.pixel_values)
    embeddings, features = outputs[:3], outputs[3:]
    seconds["prompt_encoder_mask_decoder"] = export.export_decoder(tracker, out_dir, inputs, embeddings)

    ids, mask, boxes, labels = example_prompt(seed=0)
    phrases = {0: "phrases"}
    seconds["text_encoder"] = _export(
        TextEncoderGraph(detector),
        (ids, mask),
        out_dir / TEXT_FILE,
        ["input_ids", "attention_mask"],
        ["text_features"],
        {"input_ids": phrases, "attention_mask": phrases, "text_features": phrases},
    )
    seconds["exemplar_encoder"] = _export(
        ExemplarEncoderGraph(detector),
        (features[2], boxes, labels),
        out_dir / EXEMPLAR_FILE,
        [DETECTOR_OUTPUTS[2], "boxes", "labels"],
        ["exemplar_features"],
        {"boxes": {1: "exemplars"}, "labels": {1: "exemplars"}, "exemplar_features": {1: "tokens"}},
    )
    with torch.no_grad():
        text = TextEncoderGraph(detector)(ids, mask)
        exemplars = ExemplarEncoderGraph(detector)(features[2], boxes, labels)
    prompt = torch.cat([text, exemplars], dim=1)
    prompt_mask = torch.cat([mask.bool(), torch.ones(exemplars.shape[:2], dtype=torch.bool)], dim=1)
    seconds["concept_decoder"] = _export(
        ConceptDecoderGraph(detector),
        (*features, prompt, prompt_mask),
        out_dir / CONCEPT_FILE,
        [*DETECTOR_OUTPUTS, "prompt_features", "prompt_mask"],
        list(CONCEPT_OUTPUTS),
        {"prompt_features": {1: "tokens"}, "prompt_mask": {1: "tokens"}},
    )
    # torch.onnx.export leaves each wrapper (and so the model) in the training mode a fresh nn.Module has:
    # the DETR's dropout would then make every later torch reference random.
    video.eval()
    tracker.eval()
    return seconds


def _max_error(ours: np.ndarray, theirs: torch.Tensor) -> float:
    return float(np.abs(ours - theirs.numpy()).max())


def validate(video: nn.Module, tracker: nn.Module, out_dir: Path) -> dict[str, float]:
    """ONNX Runtime vs torch on fresh inputs, and the encoder's tracker outputs vs the video tracker path."""
    import onnxruntime as ort

    def session(name: str) -> ort.InferenceSession:
        return ort.InferenceSession(str(out_dir / name), providers=["CPUExecutionProvider"])

    detector = video.detector_model
    image_size = int(video.config.detector_config.vision_config.backbone_config.image_size)
    inputs = export.example_inputs(image_size, seed=1234)
    errors: dict[str, float] = {}
    outputs = session(file_name(ENCODER_STEM)).run(None, {"pixel_values": inputs.pixel_values.numpy()})
    with torch.no_grad():
        expected = UnifiedEncoderGraph(video)(inputs.pixel_values)
        video_path = video_tracker_embeddings(video, inputs.pixel_values)
    for name, ours, theirs in zip([*EMBEDDING_NAMES, *DETECTOR_OUTPUTS], outputs, expected, strict=True):
        errors[name] = _max_error(ours, theirs)
    for name, ours, theirs in zip(EMBEDDING_NAMES, expected[:3], video_path, strict=True):
        errors[f"{name} vs video tracker path (torch)"] = float((ours - theirs).abs().max())
    feeds = {"input_points": inputs.points, "input_labels": inputs.labels, "input_boxes": inputs.boxes}
    with torch.no_grad():
        clicks = export.PromptDecoderGraph(tracker)(*feeds.values(), *expected[:3])
    decoded = session(file_name(DECODER_STEM)).run(
        None, {**{k: v.numpy() for k, v in feeds.items()}, **dict(zip(EMBEDDING_NAMES, outputs[:3], strict=True))}
    )
    for name, ours, theirs in zip(("iou_scores", "pred_masks", "object_score_logits"), decoded, clicks, strict=True):
        errors[f"clicks/{name}"] = _max_error(ours, theirs)

    ids, mask, boxes, labels = example_prompt(seed=99)
    text = session(TEXT_FILE).run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    exemplars = session(EXEMPLAR_FILE).run(
        None, {DETECTOR_OUTPUTS[2]: outputs[5], "boxes": boxes.numpy(), "labels": labels.numpy()}
    )[0]
    decoder = session(CONCEPT_FILE)
    cases = {
        "text": (text, mask.numpy().astype(bool), {}),
        "text+exemplars": (
            np.concatenate([text, exemplars], axis=1),
            np.concatenate([mask.numpy().astype(bool), np.ones(exemplars.shape[:2], bool)], axis=1),
            {"input_boxes": boxes, "input_boxes_labels": labels},
        ),
    }
    for case, (prompt, prompt_mask, box_kwargs) in cases.items():
        ours = decoder.run(
            None,
            {
                **dict(zip(DETECTOR_OUTPUTS, outputs[3:], strict=True)),
                "prompt_features": prompt,
                "prompt_mask": prompt_mask,
            },
        )
        with torch.no_grad():
            reference = detector(pixel_values=inputs.pixel_values, input_ids=ids, attention_mask=mask, **box_kwargs)
        for name, value in zip(CONCEPT_OUTPUTS, ours, strict=True):
            errors[f"{case}/{name}"] = _max_error(value, getattr(reference, name))
    return errors


def write_manifest(out_dir: Path, video: nn.Module, source: dict[str, Any], fused_attention: bool) -> None:
    """export's manifest plus what the runtime must know about the concept graphs."""
    export.write_manifest(out_dir, video, source, fused_attention)
    path = out_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["concepts"] = {
        "text_encoder": TEXT_FILE,
        "exemplar_encoder": EXEMPLAR_FILE,
        "concept_decoder": CONCEPT_FILE,
        "text_length": TEXT_LENGTH,
        "box_only_text": "visual",  # what Sam3Processor prompts with when only exemplar boxes are given
    }
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")


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
    """`sam3 models export`: one folder for clicks and concepts. Returns a summary (seconds, errors)."""
    started = time.perf_counter()
    source = export.source_of(checkpoint, config, seed)
    log(f"building Sam3VideoModel ({source})")
    video = build_video_model(checkpoint=checkpoint, config=config, seed=seed)
    tracker = tracker_model(video)
    log(f"  {sum(p.numel() for p in video.parameters()) / 1e6:.1f} M parameters")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    seconds = export_graphs(video, tracker, out_dir, fused_attention=fused_attention)
    export.quantize_all(out_dir, quantizations, seconds)
    write_tokenizer(out_dir, checkpoint)
    image_size = int(video.config.detector_config.vision_config.backbone_config.image_size)
    export.write_preprocessor_config(out_dir, image_size)
    write_manifest(out_dir, video, source, fused_attention)
    return export.conclude(out_dir, seconds, validate(video, tracker, out_dir) if check else None, started)
