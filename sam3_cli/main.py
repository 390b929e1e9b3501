"""The `sam3` command: one entry point for trying, serving, pre-warming and managing SAM3 models.

Each subcommand is a small function; the heavy imports (onnxruntime, torch, huggingface_hub) happen
inside them, so `sam3 --help` and `sam3 health` are instant. Errors are one readable line (what
happened, what to do) and exit code 1; `--debug` adds the traceback. Usage errors exit with 2.
Longer commands live in their own modules beside this one.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam3_cli import concepts, encode, health, models
from sam3_cli.errors import CliError, explain, first_unreachable, targets_of
from sam3_cli.options import HelpFormatter, add_connection_options, add_model_options, model_source, option

__all__ = ["CliError", "build_parser", "main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
_COORDINATE_FLAGS = ("--point", "--bg-point", "--box", "--exemplar", "--neg-exemplar")
_NUMBER_LIST = re.compile(r"^-?\d")
MASK_FORMATS = ("png", "rle")
EXAMPLES = """\
examples:
  sam3 segment -i photo.jpg --point 500,375 --model-dir models/sam3        # in-process, no server
  sam3 serve --model-dir models/sam3 --port 50051                          # encoder + decoder + Redis
  sam3 segment -i photo.jpg --point 500,375 --server localhost:50051 --overlay preview.png
  sam3 encode photos/ --server localhost:50051                             # pre-warm a folder
  sam3 models pull --variant int8 --dir models/sam3-int8                   # download (needs network)
  sam3 models export --random-init --config tiny --out models/tiny         # build one offline
  sam3 health --target localhost:50051                                     # exit 0 when SERVING

Every option that configures a worker can also be set as a SAM3_* environment variable (see each
command's --help). Add --debug to any command to see the traceback of an error.
"""


def parse_numbers(text: str, count: int, flag: str) -> tuple[float, ...]:
    """'X,Y' or 'X1,Y1,X2,Y2' -> floats, with an error that names the flag."""
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count:
        shape = "X,Y" if count == 2 else "X1,Y1,X2,Y2"
        raise CliError(f"{flag} {text!r}: expected {count} comma-separated numbers ({shape})")
    return values


def join_negative_coordinates(argv: Sequence[str]) -> list[str]:
    """Lets `--point -5,3` through: argparse would read '-5,3' as an option, `--point=-5,3` it accepts."""
    joined: list[str] = []
    arguments = iter(argv)
    for argument in arguments:
        if argument in _COORDINATE_FLAGS:
            value = next(arguments, None)
            if value is not None and _NUMBER_LIST.match(value):
                joined.append(f"{argument}={value}")
                continue
            joined.append(argument)
            if value is not None:
                joined.append(value)
        else:
            joined.append(argument)
    return joined


# ---------------------------------------------------------------- segment


def _add_segment(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "segment",
        parents=parents,
        help="segment one object (clicks, box) or every instance of a concept (--text, --exemplar)",
        description="Segment one object from clicks and/or a box, in this process (--model-dir / --model) or "
        "through a running service (--server). Coordinates are pixels of the image as displayed (after EXIF "
        "rotation): x in 0..width, y in 0..height; values outside are rejected with the offending flag named. "
        "Prints the IoU score of the three candidate masks and the object presence probability, and writes the "
        "chosen mask at the image's size: a binary 0/255 PNG, or COCO RLE JSON with --format rle. With --text "
        "and/or --exemplar (in-process, on a folder exported by `sam3 models export`) it finds every instance of "
        "the concept and writes one label PNG: pixel value k = instance k, 0 = background (overlaps go to the "
        "higher score); --json lists each instance's score, box, area and phrase, --overlay colours them.",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
        "  sam3 segment -i photo.jpg --point 500,375 --model-dir models/sam3\n"
        "  sam3 segment -i photo.jpg --point 500,375 --bg-point 620,400 --box 400,300,700,500 \\\n"
        "      --server localhost:50051 --overlay preview.jpg --json scores.json\n"
        "  sam3 segment -i photo.jpg --box 10,20,300,400 --mask-index 2 --format rle -o mask.json\n"
        "  sam3 segment -i photo.jpg --text 'yellow school bus' --text car --model-dir models/sam3 \\\n"
        "      --threshold 0.4 -o instances.png --overlay preview.jpg --json instances.json",
    )
    prompts = parser.add_argument_group("image and prompts")
    prompts.add_argument("--image", "-i", required=True, type=Path, help="image file (JPEG, PNG, WebP, ...)")
    prompts.add_argument(
        "--point",
        action="append",
        default=[],
        metavar="X,Y",
        help="foreground click (repeatable); negative values need --point=-5,3 or --point -5,3",
    )
    prompts.add_argument(
        "--bg-point", action="append", default=[], metavar="X,Y", help="background click: 'not this' (repeatable)"
    )
    prompts.add_argument("--box", metavar="X1,Y1,X2,Y2", help="box around the object")
    concepts.add_concept_arguments(parser)
    outputs = parser.add_argument_group("output")
    choice = outputs.add_mutually_exclusive_group()
    choice.add_argument("--mask-index", type=int, choices=(0, 1, 2), help="write candidate mask N")
    choice.add_argument(
        "--best-mask", action="store_true", help="write the mask with the highest IoU score (the default)"
    )
    outputs.add_argument(
        "--output", "-o", type=Path, help="mask file (default mask.png, or mask.json with --format rle)"
    )
    outputs.add_argument(
        "--format",
        choices=MASK_FORMATS,
        help="mask file format: png (binary 0/255 greyscale, the default) or rle (COCO RLE JSON "
        '{"size": [h, w], "counts": [...]}, as pycocotools reads it); default: rle when --output ends in .json',
    )
    outputs.add_argument("--json", type=Path, metavar="PATH", help="also write scores and details as JSON")
    outputs.add_argument(
        "--overlay",
        type=Path,
        metavar="PATH",
        help="also write the image with the mask tinted and the prompts drawn (green: foreground, red: "
        "background, box as a rectangle); .png or .jpg",
    )
    add_model_options(parser)
    remote = parser.add_argument_group("service (instead of in-process)")
    option(remote, "--server", metavar="HOST:PORT", help="a `sam3 serve` (or anything serving both services)")
    option(remote, "--encoder-server", metavar="HOST:PORT", help="encoder service of a split deployment")
    option(remote, "--decoder-server", metavar="HOST:PORT", help="decoder service of a split deployment")
    add_connection_options(remote)
    remote.add_argument(
        "--timeout", type=float, help="seconds the whole call may take, an encode included (default: the SDK's)"
    )
    parser.set_defaults(handler=run_segment)


def load_model(args: argparse.Namespace) -> Any:
    """Sam3Model for --model-dir / --model, with the runtime options of the flags."""
    from sam3_core.model import RuntimeOptions, Sam3Model
    from sam3_core.sources import resolve_model_dir

    folder = resolve_model_dir(model_source(args), variant=args.variant)
    runtime = RuntimeOptions(providers=tuple(args.provider) if args.provider else "auto", intra_op_threads=args.threads)
    return Sam3Model(folder, variant=args.variant, runtime=runtime)


def _prompt_from_flags(args: argparse.Namespace) -> tuple[Any, Callable[[str], str]]:
    """The Prompt the flags describe, and a function that maps a core field name back to a flag."""
    from sam3_core.prompts import BACKGROUND, FOREGROUND, Prompt

    foreground = [parse_numbers(p, 2, "--point") for p in args.point]
    background = [parse_numbers(p, 2, "--bg-point") for p in args.bg_point]
    box = parse_numbers(args.box, 4, "--box") if args.box else None
    if not foreground and not background and box is None:
        raise CliError("give at least one --point, --bg-point or --box")
    flags = [f"--point {args.point[i]}" for i in range(len(foreground))]
    flags += [f"--bg-point {args.bg_point[i]}" for i in range(len(background))]
    prompt = Prompt.of([*foreground, *background], [FOREGROUND] * len(foreground) + [BACKGROUND] * len(background), box)

    def flag_for(field: str) -> str:
        match = re.search(r"points\[(\d+)\]", field)
        if match and int(match.group(1)) < len(flags):
            return flags[int(match.group(1))]
        return f"--box {args.box}" if ".box" in field else field

    return prompt, flag_for


def _output_settings(args: argparse.Namespace) -> tuple[Path, str]:
    """(mask path, "png" | "rle"): --format wins, else the extension of --output, else PNG."""
    kind = args.format or ("rle" if args.output is not None and args.output.suffix.lower() == ".json" else "png")
    return args.output or Path("mask.json" if kind == "rle" else "mask.png"), kind


def print_scores(iou_scores: Sequence[float], presence: float, chosen: int) -> None:
    """The proof of concept's score block, which scripts may already parse."""
    print("Segmentation scores:")
    for index, score in enumerate(iou_scores):
        print(f"  Mask {index}: IoU = {score:.4f}")
    print(f"  Object presence probability: {presence:.4f}")
    print(f"Selected mask: {chosen}")


@dataclass(frozen=True)
class Segmentation:
    """What either mode returns: the chosen mask, all IoU scores, presence, and where it came from."""

    mask: Any  # bool H x W
    iou_scores: list[float]
    presence: float
    chosen: int
    best_index: int
    model_id: str
    mode: str  # "in-process" or "server"
    timings: str


def mask_rle_json(mask: Any) -> dict[str, Any]:
    """COCO RLE with uncompressed counts: pycocotools.mask.frPyObjects(rle, h, w) decodes it."""
    from sam3_core.masks import to_coco_rle

    rle = to_coco_rle(mask)
    return {"size": list(rle.size), "counts": rle.counts}


def write_outputs(args: argparse.Namespace, rgb: Any, prompt: Any, segmentation: Segmentation) -> None:
    from sam3_core.masks import bounding_box, to_png

    mask = segmentation.mask
    height, width = mask.shape
    output, kind = _output_settings(args)
    if kind == "rle":
        output.write_text(json.dumps(mask_rle_json(mask)) + "\n")
    else:
        output.write_bytes(to_png(mask))
    area = int(mask.sum())
    print(f"Mask written to {output} ({width}x{height} {kind.upper()}, {area} foreground pixels)")
    foreground = [list(p) for p, label in zip(prompt.points, prompt.labels, strict=True) if label == 1]
    background = [list(p) for p, label in zip(prompt.points, prompt.labels, strict=True) if label == 0]
    if args.overlay:
        from sam3_cli.overlay import render_overlay, write_overlay

        write_overlay(args.overlay, render_overlay(rgb, mask, foreground, background, prompt.box))
        print(f"Overlay written to {args.overlay}")
    if args.json:
        summary = {
            "image": str(args.image),
            "width": width,
            "height": height,
            "mode": segmentation.mode,
            "model_id": segmentation.model_id,
            "iou_scores": [float(s) for s in segmentation.iou_scores],
            "presence": float(segmentation.presence),
            "best_index": segmentation.best_index,
            "mask_index": segmentation.chosen,
            "area": area,
            "bbox": list(bounding_box(mask)),
            "output": str(output),
            "format": kind,
            "overlay": str(args.overlay) if args.overlay else None,
            "points": foreground,
            "bg_points": background,
            "box": list(prompt.box) if prompt.box is not None else None,
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


def run_segment(args: argparse.Namespace) -> int:
    from sam3_core.images import load_image
    from sam3_core.prompts import PromptError, validate

    if concepts.requested(args):
        return concepts.run(args, load_model, parse_numbers)
    prompt, flag_for = _prompt_from_flags(args)
    if args.overlay:
        from sam3_cli.overlay import overlay_format

        overlay_format(args.overlay)  # a wrong extension should not cost an encode
    rgb = load_image(args.image)
    try:  # before any model or server work: a typo in a flag should not cost an encode
        validate([prompt], rgb.shape[:2])
    except PromptError as error:
        raise CliError(f"{flag_for(error.field)}: {str(error).split(': ', 1)[1]}") from error
    remote = args.server or args.encoder_server or args.decoder_server
    started = time.perf_counter()
    segmentation = _segment_remote(args, prompt, flag_for) if remote else _segment_in_process(args, prompt)
    print_scores(segmentation.iou_scores, segmentation.presence, segmentation.chosen)
    write_outputs(args, rgb, prompt, segmentation)
    print(f"Time: {segmentation.timings}, total {time.perf_counter() - started:.2f} s", file=sys.stderr)
    return EXIT_OK


def _segment_in_process(args: argparse.Namespace, prompt: Any) -> Segmentation:
    from sam3_core.predictor import Predictor

    started = time.perf_counter()
    model = load_model(args)
    predictor = Predictor(model)
    loaded = time.perf_counter()
    predictor.set_image(args.image)
    encoded = time.perf_counter()
    (prediction,) = predictor.predict_objects([prompt])
    decoded = time.perf_counter()
    chosen = prediction.best_index if args.mask_index is None else args.mask_index
    mask = prediction.mask(chosen)
    timings = (
        f"model load {loaded - started:.2f} s, encoder {1000 * (encoded - loaded):.0f} ms, "
        f"decoder {1000 * (decoded - encoded):.1f} ms, mask {1000 * (time.perf_counter() - decoded):.1f} ms"
    )
    scores = [float(s) for s in prediction.iou_scores]
    return Segmentation(
        mask, scores, prediction.presence, chosen, prediction.best_index, model.model_id, "in-process", timings
    )


def _segment_remote(args: argparse.Namespace, prompt: Any, flag_for: Callable[[str], str]) -> Segmentation:
    import grpc

    from sam3_cli.options import channel_settings, tls_root
    from sam3_client import Client, ObjectPrompt, Sam3Error

    # Interactive: 3 attempts (~0.6 s of backoff) rather than the SDK's 5 (~3 s) before "cannot reach".
    settings = channel_settings(args, retry_attempts=3)
    targets = targets_of(args.server, args.encoder_server, args.decoder_server)
    if not args.server and not (args.encoder_server and args.decoder_server):
        raise CliError("give --server HOST:PORT, or both --encoder-server and --decoder-server")
    with Client(
        args.server, encoder_target=args.encoder_server, decoder_target=args.decoder_server, settings=settings
    ) as client:
        try:
            result = client.segment_objects(
                args.image.read_bytes(),
                [ObjectPrompt(prompt.points, prompt.labels, prompt.box)],
                mask="best" if args.mask_index is None else args.mask_index,
                mask_format="rle",
                timeout=args.timeout,
            )
        except Sam3Error as error:
            target = targets[0]
            if error.code == grpc.StatusCode.UNAVAILABLE and len(targets) > 1:
                target = first_unreachable(targets, tls=args.tls, root_certificates=tls_root(args)) or target
            raise CliError(explain(error, target, flag_for=flag_for, timeout=args.timeout)) from error
    (obj,) = result.objects
    encoded = "" if result.encoded is None else f"encode {result.encoded.timings.get('total', 0):.0f} ms, "
    timings = encoded + f"segment server-side {result.timings.get('total', 0):.1f} ms"
    return Segmentation(
        obj.mask,
        list(obj.iou_scores),
        obj.presence,
        obj.masks[0].index,
        obj.best_index,
        result.model_id,
        "server",
        timings,
    )


# ---------------------------------------------------------------- workers


def _add_workers(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    from sam3_cli.workers import DECODER, ENCODER, add_worker_options, main_for

    workers = {
        "serve": ({ENCODER, DECODER}, True, "both services on one port; embedded Redis unless --redis-url"),
        "encoder": ({ENCODER}, False, "the encoder worker: images -> embeddings in Redis"),
        "decoder": ({DECODER}, False, "the decoder worker: prompts -> masks, from embeddings in Redis"),
    }
    for name, (roles, embedded, text) in workers.items():
        parser = commands.add_parser(name, parents=parents, help=text, description=text[0].upper() + text[1:] + ".")
        add_worker_options(parser, roles, embedded_redis=embedded)
        parser.set_defaults(handler=main_for(roles, embedded_redis=embedded))


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam3",
        description="Interactive image segmentation with Segment Anything 3 (SAM3) on ONNX Runtime: segment "
        "in this process, or run the encoder/decoder services and talk to them.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    # Also accepted after the command (`sam3 segment ... --debug`); SUPPRESS keeps the top-level value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    parents = [common]
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_segment(commands, parents)
    encode.add_parser(commands, parents)
    _add_workers(commands, parents)
    models.add_parser(commands, parents)
    health.add_parser(commands, parents)
    export = commands.add_parser(
        "export",
        parents=parents,
        help="same as `sam3 models export`",
        description=models.EXPORT_DESCRIPTION,
    )
    models.add_export_arguments(export)
    bench = commands.add_parser(
        "bench",
        parents=parents,
        help="benchmark transformers, raw ONNX Runtime, the predictor and the services side by side",
        description="Measure, in one run on this machine: transformers eager, the raw ONNX Runtime sessions, "
        "the in-process predictor and the gRPC services through the SDK; encoder variants, prompt latency, "
        "local-cache and Redis-fetch paths, and a concurrency sweep. Writes report.json, report.md and "
        "report.png (with the bench extra). Without --model-dir it uses (or exports) models/full.",
        formatter_class=HelpFormatter,
    )
    bench.set_defaults(handler=_run_bench)
    from sam3_bench.run import add_arguments as add_bench_arguments

    add_bench_arguments(bench)
    return parser


def _run_bench(args: argparse.Namespace) -> int:
    from sam3_bench.run import run

    return run(args)


def describe(error: BaseException) -> str:
    """One line for the user; unexpected exceptions say they are unexpected."""
    from sam3_client import Sam3Error

    if isinstance(error, Sam3Error):
        return explain(error, "the server")
    if isinstance(error, CliError | ValueError | OSError):
        return str(error) or type(error).__name__
    return f"unexpected {type(error).__name__}: {error} (run with --debug for the traceback, and please report it)"


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the process exit code (0 ok, 1 failed, 2 usage error)."""
    try:
        args = build_parser().parse_args(join_negative_coordinates(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:  # --help exits 0, usage errors 2: returned rather than raised, for callers
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE if exit_.code else EXIT_OK
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("sam3: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            traceback.print_exc()
        print(f"sam3: error: {describe(error)}", file=sys.stderr)
        return EXIT_FAILURE
