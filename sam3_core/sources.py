"""Where model folders come from: a local path, or a Hugging Face repo downloaded once and cached.

Published repos (onnx-community/sam3-tracker-ONNX) keep the graphs in an `onnx/` subfolder with
variants as suffixes (`vision_encoder_int8.onnx`, `..._q4.onnx`, `..._fp16.onnx`); only the files of the
requested variants are fetched. Without network the download fails within seconds, saying what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

from sam3_core.model import ModelNotFoundError

DEFAULT_REPO = "onnx-community/sam3-tracker-ONNX"
DOWNLOAD_TIMEOUT_SECONDS = 10.0


def _graph_patterns(stem: str, variant: str | None) -> list[str]:
    name = f"{stem}_{variant}.onnx" if variant and variant != "fp32" else f"{stem}.onnx"
    return [name, f"{name}_data*", f"onnx/{name}", f"onnx/{name}_data*"]


def looks_like_repo_id(source: str) -> bool:
    """'owner/name' with no filesystem hints: a Hugging Face repo id rather than a relative path."""
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "~", "/"))


def resolve_model_dir(
    source: str | os.PathLike[str] = DEFAULT_REPO,
    *,
    variant: str | None = None,
    decoder_variant: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """A local model folder for `source`: the folder itself, or the cached snapshot of a hub repo."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    text = str(source)
    if not looks_like_repo_id(text) or path.exists():
        raise ModelNotFoundError(
            f"model folder {text} does not exist. Pass --model-dir DIR (a folder in the onnx-community layout), "
            f"--model OWNER/REPO (downloaded from the Hugging Face Hub), or create one offline with "
            f"`sam3 export --random-init --config tiny --out DIR`."
        )
    return download(text, variant=variant, decoder_variant=decoder_variant, revision=revision, cache_dir=cache_dir)


def download(
    repo_id: str,
    *,
    variant: str | None = None,
    decoder_variant: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Fetches just the files of the chosen variants (cached; a progress bar while downloading)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = [
        "preprocessor_config.json",
        "config.json",
        *_graph_patterns("vision_encoder", variant),
        *_graph_patterns("prompt_encoder_mask_decoder", decoder_variant),
    ]
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=patterns,
            etag_timeout=DOWNLOAD_TIMEOUT_SECONDS,
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelNotFoundError(
            f"cannot download {repo_id} from the Hugging Face Hub ({reason}). Without network access, use a "
            f"local model folder with --model-dir DIR, or create one with "
            f"`sam3 export --random-init --config full --out DIR` (random weights: real cost, meaningless masks)."
        ) from error
    return Path(folder)
