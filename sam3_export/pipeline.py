"""`sam3 models export`: one pipeline for every kind of model folder.

Build the model, trace the vision encoder, trace the prompt graphs on its outputs, quantize the encoder,
write the folder's other files and manifest, optionally validate against torch. What differs between
kinds (the tracker-only folder, the clicks-and-concepts folder) is an `ExportTarget`.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from sam3_core.graphs import ENCODER_STEM, file_name
from sam3_export.folder_files import write_manifest, write_preprocessor_config
from sam3_export.progress import log
from sam3_export.quantize import quantize
from sam3_export.tracing import trace_encoder
from sam3_export.tracker_graphs import GraphInputs, example_inputs
from sam3_export.weights import source_of


class ExportTarget(Protocol):
    """One kind of model folder: the built model and what the pipeline asks of it."""

    architecture: ClassVar[str]  # the transformers class being built, for the log
    model: nn.Module  # whose parameters and config the manifest records

    @classmethod
    def build(cls, *, checkpoint: Path | None, config: str, seed: int) -> ExportTarget: ...

    @property
    def backbone_config(self) -> Any:
        """The ViT's config: image size and attention heads."""

    def encoder_graph(self) -> tuple[nn.Module, list[str]]:
        """The vision encoder as a torch module, and its output names."""

    def export_prompt_graphs(
        self, out_dir: Path, inputs: GraphInputs, encoded: tuple[torch.Tensor, ...]
    ) -> dict[str, float]:
        """Traces every graph after the encoder on its example outputs; seconds per graph."""

    def write_extra_files(self, out_dir: Path) -> None:
        """Files beyond the graphs, the preprocessor config and the manifest."""

    def manifest_extra(self) -> dict[str, Any]:
        """What this kind adds to the manifest."""

    def validate(self, out_dir: Path) -> dict[str, float]:
        """torch vs ONNX Runtime on fresh inputs: the max |difference| per output."""


def run(
    kind: type[ExportTarget],
    *,
    out_dir: Path,
    checkpoint: Path | None,
    config: str,
    seed: int,
    quantizations: list[str],
    check: bool,
    fused_attention: bool = True,
) -> dict[str, Any]:
    """Build, export, optionally quantize and validate. Returns a summary (seconds, errors)."""
    started = time.perf_counter()
    source = source_of(checkpoint, config, seed)
    log(f"building {kind.architecture} ({source})")
    target = kind.build(checkpoint=checkpoint, config=config, seed=seed)
    image_size = int(target.backbone_config.image_size)
    parameters = sum(p.numel() for p in target.model.parameters())
    log(f"  {parameters / 1e6:.1f} M parameters, input {image_size}x{image_size}")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    seconds = export_graphs(target, out_dir, image_size, fused_attention=fused_attention)
    quantize_all(out_dir, quantizations, seconds)
    target.write_extra_files(out_dir)
    write_preprocessor_config(out_dir, image_size)
    write_manifest(out_dir, target.model, source, fused_attention, target.manifest_extra())
    return conclude(out_dir, seconds, target.validate(out_dir) if check else None, started)


def export_graphs(target: ExportTarget, out_dir: Path, image_size: int, *, fused_attention: bool) -> dict[str, float]:
    """Traces the encoder, then the prompt graphs on its outputs for one example image; seconds per graph."""
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = example_inputs(image_size, seed=0)
    started = time.perf_counter()
    encoder, outputs = target.encoder_graph()
    path = out_dir / file_name(ENCODER_STEM)
    trace_encoder(encoder, inputs.pixel_values, path, outputs, target.backbone_config, fused_attention)
    seconds = {"vision_encoder": time.perf_counter() - started}
    log(f"  {path.name} written in {seconds['vision_encoder']:.1f} s")
    with torch.no_grad():
        encoded = encoder(inputs.pixel_values)
    seconds.update(target.export_prompt_graphs(out_dir, inputs, encoded))
    return seconds


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
