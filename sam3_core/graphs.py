"""The graph-file contract: file names, tensor names and weight files of a model folder.

A model folder in the onnx-community layout (onnx-community/sam3-tracker-ONNX) holds two graphs,
`vision_encoder[_variant].onnx` and `prompt_encoder_mask_decoder[_variant].onnx`, in the folder itself or
in its `onnx/` subfolder. What `sam3 models export` writes adds the split click decoder's graphs and, for
concept prompts, the concept graphs with the tokenizer (`CONCEPT_FILES`) and an encoder that also emits
the detector's features (`DETECTOR_OUTPUTS`); a video export adds the tracker's graphs (`VIDEO_FILES`). A
large graph keeps its weights beside it: `<name>.onnx_data` (onnx-community and our exporter) or
`<name>.onnx.data` (ONNX Runtime's quantizer). Export, quantization, downloads and model loading all
take these names from here (the exporter, sam3_export, too). docs/model-contract.md describes the tensors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ENCODER_STEM = "vision_encoder"
DECODER_STEM = "prompt_encoder_mask_decoder"
ROLES = {ENCODER_STEM: "encoder", DECODER_STEM: "decoder"}
DEFAULT_VARIANT = "fp32"  # the unsuffixed file

ENCODER_INPUT = "pixel_values"
EMBEDDING_NAMES = ("image_embeddings.0", "image_embeddings.1", "image_embeddings.2")
# Extra outputs of a unified encoder (our exports): the concept detector's FPN levels, from the same trunk run.
DETECTOR_OUTPUTS = ("detector_features.0", "detector_features.1", "detector_features.2")
DECODER_PROMPT_INPUTS = ("input_points", "input_labels", "input_boxes")
DECODER_OUTPUTS = ("iou_scores", "pred_masks", "object_score_logits")
# The decoder graphs' variable axes (export: torch.onnx's dynamic_axes): images and prompts in a call,
# points per prompt; the embeddings are always one image.
DECODER_DYNAMIC_AXES = {
    "input_points": {0: "batch", 1: "prompts", 2: "points"},
    "input_labels": {0: "batch", 1: "prompts", 2: "points"},
    "input_boxes": {0: "batch", 1: "boxes"},
    **{output: {0: "batch", 1: "prompts"} for output in DECODER_OUTPUTS},
}
MASKS_PER_OBJECT = 3  # candidate masks the decoder returns for every object
# The click decoder split in two (our exports; export_split_decoder explains): once per image, then per click.
SPLIT_IMAGE_FILE = "mask_decoder_image.onnx"
SPLIT_CLICK_FILE = "mask_decoder_click.onnx"
SPLIT_FILES = (SPLIT_IMAGE_FILE, SPLIT_CLICK_FILE)
SPLIT_IMAGE_OUTPUTS = ("image_tokens", "first_keys", "first_values", "first_image_queries", "high_res_1", "high_res_0")
# A mask prompt (the previous answer's low-res logits) changes the first four image-side tensors: this graph
# recomputes them for one object, the click graph then runs on them. Optional: older exports lack it.
SPLIT_MASK_FILE = "mask_decoder_mask_prompt.onnx"
SPLIT_MASK_INPUTS = ("input_masks", "image_tokens")
SPLIT_MASK_REPLACES = SPLIT_IMAGE_OUTPUTS[:4]  # the click graph's inputs it recomputes, in this order
SPLIT_MASK_OUTPUTS = tuple(f"mask_{name}" for name in SPLIT_MASK_REPLACES)

# The concept graphs of a unified export (docs/concepts.md): phrase -> text features, exemplar boxes -> prompt
# tokens, and the detector's decoder over the prompt tokens and the encoder's detector features.
TEXT_ENCODER_FILE = "text_encoder.onnx"
EXEMPLAR_ENCODER_FILE = "exemplar_encoder.onnx"
CONCEPT_DECODER_FILE = "concept_decoder.onnx"
TOKENIZER_FILE = "tokenizer.json"  # CLIP's, as transformers saves it (sam3_core.tokenizer reads it)
CONCEPT_FILES = (TEXT_ENCODER_FILE, EXEMPLAR_ENCODER_FILE, CONCEPT_DECODER_FILE, TOKENIZER_FILE)
TEXT_INPUTS = ("input_ids", "attention_mask")
TEXT_OUTPUT = "text_features"
EXEMPLAR_INPUTS = (DETECTOR_OUTPUTS[2], "boxes", "labels")
EXEMPLAR_OUTPUT = "exemplar_features"
CONCEPT_PROMPT_INPUTS = ("prompt_features", "prompt_mask")
CONCEPT_OUTPUTS = ("pred_logits", "pred_boxes", "pred_masks", "presence_logits")
# What Sam3Processor prompts the text encoder with when only exemplar boxes are given.
BOX_ONLY_TEXT = "visual"

# Encoder variants `sam3 models export --quantize` writes (sam3_export.quantize).
QUANTIZED_VARIANTS = ("int8", "q4")

# Suffixes of a graph's external-weights file: as published (and exported), and as ONNX Runtime's quantizer writes.
PUBLISHED_DATA_SUFFIX = "_data"
QUANTIZER_DATA_SUFFIX = ".data"
# Model folders, subfolder included.
_GRAPH_FILE = re.compile(rf"^({ENCODER_STEM}|{DECODER_STEM})(?:_(\w+))?\.onnx$")


def file_name(stem: str, variant: str | None = None) -> str:
    """`vision_encoder.onnx` for fp32 (or no variant), `vision_encoder_int8.onnx` for int8."""
    return f"{stem}_{variant}.onnx" if variant and variant != DEFAULT_VARIANT else f"{stem}.onnx"


def parse_file_name(name: str) -> tuple[str, str] | None:
    """`vision_encoder_q4.onnx` -> ("encoder", "q4"); None for files that are not graphs."""
    match = _GRAPH_FILE.match(name)
    return None if match is None else (ROLES[match.group(1)], match.group(2) or DEFAULT_VARIANT)


def variant_of(path: Path) -> str:
    """The variant a graph file name carries ("fp32" when unsuffixed)."""
    parsed = parse_file_name(path.name)
    return parsed[1] if parsed else DEFAULT_VARIANT


def download_patterns(stem: str, variant: str | None) -> list[str]:
    """Glob patterns (relative to a repo root) of one graph and its external weights, in either folder."""
    name = file_name(stem, variant)
    return [name, f"{name}{PUBLISHED_DATA_SUFFIX}*", f"onnx/{name}", f"onnx/{name}{PUBLISHED_DATA_SUFFIX}*"]


def data_files(path: Path) -> list[Path]:
    """The graph file and its external-weights files that exist (`<name>_data*`, `<name>.data`), in a fixed order."""
    escaped = re.sub(r"([*?\[])", r"[\1]", path.name)
    candidates = [path, *sorted(path.parent.glob(escaped + PUBLISHED_DATA_SUFFIX + "*"))]
    candidates.append(path.with_name(path.name + QUANTIZER_DATA_SUFFIX))
    return [p for p in dict.fromkeys(candidates) if p.is_file()]


# The video tracker's graphs (docs/video.md), beside the click and concept graphs of the same folder. Objects
# are the batch axis of each; memory and pointer counts are dynamic (the runtime groups objects that agree).
MEMORY_ATTENTION_FILE = "memory_attention.onnx"
MEMORY_ATTENTION_INPUTS = (EMBEDDING_NAMES[2], "memory_features", "memory_time", "object_pointers", "pointer_time")
MEMORY_ATTENTION_OUTPUT = "conditioned"
TRACKING_DECODER_FILE = "tracking_decoder.onnx"
TRACKING_DECODER_INPUTS = (
    MEMORY_ATTENTION_OUTPUT,
    EMBEDDING_NAMES[0],
    EMBEDDING_NAMES[1],
    "input_points",
    "input_labels",
    "mask_inputs",
    "use_mask_inputs",
    "object_present",
)
TRACKING_DECODER_OUTPUTS = ("masks", "iou_scores", "object_score_logits", "object_pointers")
MEMORY_ENCODER_FILE = "memory_encoder.onnx"
MEMORY_ENCODER_INPUTS = (EMBEDDING_NAMES[2], "mask_logits", "binarize", "object_score_logits")
MEMORY_ENCODER_OUTPUT = "memory_features"
MASK_PROMPT_FILE = "mask_prompt.onnx"
MASK_PROMPT_INPUTS = ("masks", EMBEDDING_NAMES[2])
MASK_PROMPT_OUTPUTS = ("mask_inputs", "frame_features")
VIDEO_FILES = (MEMORY_ATTENTION_FILE, TRACKING_DECODER_FILE, MEMORY_ENCODER_FILE, MASK_PROMPT_FILE)


def missing_video_parts(folder: Path) -> list[str]:
    """What video tracking needs that `folder` lacks (none: the folder tracks objects through videos): the
    manifest's "video" section, which says how to drive the graphs, and the graphs."""
    manifest = folder / "manifest.json"
    has_section = manifest.is_file() and "video" in json.loads(manifest.read_text())
    return ([] if has_section else ['manifest.json "video" section']) + [
        name for name in VIDEO_FILES if not (folder / name).is_file()
    ]


def missing_concept_files(folder: Path) -> list[str]:
    """The files concept prompts need that `folder` lacks (none: the folder serves concepts)."""
    return [name for name in CONCEPT_FILES if not (folder / name).is_file()]
