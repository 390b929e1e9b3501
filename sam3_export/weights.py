"""Where an export's weights come from: a transformers checkpoint folder, or variance-preserving random init.

Two architectures: `Sam3TrackerModel` (clicks and boxes: the onnx-community graphs) and `Sam3VideoModel`
(the facebook/sam3 checkpoint: one ViT trunk shared by the concept detector and the tracker). Every load
is strict: a weight that would stay random is an error, never a silently wrong model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sam3_export.configs import TRACKER_CONFIGS, VIDEO_CONFIGS
from sam3_export.progress import log


class CheckpointError(ValueError):
    """A checkpoint folder that would not fill every tracker weight; the message says what is wrong."""


def source_of(checkpoint: Path | None, config: str, seed: int) -> dict[str, Any]:
    """What the manifest records about where the weights came from (enough to rebuild them)."""
    return {"checkpoint": str(checkpoint)} if checkpoint else {"random_init": True, "config": config, "seed": seed}


def build_tracker(*, checkpoint: Path | None, config: str, seed: int) -> nn.Module:
    """Loads a checkpoint folder, or builds the named config with variance-preserving random weights."""
    from transformers import Sam3TrackerConfig, Sam3TrackerModel

    if checkpoint is not None:
        model = load_checkpoint(checkpoint)
    else:
        torch.manual_seed(seed)
        model = Sam3TrackerModel(Sam3TrackerConfig(**TRACKER_CONFIGS[config]))
        reinitialise(model, seed)
    return model.eval()


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


def _tracker_config(video_config: Any) -> Any:
    """The Sam3TrackerConfig of a video model's tracker: the detector's vision config (shared trunk)."""
    from transformers import Sam3TrackerConfig

    return Sam3TrackerConfig(
        vision_config=video_config.detector_config.vision_config.to_dict(),
        prompt_encoder_config=video_config.tracker_config.prompt_encoder_config.to_dict(),
        mask_decoder_config=video_config.tracker_config.mask_decoder_config.to_dict(),
    )


def _tracker_from_video_checkpoint(folder: Path) -> nn.Module:
    from safetensors.torch import load_file
    from transformers import Sam3TrackerModel, Sam3TrackerVideoModel, Sam3VideoConfig

    video_config = Sam3VideoConfig.from_pretrained(folder)
    config = _tracker_config(video_config)
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


def tracker_of(video: nn.Module) -> nn.Module:
    """A built video model's tracker as a `Sam3TrackerModel`, every weight mapped explicitly (strict load).

    `Sam3TrackerModel.from_pretrained` on a video checkpoint silently leaves the mask decoder random; the
    mapping that holds: trunk = the detector's backbone, neck = `tracker_neck`, the rest = `tracker_model`.
    """
    from transformers import Sam3TrackerModel

    tracker = Sam3TrackerModel(_tracker_config(video.config))
    source = video.state_dict()

    def source_key(key: str) -> str:
        if key.startswith("vision_encoder.backbone."):
            return "detector_model." + key
        if key.startswith("vision_encoder.neck."):
            return "tracker_neck." + key.removeprefix("vision_encoder.neck.")
        return "tracker_model." + key

    tracker.load_state_dict({key: source[source_key(key)] for key in tracker.state_dict()}, strict=True)
    return tracker.eval()


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
