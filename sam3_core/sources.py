"""Where model folders come from: a local path, or a Hugging Face repo downloaded once and cached.

Published repos (onnx-community/sam3-tracker-ONNX) keep the graphs in an `onnx/` subfolder with
variants as suffixes (`vision_encoder_int8.onnx`, `..._q4.onnx`, `..._fp16.onnx`); only the files of the
requested variants are fetched. Without network the download fails within seconds, saying what to do.

Also what `sam3 models pull|list` need: copying a cached snapshot into a plain folder a container can
mount (`materialize`), and describing the model folders found locally or in the hub cache.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sam3_core import graphs
from sam3_core.model import ModelNotFoundError

DEFAULT_REPO = "onnx-community/sam3-tracker-ONNX"
DOWNLOAD_TIMEOUT_SECONDS = 10.0


def download_patterns(variant: str | None = None, decoder_variant: str | None = None) -> list[str]:
    """The repo files a model folder of these variants needs (glob patterns, relative to the repo root),
    with the split click decoder's graphs (and its mask-prompt graph) when the decoder is the float32 one
    (a repo holding our export has them; onnx-community's do not, and then nothing matches them)."""
    split = (decoder_variant or graphs.DEFAULT_VARIANT) == graphs.DEFAULT_VARIANT
    return [
        "preprocessor_config.json",
        "config.json",
        *graphs.download_patterns(graphs.ENCODER_STEM, variant),
        *graphs.download_patterns(graphs.DECODER_STEM, decoder_variant),
        *((*graphs.SPLIT_FILES, graphs.SPLIT_MASK_FILE) if split else ()),
    ]


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
    """A local model folder for `source`: the folder itself, or the cached snapshot of a hub repo.

    A path object (what `--model-dir` gives) is always a folder on this machine and never downloads, even
    when it reads like `owner/name`; a string that reads like a repo id and names no folder is a hub repo.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    text = str(source)
    if isinstance(source, os.PathLike) or not looks_like_repo_id(text) or path.exists():
        raise ModelNotFoundError(_missing_folder_message(path))
    return download(text, variant=variant, decoder_variant=decoder_variant, revision=revision, cache_dir=cache_dir)


def _missing_folder_message(path: Path) -> str:
    """What to do about a model folder that does not exist (and, if it reads like a repo id, how to fetch it)."""
    message = f"model folder {path} does not exist (--model-dir reads a folder on this machine; it never downloads)."
    if looks_like_repo_id(str(path)):
        return (
            f"{message} If you meant the Hugging Face repo {path}, pass --model {path}, or download it into a "
            f"folder first with `sam3 models pull --model {path} --dir DIR`."
        )
    return (
        f"{message} Pass --model-dir DIR (a folder in the onnx-community layout), --model OWNER/REPO (downloaded "
        "from the Hugging Face Hub), or create one offline with `sam3 models export --random-init --config tiny "
        "--out DIR`."
    )


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

    patterns = download_patterns(variant, decoder_variant)
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=None if cache_dir is None else Path(cache_dir),
            allow_patterns=patterns,
            etag_timeout=DOWNLOAD_TIMEOUT_SECONDS,
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelNotFoundError(
            f"cannot download {repo_id} from the Hugging Face Hub ({reason}). Without network access, use a "
            f"local model folder with --model-dir DIR, or create one with "
            f"`sam3 models export --random-init --config full --out DIR` (random weights: real cost, meaningless "
            f"masks)."
        ) from error
    return Path(folder)


# ---------------------------------------------------------------- model folders on disk

# Repos listed from the hub cache even before a graph file arrived (an interrupted pull).
_SAM_ONNX_REPO = re.compile(r"sam[-_.]?[23].*onnx|onnx.*sam[-_.]?[23]", re.IGNORECASE)


@dataclass(frozen=True)
class GraphFile:
    """One graph of a model folder: role, variant, path and size (the graph plus its external weights)."""

    role: str  # "encoder" or "decoder"
    variant: str  # "fp32" for the unsuffixed file
    path: Path
    size: int
    model_id: str | None = None  # encoders only, when asked for: the id that namespaces cached embeddings


@dataclass(frozen=True)
class ModelFolder:
    """A folder holding graphs in the onnx-community layout, and where it came from."""

    path: Path
    origin: str  # "local" or "hub cache"
    graphs: list[GraphFile] = field(default_factory=list)
    repo_id: str | None = None
    revision: str | None = None
    refs: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return sum(g.size for g in self.graphs)

    @property
    def usable(self) -> bool:
        """At least one encoder and one decoder graph: `--model-dir` can load it."""
        return {g.role for g in self.graphs} >= {"encoder", "decoder"}

    @property
    def concepts(self) -> bool:
        """Whether it serves concept prompts too (phrases, exemplar boxes), not only clicks and boxes."""
        return self.usable and not graphs.missing_concept_files(self.path)

    @property
    def tracking(self) -> bool:
        """Whether it tracks objects through videos too (`sam3 track`, video sessions)."""
        return self.usable and not graphs.missing_video_parts(self.path)


def graph_size(path: Path) -> int:
    """Bytes of a graph and its external-weights files."""
    return sum(p.stat().st_size for p in graphs.data_files(path))


def graph_files(folder: str | os.PathLike[str], *, with_ids: bool = True) -> list[GraphFile]:
    """The graphs in `folder` and its `onnx/` subfolder, encoders first, then by variant."""
    from sam3_core.model import Preprocessing, compute_model_id

    root = Path(folder)
    preprocessing = Preprocessing.from_folder(root) if with_ids else None
    found: list[GraphFile] = []
    for directory in (root, root / "onnx"):
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            parsed = graphs.parse_file_name(path.name)
            if parsed is None or not path.is_file():
                continue
            role, variant = parsed
            model_id = compute_model_id(path, preprocessing) if role == "encoder" and preprocessing else None
            found.append(GraphFile(role, variant, path, graph_size(path), model_id))
    return sorted(found, key=lambda g: (g.role != "encoder", g.variant != "fp32", g.variant))


def is_model_folder(folder: str | os.PathLike[str]) -> bool:
    directories = [d for d in (Path(folder), Path(folder) / "onnx") if d.is_dir()]
    return any(graphs.parse_file_name(p.name) for d in directories for p in d.iterdir())


def local_models(paths: list[str | os.PathLike[str]], *, with_ids: bool = True) -> list[ModelFolder]:
    """Each path that is a model folder, or else its immediate subfolders that are (a `models/` directory)."""
    folders: list[ModelFolder] = []
    for given in paths:
        path = Path(given).expanduser()
        if not path.is_dir():
            raise ModelNotFoundError(f"{path} is not a folder")
        candidates = [path] if is_model_folder(path) else [p for p in sorted(path.iterdir()) if p.is_dir()]
        folders += [
            ModelFolder(c, "local", graph_files(c, with_ids=with_ids)) for c in candidates if is_model_folder(c)
        ]
    return folders


def cached_models(cache_dir: str | os.PathLike[str] | None = None, *, with_ids: bool = True) -> list[ModelFolder]:
    """Snapshots in the Hugging Face hub cache that hold SAM2/SAM3 ONNX graphs (one entry per revision)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir(None if cache_dir is None else Path(cache_dir))
    except CacheNotFound:
        return []
    folders: list[ModelFolder] = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for revision in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
            graphs = graph_files(revision.snapshot_path, with_ids=with_ids)
            if graphs or _SAM_ONNX_REPO.search(repo.repo_id):
                folders.append(
                    ModelFolder(
                        Path(revision.snapshot_path),
                        "hub cache",
                        graphs,
                        repo_id=repo.repo_id,
                        revision=revision.commit_hash,
                        refs=tuple(sorted(revision.refs)),
                    )
                )
    return folders


def materialize(
    snapshot: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    patterns: list[str] | None = None,
    mode: str = "copy",
) -> list[Path]:
    """Copies (or links) the snapshot's files matching `patterns` into `target`, keeping the layout.

    mode "copy" gives a self-contained folder (what a container mounts), "hardlink" the same without
    using more disk (falls back to a copy across filesystems), "symlink" points into the hub cache
    (which must then stay where it is). Files already present with the same size are left alone.
    """
    if mode not in ("copy", "hardlink", "symlink"):
        raise ValueError(f"mode {mode!r}: use copy, hardlink or symlink")
    source, destination = Path(snapshot), Path(target)
    written: list[Path] = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source).as_posix()
        if not path.is_file() or (patterns and not any(fnmatch.fnmatch(relative, p) for p in patterns)):
            continue
        blob = path.resolve()
        out = destination / relative
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.is_symlink() or out.exists():
            same = out.resolve() == blob if mode == "symlink" else out.is_file() and not out.is_symlink()
            if same and out.stat().st_size == blob.stat().st_size:
                written.append(out)
                continue
            out.unlink()
        if mode == "symlink":
            out.symlink_to(blob)
        elif mode == "hardlink":
            try:
                os.link(blob, out)
            except OSError:
                shutil.copyfile(blob, out)
        else:
            shutil.copyfile(blob, out)
        written.append(out)
    if not written:
        raise ModelNotFoundError(f"no model files in {source} matched {patterns}")
    return written
