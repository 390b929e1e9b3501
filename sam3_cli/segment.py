"""`sam3 segment`: one object from clicks and/or a box, in this process or through a running service.

Every flag is checked before any work (an encode costs seconds): prompt values, coordinates against
the image's size, output files and their extensions, the --server address. The image file is read
once; through a service, the mask's area, box and RLE are the server's, decoded only for a PNG or an
overlay.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam3_cli import concepts
from sam3_cli.errors import CliError, UsageError, explain, first_unreachable, targets_of
from sam3_cli.options import (
    HelpFormatter,
    add_connection_options,
    add_model_options,
    check_target,
    option,
    parse_numbers,
    positive_seconds,
)

_COORDINATE_FLAGS = ("--point", "--bg-point", "--box", "--exemplar", "--neg-exemplar")
_NUMBER_LIST = re.compile(r"^-?\d")
MASK_FILE_SUFFIXES = {"png": (".png",), "rle": (".json",)}


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


def add_parser(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "segment",
        parents=parents,
        help="segment one object (clicks, box) or every instance of a concept (--text, --exemplar)",
        description="Segment one object from clicks and/or a box, in this process (--model-dir / --model) or "
        "through a running service (--server). Coordinates are pixels of the image as displayed (after EXIF "
        "rotation): x in 0..width, y in 0..height; values outside are rejected with the offending flag named. "
        "Prints the IoU score of the three candidate masks and the object presence probability, and writes the "
        "chosen mask at the image's size: a binary 0/255 PNG, or COCO RLE JSON with --format rle.",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
        "  sam3 segment -i photo.jpg --point 500,375 --model-dir models/sam3\n"
        "  sam3 segment -i photo.jpg --point 500,375 --bg-point 620,400 --box 400,300,700,500 \\\n"
        "      --server localhost:50051 --overlay preview.jpg --json scores.json\n"
        "  sam3 segment -i photo.jpg --box 10,20,300,400 --mask-index 2 --format rle -o mask.json",
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
        "--output", "-o", type=Path, help="mask file: .png, or .json for COCO RLE (default mask.png / mask.json)"
    )
    outputs.add_argument(
        "--format",
        choices=tuple(MASK_FILE_SUFFIXES),
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
        "--timeout",
        type=positive_seconds,
        help="seconds the whole call may take, an encode included (default: the SDK's)",
    )
    parser.set_defaults(handler=run)


def _prompt_from_flags(args: argparse.Namespace) -> tuple[Any, Callable[[str], str]]:
    """The Prompt the flags describe, and a function that maps a core field name back to a flag."""
    from sam3_core.prompts import BACKGROUND, FOREGROUND, Prompt

    foreground = [parse_numbers(p, 2, "--point") for p in args.point]
    background = [parse_numbers(p, 2, "--bg-point") for p in args.bg_point]
    box = parse_numbers(args.box, 4, "--box") if args.box else None
    if not foreground and not background and box is None:
        raise UsageError("give at least one --point, --bg-point or --box")
    flags = [f"--point {args.point[i]}" for i in range(len(foreground))]
    flags += [f"--bg-point {args.bg_point[i]}" for i in range(len(background))]
    prompt = Prompt.of([*foreground, *background], [FOREGROUND] * len(foreground) + [BACKGROUND] * len(background), box)

    def flag_for(field: str) -> str:
        match = re.search(r"points\[(\d+)\]", field)
        if match and int(match.group(1)) < len(flags):
            return flags[int(match.group(1))]
        return f"--box {args.box}" if ".box" in field else field

    return prompt, flag_for


def output_settings(args: argparse.Namespace) -> tuple[Path, str]:
    """(mask path, "png" | "rle"): --format wins, else the extension of --output, else PNG.

    Checked before any work: an extension must match the format, and every output's folder must exist.
    """
    suffix = args.output.suffix.lower() if args.output is not None else None
    kind = args.format or ("rle" if suffix == ".json" else "png")
    if suffix and suffix not in MASK_FILE_SUFFIXES[kind]:  # no suffix at all (/dev/null, a pipe) is fine
        shown = " or ".join(MASK_FILE_SUFFIXES[kind])
        other = "" if args.format else "; for COCO RLE JSON use a .json name or --format rle"
        raise UsageError(f"--output {args.output}: a {kind.upper()} mask file needs a {shown} name{other}")
    output = args.output or Path("mask.json" if kind == "rle" else "mask.png")
    for flag, path in (("--output", output), ("--json", args.json), ("--overlay", args.overlay)):
        if path is not None and not path.parent.is_dir():
            raise UsageError(f"{flag} {path}: the folder {path.parent} does not exist")
    return output, kind


def print_scores(iou_scores: Sequence[float], presence: float, chosen: int) -> None:
    """The proof of concept's score block, which scripts may already parse."""
    print("Segmentation scores:")
    for index, score in enumerate(iou_scores):
        print(f"  Mask {index}: IoU = {score:.4f}")
    print(f"  Object presence probability: {presence:.4f}")
    print(f"Selected mask: {chosen}")


@dataclass
class LocalMask:
    """The chosen candidate of an in-process prediction, read like the SDK's Mask (RLE first, pixels on demand)."""

    prediction: Any
    index: int

    @functools.cached_property
    def _runs(self) -> Any:
        return self.prediction.mask_rle(self.index)

    @property
    def rle(self) -> dict[str, Any]:
        return {"size": list(self._runs.size), "counts": self._runs.counts}

    @functools.cached_property
    def _area_and_box(self) -> tuple[int, tuple[int, int, int, int]]:
        from sam3_core.masks import rle_area_and_box

        return rle_area_and_box(self._runs)

    @property
    def area(self) -> int:
        return self._area_and_box[0]

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        return self._area_and_box[1]

    @functools.cached_property
    def mask(self) -> Any:
        return self.prediction.mask(self.index)


@dataclass(frozen=True)
class Segmentation:
    """What either mode returns: the chosen mask, all IoU scores, presence, and where it came from."""

    chosen_mask: Any  # .rle (pycocotools dict), .area, .bbox, and .mask (bool H x W), decoded when read
    iou_scores: list[float]
    presence: float
    chosen: int
    best_index: int
    model_id: str
    mode: str  # "in-process" or "server"
    timings: str


def write_outputs(
    args: argparse.Namespace, rgb: Any, prompt: Any, segmentation: Segmentation, output: Path, kind: str
) -> None:
    from sam3_core.masks import to_png

    chosen = segmentation.chosen_mask
    height, width = rgb.shape[:2]
    if kind == "rle":
        output.write_text(json.dumps(chosen.rle) + "\n")
    else:
        output.write_bytes(to_png(chosen.mask))
    print(f"Mask written to {output} ({width}x{height} {kind.upper()}, {chosen.area} foreground pixels)")
    foreground = [list(p) for p, label in zip(prompt.points, prompt.labels, strict=True) if label == 1]
    background = [list(p) for p, label in zip(prompt.points, prompt.labels, strict=True) if label == 0]
    if args.overlay:
        from sam3_cli.overlay import render_overlay, write_overlay

        write_overlay(args.overlay, render_overlay(rgb, chosen.mask, foreground, background, prompt.box))
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
            "area": chosen.area,
            "bbox": list(chosen.bbox),
            "output": str(output),
            "format": kind,
            "overlay": str(args.overlay) if args.overlay else None,
            "points": foreground,
            "bg_points": background,
            "box": list(prompt.box) if prompt.box is not None else None,
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


def read_image(path: Path) -> tuple[bytes, Any]:
    """The file's bytes (sent as they are) and its pixels (for the size and the overlay): one read."""
    from sam3_core.images import ImageError, decode_image

    try:
        data = path.read_bytes()
    except OSError as error:
        raise CliError(f"--image {path}: {error.strerror or error}") from error
    try:
        return data, decode_image(data)
    except ImageError as error:
        raise CliError(f"--image {path}: {error}") from error


def run(args: argparse.Namespace) -> int:
    from sam3_core.prompts import PromptError, validate

    if concepts.requested(args):
        remote = bool(args.server or args.encoder_server or args.decoder_server)
        if remote:
            check_targets(args)
        data, rgb = read_image(args.image)
        return concepts.run(args, data, rgb, remote)
    prompt, flag_for = _prompt_from_flags(args)
    output, kind = output_settings(args)
    if args.overlay:
        from sam3_cli.overlay import overlay_format

        overlay_format(args.overlay)  # a wrong extension should not cost an encode
    remote = args.server or args.encoder_server or args.decoder_server
    if remote:
        check_targets(args)
    data, rgb = read_image(args.image)
    try:  # before any model or server work: a typo in a flag should not cost an encode
        validate([prompt], rgb.shape[:2])
    except PromptError as error:
        raise UsageError(f"{flag_for(error.field)}: {str(error).split(': ', 1)[1]}") from error
    started = time.perf_counter()
    segmentation = _segment_remote(args, data, prompt, flag_for) if remote else _segment_in_process(args, rgb, prompt)
    print_scores(segmentation.iou_scores, segmentation.presence, segmentation.chosen)
    write_outputs(args, rgb, prompt, segmentation, output, kind)
    print(f"Time: {segmentation.timings}, total {time.perf_counter() - started:.2f} s", file=sys.stderr)
    return 0


def check_targets(args: argparse.Namespace) -> None:
    if not args.server and not (args.encoder_server and args.decoder_server):
        raise UsageError("give --server HOST:PORT, or both --encoder-server and --decoder-server")
    for flag in ("--server", "--encoder-server", "--decoder-server"):
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value:
            check_target(flag, value)


def _segment_in_process(args: argparse.Namespace, rgb: Any, prompt: Any) -> Segmentation:
    from sam3_cli.options import load_model
    from sam3_core.predictor import Predictor

    started = time.perf_counter()
    model = load_model(args, hint_server=True)
    predictor = Predictor(model)
    loaded = time.perf_counter()
    predictor.set_image(rgb)
    encoded = time.perf_counter()
    (prediction,) = predictor.predict_objects([prompt])
    decoded = time.perf_counter()
    chosen = prediction.best_index if args.mask_index is None else args.mask_index
    timings = (
        f"model load {loaded - started:.2f} s, encoder {1000 * (encoded - loaded):.0f} ms, "
        f"decoder {1000 * (decoded - encoded):.1f} ms"
    )
    scores = [float(s) for s in prediction.iou_scores]
    return Segmentation(
        LocalMask(prediction, chosen),
        scores,
        prediction.presence,
        chosen,
        prediction.best_index,
        model.model_id,
        "in-process",
        timings,
    )


def _segment_remote(args: argparse.Namespace, data: bytes, prompt: Any, flag_for: Callable[[str], str]) -> Segmentation:
    import grpc

    from sam3_cli.options import channel_settings, tls_options
    from sam3_client import Client, ObjectPrompt, Sam3Error

    # Interactive: 3 attempts (~0.6 s of backoff) rather than the SDK's 5 (~3 s) before "cannot reach".
    settings = channel_settings(args, retry_attempts=3)
    targets = targets_of(args.server, args.encoder_server, args.decoder_server)
    with Client(
        args.server, encoder_target=args.encoder_server, decoder_target=args.decoder_server, settings=settings
    ) as client:
        try:
            result = client.segment_objects(
                data,
                [ObjectPrompt(prompt.points, prompt.labels, prompt.box)],
                mask="best" if args.mask_index is None else args.mask_index,
                mask_format="rle",
                timeout=args.timeout,
            )
        except Sam3Error as error:
            target = targets[0]
            if error.code == grpc.StatusCode.UNAVAILABLE and len(targets) > 1:
                target = first_unreachable(targets, **tls_options(args)) or target
            raise CliError(explain(error, target, flag_for=flag_for, timeout=args.timeout)) from error
    (obj,) = result.objects
    encoded = "" if result.encoded is None else f"encode {result.encoded.timings.get('total', 0):.0f} ms, "
    timings = encoded + f"segment server-side {result.timings.get('total', 0):.1f} ms"
    return Segmentation(
        obj.masks[0],
        list(obj.iou_scores),
        obj.presence,
        obj.masks[0].index,
        obj.best_index,
        result.model_id,
        "server",
        timings,
    )
