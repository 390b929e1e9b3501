"""The two JSON files beside the graphs: the image-processor settings and the manifest."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sam3_core import no_memory


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


def write_manifest(
    out_dir: Path, model: nn.Module, source: dict[str, Any], fused_attention: bool, extra: dict[str, Any]
) -> None:
    """Records how to rebuild the same weights, and the facts the runtime must know about the graphs
    (`extra`: what one kind of export adds, after the common keys).

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
        **extra,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
