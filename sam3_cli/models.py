"""`sam3 models pull|list|export`: getting model folders, seeing which ones are here, building new ones."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sam3_cli.errors import CliError
from sam3_core.graphs import QUANTIZED_VARIANTS

# sam3_core.sources.DEFAULT_REPO, repeated so that building the parser loads no ONNX Runtime (a test checks).
DEFAULT_REPO = "onnx-community/sam3-tracker-ONNX"


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def add_parser(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    from sam3_cli.options import HelpFormatter, option

    models = commands.add_parser(
        "models",
        parents=parents,
        help="download, list and export model folders",
        description="A model folder holds an image encoder (vision_encoder[_variant].onnx), a click decoder "
        "(prompt_encoder_mask_decoder[_variant].onnx) and preprocessor_config.json: what "
        f"{DEFAULT_REPO} publishes (clicks and boxes). `sam3 models export` adds the split click decoder "
        "(mask_decoder_*.onnx) and, unless --tracker-only, what concept prompts need: text_encoder.onnx, "
        "exemplar_encoder.onnx, concept_decoder.onnx, tokenizer.json and an encoder that also emits the "
        "detector's features; and what video tracking (`sam3 track`, video sessions) needs: memory_attention.onnx, "
        "tracking_decoder.onnx, memory_encoder.onnx, mask_prompt.onnx. `sam3 models list` "
        "says which folders serve concepts and which track videos. Every command that loads "
        "a model takes --model-dir DIR (a folder here) or --model REPO (downloaded).",
    )
    actions = models.add_subparsers(title="model commands", metavar="ACTION", required=True)

    pull = actions.add_parser(
        "pull",
        parents=parents,
        help="download a model from the Hugging Face Hub (cached), optionally into a plain folder",
        description="Download the files of one variant from the Hugging Face Hub into its cache (a second "
        "pull is instant), or with --dir also lay them out in a plain folder that a container can mount and "
        "pass to --model-dir. Without network access this fails within seconds and says what to do instead.",
        formatter_class=HelpFormatter,
        epilog="examples:\n  sam3 models pull\n  sam3 models pull --variant int8 --dir models/sam3-int8\n"
        "  sam3 serve --model-dir models/sam3-int8 --variant int8",
    )
    # The same variables as the workers' --model/--variant: an init container pulls what the worker loads.
    option(pull, "--model", default=DEFAULT_REPO, metavar="REPO", help="Hugging Face repo id")
    option(pull, "--variant", help="encoder variant: fp32 (default), fp16, int8, q4, ...")
    pull.add_argument("--decoder-variant", help="decoder variant (default fp32)")
    pull.add_argument("--revision", help="branch, tag or commit (default main)")
    pull.add_argument("--dir", type=Path, metavar="DIR", help="also materialise the model folder at DIR")
    pull.add_argument(
        "--link",
        choices=("copy", "hardlink", "symlink"),
        default="copy",
        help="how --dir gets the files from the cache: copy (default; self-contained), hardlink (no extra "
        "disk, same filesystem), symlink (into the cache, which must stay mounted)",
    )
    pull.add_argument("--cache-dir", type=Path, help="Hugging Face cache (default $HF_HUB_CACHE or ~/.cache/...)")
    pull.set_defaults(handler=run_pull)

    listing = actions.add_parser(
        "list",
        parents=parents,
        help="show the model folders available here (Hugging Face cache and --dir folders)",
        description="List SAM2/SAM3 ONNX model folders in the Hugging Face cache and in the given --dir paths "
        "(a model folder itself, or a folder of model folders): their graph variants, sizes, the model id "
        "each encoder variant stores embeddings under, whether the folder serves concept prompts or "
        "clicks and boxes only, and whether it tracks objects through videos (`sam3 track`).",
    )
    listing.add_argument(
        "--dir", type=Path, action="append", default=[], metavar="DIR", help="local folder to look in (repeatable)"
    )
    listing.add_argument("--cache-dir", type=Path, help="Hugging Face cache (default $HF_HUB_CACHE or ~/.cache/...)")
    listing.add_argument("--no-cache", action="store_true", help="skip the Hugging Face cache")
    listing.add_argument(
        "--no-ids", action="store_true", help="skip the model ids (they hash each encoder file: ~1 s per GB)"
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of text")
    listing.set_defaults(handler=run_list)

    export = actions.add_parser(
        "export",
        parents=parents,
        help="build SAM3 with transformers and write ONNX graphs (needs the `export` extra)",
        description=EXPORT_DESCRIPTION,
    )
    add_export_arguments(export)


EXPORT_DESCRIPTION = (
    "Write a model folder in the onnx-community layout from a transformers checkpoint, or from random "
    "weights (real shapes and cost, meaningless masks) when no weights can be downloaded. Needs torch and "
    "transformers: pip install 'sam3-service[export]'."
)


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder (replaced if it exists)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint",
        type=Path,
        help="local save_pretrained folder of a Sam3VideoModel (facebook/sam3 layout, with its tokenizer files) "
        "or, with --tracker-only, of a Sam3TrackerModel",
    )
    source.add_argument("--random-init", action="store_true", help="random variance-preserving weights")
    parser.add_argument(
        "--config",
        choices=("tiny", "full"),
        default="full",
        help="size for --random-init: full (the default: the real architecture, minutes and ~12 GB of RAM) "
        "or tiny (seconds; real input and output shapes, for tests)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    parser.add_argument(
        "--quantize",
        action="append",
        choices=QUANTIZED_VARIANTS,
        default=[],
        help="also write vision_encoder_<kind>.onnx (repeatable)",
    )
    parser.add_argument("--validate", action="store_true", help="compare torch and ONNX Runtime on random inputs")
    parser.add_argument(
        "--tracker-only",
        action="store_true",
        help="clicks and boxes only (Sam3TrackerModel: the two graphs of onnx-community/sam3-tracker-ONNX); by "
        "default the folder serves concept prompts too, from the same encode",
    )
    parser.add_argument(
        "--attention",
        choices=("fused", "plain"),
        default="fused",
        help="encoder attention: fused = ONNX Runtime's MultiHeadAttention (no 5184x5184 matrices: a fraction "
        "of the memory), plain = standard ONNX ops for other runtimes",
    )
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    try:
        from sam3_export import concept, pipeline, tracker
    except ImportError as error:
        raise CliError(
            f"sam3 models export needs torch and transformers ({error.name} is missing): "
            "pip install 'sam3-service[export]'"
        ) from error
    pipeline.run(
        tracker.TrackerExport if args.tracker_only else concept.ConceptExport,
        out_dir=args.out,
        checkpoint=args.checkpoint,
        config=args.config,
        seed=args.seed,
        quantizations=args.quantize,
        check=args.validate,
        fused_attention=args.attention == "fused",
    )
    print(f"Model folder written to {args.out}; use it with: sam3 serve --model-dir {args.out}")
    return 0


def run_pull(args: argparse.Namespace) -> int:
    from sam3_core.sources import ModelFolder, download, download_patterns, graph_files, materialize

    print(f"Fetching {args.model} (encoder {args.variant or 'fp32'}, decoder {args.decoder_variant or 'fp32'})")
    snapshot = download(
        args.model,
        variant=args.variant,
        decoder_variant=args.decoder_variant,
        revision=args.revision,
        cache_dir=args.cache_dir,
    )
    folder = snapshot
    if args.dir:
        patterns = download_patterns(args.variant, args.decoder_variant)
        written = materialize(snapshot, args.dir, patterns=patterns, mode=args.link)
        verb = {"copy": "Copied", "hardlink": "Linked", "symlink": "Symlinked"}[args.link]
        print(f"{verb} {len(written)} files from {snapshot} into {args.dir}")
        folder = args.dir
    wanted = {("encoder", args.variant or "fp32"), ("decoder", args.decoder_variant or "fp32")}
    graphs = [g for g in graph_files(folder) if (g.role, g.variant) in wanted]
    _print_folder(ModelFolder(Path(folder), "hub cache" if folder == snapshot else "local", graphs, args.model))
    variant = f" --variant {args.variant}" if args.variant and args.variant != "fp32" else ""
    print(f"Use it with: sam3 serve --model-dir {folder}{variant}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from huggingface_hub import constants

    from sam3_core.sources import cached_models, local_models

    with_ids = not args.no_ids
    folders = [] if args.no_cache else cached_models(args.cache_dir, with_ids=with_ids)
    folders += local_models(args.dir, with_ids=with_ids)
    if args.json:
        print(json.dumps([_as_json(f) for f in folders], indent=2))
        return 0
    if not folders:
        where = [str(p) for p in args.dir]
        if not args.no_cache:
            where.insert(0, f"the Hugging Face cache ({args.cache_dir or constants.HF_HUB_CACHE})")
        print(
            f"No model folders in {' or '.join(where)}. Download one with `sam3 models pull`, or create one "
            "offline with `sam3 models export --random-init --config tiny --out DIR`.",
            file=sys.stderr,
        )
        return 0
    for folder in folders:
        _print_folder(folder)
    return 0


def _print_folder(folder: Any) -> None:
    if folder.origin == "hub cache" and folder.revision:
        refs = f" ({', '.join(folder.refs)})" if folder.refs else ""
        print(f"{folder.repo_id} @ {folder.revision[:10]}{refs}  [hub cache, {human_size(folder.size)}]")
    else:
        print(f"{folder.path}  [{folder.origin} folder, {human_size(folder.size)}]")
    print(f"  path: {folder.path}")
    if folder.usable:
        print(f"  serves: {'clicks, boxes and concepts' if folder.concepts else 'clicks and boxes (no concepts)'}")
        print(f"  video tracking: {'yes' if folder.tracking else 'no (no video graphs)'}")
    if not folder.graphs:
        print("  (no graph files yet: an interrupted download? run `sam3 models pull` again)")
    for graph in folder.graphs:
        model_id = f"  model id {graph.model_id}" if graph.model_id else ""
        print(f"  {graph.role:8s} {graph.variant:8s} {human_size(graph.size):>9s}{model_id}")
    if folder.graphs and not folder.usable:
        print("  (incomplete: an encoder and a decoder graph are both needed)")


def _as_json(folder: Any) -> dict[str, Any]:
    return {
        "path": str(folder.path),
        "origin": folder.origin,
        "repo_id": folder.repo_id,
        "revision": folder.revision,
        "refs": list(folder.refs),
        "size": folder.size,
        "usable": folder.usable,
        "concepts": folder.concepts,
        "tracking": folder.tracking,
        "graphs": [
            {"role": g.role, "variant": g.variant, "file": str(g.path), "size": g.size, "model_id": g.model_id}
            for g in folder.graphs
        ],
    }
