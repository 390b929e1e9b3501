"""The `sam3` command: one entry point for trying, serving and exporting SAM3.

Each subcommand is a small function; the heavy imports (onnxruntime, torch, grpc) happen inside them,
so `sam3 --help` is instant. Errors are one readable line and a non-zero exit code; `--debug` shows
the traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sam3_client.cli_options import add_model_options, option

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
_COORDINATE_FLAGS = ("--point", "--bg-point", "--box")
_NUMBER_LIST = re.compile(r"^-?\d")


class CliError(Exception):
    """A failure the user can fix; printed without a traceback."""


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


def _add_segment(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "segment",
        help="segment one object in an image (in-process, or through a running service)",
        description="Segment one object from clicks and/or a box. Coordinates are pixels of the image as "
        "displayed (after EXIF rotation); x in 0..width, y in 0..height. Negative or outside values "
        "are rejected with the offending flag named. Writes a binary 0/255 PNG at the image's size.",
    )
    parser.add_argument("--image", "-i", required=True, type=Path, help="image file (JPEG, PNG, WebP, ...)")
    parser.add_argument(
        "--point",
        action="append",
        default=[],
        metavar="X,Y",
        help="foreground click (repeatable); negative values need --point=-5,3 or --point -5,3",
    )
    parser.add_argument(
        "--bg-point", action="append", default=[], metavar="X,Y", help="background click: 'not this' (repeatable)"
    )
    parser.add_argument("--box", metavar="X1,Y1,X2,Y2", help="box around the object")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--mask-index", type=int, choices=(0, 1, 2), help="write candidate mask N")
    choice.add_argument(
        "--best-mask", action="store_true", help="write the mask with the highest IoU score (the default)"
    )
    parser.add_argument("--output", "-o", type=Path, default=Path("mask.png"), help="mask PNG (default: mask.png)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write scores as JSON")
    add_model_options(parser)
    remote = parser.add_argument_group("service (instead of in-process)")
    option(remote, "--server", metavar="HOST:PORT", help="a `sam3 serve` (or anything serving both services)")
    option(remote, "--encoder-server", metavar="HOST:PORT", help="encoder service of a split deployment")
    option(remote, "--decoder-server", metavar="HOST:PORT", help="decoder service of a split deployment")
    option(remote, "--token", help="bearer token the workers require")
    remote.add_argument("--tls", action="store_true", help="connect with TLS (system trust store)")
    parser.set_defaults(handler=run_segment)


def load_model(args: argparse.Namespace) -> Any:
    """Sam3Model for --model-dir / --model, with the runtime options of the flags."""
    from sam3_core.model import RuntimeOptions, Sam3Model
    from sam3_core.sources import DEFAULT_REPO, resolve_model_dir

    folder = resolve_model_dir(args.model_dir or args.model or DEFAULT_REPO, variant=args.variant)
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
        if match:
            return flags[int(match.group(1))]
        return f"--box {args.box}" if ".box" in field else field

    return prompt, flag_for


def print_scores(iou_scores: Sequence[float], presence: float, chosen: int) -> None:
    """The proof of concept's score block, which scripts may already parse."""
    print("Segmentation scores:")
    for index, score in enumerate(iou_scores):
        print(f"  Mask {index}: IoU = {score:.4f}")
    print(f"  Object presence probability: {presence:.4f}")
    print(f"Selected mask: {chosen}")


def write_outputs(
    args: argparse.Namespace, mask: Any, iou_scores: Sequence[float], presence: float, chosen: int
) -> None:
    from sam3_core.masks import to_png

    height, width = mask.shape
    args.output.write_bytes(to_png(mask))
    print(f"Mask written to {args.output} ({width}x{height}, {int(mask.sum())} foreground pixels)")
    if args.json:
        summary = {
            "width": width,
            "height": height,
            "iou_scores": [float(s) for s in iou_scores],
            "presence": float(presence),
            "mask_index": chosen,
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


def run_segment(args: argparse.Namespace) -> int:
    from sam3_core.images import load_image
    from sam3_core.prompts import PromptError, validate

    prompt, flag_for = _prompt_from_flags(args)
    rgb = load_image(args.image)
    try:  # before any model or server work: a typo in a flag should not cost an encode
        validate([prompt], rgb.shape[:2])
    except PromptError as error:
        raise CliError(f"{flag_for(error.field)}: {str(error).split(': ', 1)[1]}") from error
    remote = args.server or args.encoder_server or args.decoder_server
    segment = _segment_remote if remote else _segment_in_process
    started = time.perf_counter()
    mask, iou_scores, presence, chosen, timings = segment(args, prompt)
    print_scores(iou_scores, presence, chosen)
    write_outputs(args, mask, iou_scores, presence, chosen)
    print(f"Time: {timings}, total {time.perf_counter() - started:.2f} s", file=sys.stderr)
    return EXIT_OK


def _segment_in_process(args: argparse.Namespace, prompt: Any) -> tuple[Any, list[float], float, int, str]:
    from sam3_core.predictor import Predictor

    started = time.perf_counter()
    predictor = Predictor(load_model(args))
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
    return mask, prediction.iou_scores.tolist(), prediction.presence, chosen, timings


def _segment_remote(args: argparse.Namespace, prompt: Any) -> tuple[Any, list[float], float, int, str]:
    from sam3_client import Client, ObjectPrompt, Sam3Error
    from sam3_client._channel import ChannelSettings

    settings = ChannelSettings(tls=args.tls, token=args.token)
    with Client(
        args.server, encoder_target=args.encoder_server, decoder_target=args.decoder_server, settings=settings
    ) as client:
        try:
            result = client.segment_objects(
                args.image.read_bytes(),
                [ObjectPrompt(prompt.points, prompt.labels, prompt.box)],
                mask="best" if args.mask_index is None else args.mask_index,
                mask_format="rle",
            )
        except Sam3Error as error:
            raise CliError(f"{error} (server {args.server or args.decoder_server})") from error
    (obj,) = result.objects
    encoded = "" if result.encoded is None else f"encode {result.encoded.timings.get('total', 0):.0f} ms, "
    timings = encoded + f"segment server-side {result.timings.get('total', 0):.1f} ms"
    return obj.mask, obj.iou_scores, obj.presence, obj.masks[0].index, timings


# ---------------------------------------------------------------- workers


def _add_workers(commands: argparse._SubParsersAction) -> None:
    from sam3_serving.launch import DECODER, ENCODER, add_worker_options, main_for

    workers = {
        "serve": ({ENCODER, DECODER}, True, "both services on one port; embedded Redis unless --redis-url"),
        "encoder": ({ENCODER}, False, "the encoder worker: images -> embeddings in Redis"),
        "decoder": ({DECODER}, False, "the decoder worker: prompts -> masks, from embeddings in Redis"),
    }
    for name, (roles, embedded, text) in workers.items():
        parser = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        add_worker_options(parser, roles, embedded_redis=embedded)
        parser.set_defaults(handler=main_for(roles, embedded_redis=embedded))


# ---------------------------------------------------------------- export


def _add_export(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export",
        help="build SAM3 with transformers and write ONNX graphs (needs the `export` extra)",
        description="Write a model folder in the onnx-community layout from a transformers checkpoint, or "
        "from random weights (real shapes and cost, meaningless masks) when no weights can be downloaded.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (replaced if it exists)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="local transformers checkpoint folder (Sam3TrackerModel)")
    source.add_argument("--random-init", action="store_true", help="random variance-preserving weights")
    parser.add_argument("--config", choices=("tiny", "full"), default="full", help="size for --random-init")
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    parser.add_argument(
        "--quantize",
        action="append",
        choices=("int8", "q4"),
        default=[],
        help="also write vision_encoder_<kind>.onnx (repeatable)",
    )
    parser.add_argument("--validate", action="store_true", help="compare torch and ONNX Runtime on random inputs")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    try:
        from sam3_core import export
    except ImportError as error:
        raise CliError(
            f"sam3 export needs torch and transformers ({error.name} is missing): pip install 'sam3-service[export]'"
        ) from error
    export.run(
        out_dir=args.out,
        checkpoint=args.checkpoint,
        config=args.config,
        seed=args.seed,
        quantizations=args.quantize,
        check=args.validate,
    )
    return EXIT_OK


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam3",
        description="Interactive image segmentation with Segment Anything 3 (SAM3) on ONNX Runtime.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_segment(commands)
    _add_workers(commands)
    _add_export(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the process exit code."""
    from sam3_core.images import ImageError
    from sam3_core.model import ModelNotFoundError

    args = build_parser().parse_args(join_negative_coordinates(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.handler(args))
    except (CliError, ImageError, ModelNotFoundError, ValueError, OSError) as error:
        if args.debug:
            raise
        print(f"sam3: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
