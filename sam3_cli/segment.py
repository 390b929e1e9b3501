"""`sam3 segment`: one object from clicks and/or a box, in this process or through a running service.

Every flag is checked before any work (an encode costs seconds): prompt values, coordinates against
the image's size, output files and their extensions, the --server address. The image file is read
once; through a service, the mask's area, box and RLE are the server's, decoded only for a PNG or an
overlay. `--refine PREVIOUS.json` continues SAM's interactive loop from an earlier run: its clicks come
first, and its mask (the logits it saved, or the ones the worker remembered under its --object-key)
goes in as the mask input.
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
from sam3_cli.errors import CliError, UsageError, explain
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
MASK_FILE_SUFFIXES = {"png": (".png",), "rle": (".json",), "polygon": (".json",)}


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
        "  sam3 segment -i photo.jpg --box 10,20,300,400 --mask-index 2 --format rle -o mask.json\n"
        "  sam3 segment -i photo.jpg --point 500,375 --format polygon -o outline.json --server localhost:50051\n"
        "refining (SAM's loop: the next clicks plus the previous mask):\n"
        "  sam3 segment -i photo.jpg --point 500,375 --json step1.json --save-logits step1.npy --server HOST:PORT\n"
        "  sam3 segment -i photo.jpg --refine step1.json --bg-point 620,410 --json step2.json --server HOST:PORT\n"
        "  (or --object-key car on the first run: the worker remembers the mask, nothing is saved locally)",
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
    prompts.add_argument(
        "--refine",
        type=Path,
        metavar="PREVIOUS.json",
        help="continue from an earlier run's --json: its clicks and box come first (a --box here replaces "
        "its box), its mask is the mask input (from its --save-logits file, else remembered by the worker "
        "under its --object-key)",
    )
    prompts.add_argument(
        "--mask-input",
        type=Path,
        metavar="LOGITS.npy",
        help="a previous answer's low-res mask logits (a --save-logits file) to refine from",
    )
    prompts.add_argument(
        "--object-key",
        metavar="KEY",
        help="with --server: name this object so the worker remembers its mask for a few minutes, for --refine",
    )
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
        help="mask file format: png (binary 0/255 greyscale, the default), rle (COCO RLE JSON "
        '{"size": [h, w], "counts": [...]}, as pycocotools reads it) or polygon (JSON {"size": [h, w], '
        '"tolerance": px, "segmentation": [[x0, y0, x1, y1, ...], ...], "holes": [false, ...]}: COCO polygons '
        "in pixel-edge coordinates, one per part and per hole); default: rle when --output ends in .json",
    )
    outputs.add_argument(
        "--polygon-tolerance",
        type=float,
        metavar="PX",
        help="with --format polygon: how far the simplified outline may stray, in pixels (default 1; 0 is exact)",
    )
    outputs.add_argument("--json", type=Path, metavar="PATH", help="also write scores and details as JSON")
    outputs.add_argument(
        "--save-logits",
        type=Path,
        metavar="PATH.npy",
        help="also write the chosen mask's low-res logits (float32 288 x 288), for --mask-input or --refine",
    )
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


@dataclass(frozen=True)
class Asked:
    """What the flags ask for: the core Prompt (its mask_input: logits from a file), the object key, and
    whether the mask input is the one a worker remembered under that key."""

    prompt: Any
    object_key: str
    remembered: bool  # mask input = the logits the worker kept for object_key (--refine of such a run)
    flag_for: Callable[[str], str]  # a core field name -> the flag that set it

    @property
    def mask_input(self) -> Any:
        """What ObjectPrompt.mask_input takes: the logits, "previous", or None."""
        return "previous" if self.remembered else self.prompt.mask_input


def _previous_run(path: Path) -> dict[str, Any]:
    """An earlier run's --json, for --refine (its clicks, box, saved logits, object key)."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"--refine {path}: cannot read it as JSON ({error})") from error
    if not isinstance(previous, dict) or "iou_scores" not in previous:
        raise UsageError(f"--refine {path}: not the --json file of a `sam3 segment` run")
    return previous


def _logits_file(path: Path, flag: str) -> Any:
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise UsageError(f"{flag} {path}: cannot read it as a .npy array ({error})") from error


def _prompt_from_flags(args: argparse.Namespace) -> Asked:
    """The object the flags describe (with --refine: the earlier run's clicks first, its mask as the input)."""
    from sam3_core.prompts import BACKGROUND, FOREGROUND, Prompt

    previous = _previous_run(args.refine) if args.refine else {}
    foreground = [tuple(p) for p in previous.get("points", [])] + [parse_numbers(p, 2, "--point") for p in args.point]
    background = [tuple(p) for p in previous.get("bg_points", [])]
    background += [parse_numbers(p, 2, "--bg-point") for p in args.bg_point]
    box = parse_numbers(args.box, 4, "--box") if args.box else previous.get("box")
    object_key = args.object_key or previous.get("object_key") or ""
    mask_input, remembered, mask_flag = None, False, "--mask-input"
    if args.mask_input and args.refine:
        raise UsageError("give --refine or --mask-input, not both (--refine brings the previous mask itself)")
    if args.mask_input:
        mask_input, mask_flag = _logits_file(args.mask_input, "--mask-input"), f"--mask-input {args.mask_input}"
    elif previous.get("logits"):
        saved = Path(previous["logits"])
        saved = saved if saved.is_absolute() or saved.exists() else args.refine.parent / saved
        mask_input, mask_flag = _logits_file(saved, f"--refine {args.refine}: its logits"), f"--refine {args.refine}"
    elif args.refine:
        if not previous.get("object_key"):
            raise UsageError(
                f"--refine {args.refine}: that run kept no mask to refine from; run it with --save-logits PATH.npy "
                "(or, through a server, --object-key KEY)"
            )
        remembered = True
    if not foreground and not background and box is None and mask_input is None and not remembered:
        raise UsageError("give at least one --point, --bg-point or --box")
    flags = [f"--point {p}" for p in previous.get("points", [])] + [f"--point {p}" for p in args.point]
    flags += [f"--bg-point {p}" for p in previous.get("bg_points", [])] + [f"--bg-point {p}" for p in args.bg_point]
    labels = [FOREGROUND] * len(foreground) + [BACKGROUND] * len(background)
    prompt = Prompt.of([*foreground, *background], labels, box, mask_input)

    def flag_for(field: str) -> str:
        match = re.search(r"points\[(\d+)\]", field)
        if match and int(match.group(1)) < len(flags):
            return flags[int(match.group(1))]
        if ".mask_input" in field:
            return mask_flag
        return f"--box {args.box or previous.get('box')}" if ".box" in field else field

    return Asked(prompt, object_key, remembered, flag_for)


def output_settings(args: argparse.Namespace) -> tuple[Path, str]:
    """(mask path, "png" | "rle" | "polygon"): --format wins, else the extension of --output, else PNG.

    Checked before any work: an extension must match the format, and every output's folder must exist.
    """
    suffix = args.output.suffix.lower() if args.output is not None else None
    kind = args.format or ("rle" if suffix == ".json" else "png")
    if suffix and suffix not in MASK_FILE_SUFFIXES[kind]:  # no suffix at all (/dev/null, a pipe) is fine
        shown = " or ".join(MASK_FILE_SUFFIXES[kind])
        other = "" if args.format else "; for COCO RLE JSON use a .json name or --format rle"
        raise UsageError(f"--output {args.output}: a {kind.upper()} mask file needs a {shown} name{other}")
    output = args.output or Path("mask.png" if kind == "png" else "mask.json")
    if args.polygon_tolerance is not None and (kind != "polygon" or not 0 <= args.polygon_tolerance <= 100):
        raise UsageError("--polygon-tolerance: a number of pixels in [0, 100], with --format polygon")
    saved = (("--save-logits", args.save_logits),)
    for flag, path in (("--output", output), ("--json", args.json), ("--overlay", args.overlay), *saved):
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
    polygon_tolerance: float

    @functools.cached_property
    def polygons(self) -> Any:
        """The outline as the SDK's Polygons (what a worker sends for mask_format="polygon")."""
        from sam3_client import Polygons
        from sam3_core.polygons import Outline

        rings = Outline(self._runs).rings(self.polygon_tolerance)
        height, width = self._runs.size
        return Polygons([r.points for r in rings], [r.hole for r in rings], width, height, self.polygon_tolerance)

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

    chosen_mask: Any  # .rle (pycocotools dict), .polygons, .area, .bbox, and .mask (bool H x W), decoded when read
    iou_scores: list[float]
    presence: float
    chosen: int
    best_index: int
    model_id: str
    mode: str  # "in-process" or "server"
    timings: str
    logits: Any  # the chosen mask's low-res logits, when --save-logits asked for them
    mask_input_used: bool  # a previous mask went into this answer


def write_outputs(
    args: argparse.Namespace, rgb: Any, asked: Asked, segmentation: Segmentation, output: Path, kind: str
) -> None:
    from sam3_core.masks import to_png

    chosen, prompt = segmentation.chosen_mask, asked.prompt
    height, width = rgb.shape[:2]
    if kind == "rle":
        output.write_text(json.dumps(chosen.rle) + "\n")
    elif kind == "polygon":
        outline = chosen.polygons
        polygons = {"size": [height, width], "tolerance": outline.tolerance, "segmentation": outline.coco}
        output.write_text(json.dumps({**polygons, "holes": outline.holes}) + "\n")
    else:
        output.write_bytes(to_png(chosen.mask))
    if asked.mask_input is not None:
        print(
            "Refined from the previous mask"
            if segmentation.mask_input_used
            else "No previous mask was remembered for this object (it expired): segmented from the clicks alone"
        )
    print(f"Mask written to {output} ({width}x{height} {kind.upper()}, {chosen.area} foreground pixels)")
    if args.save_logits:
        import numpy as np

        np.save(args.save_logits, segmentation.logits)
        print(f"Low-res logits written to {args.save_logits}")
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
            "logits": str(args.save_logits) if args.save_logits else None,
            "object_key": asked.object_key or None,
            "mask_input_used": segmentation.mask_input_used,
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
    asked = _prompt_from_flags(args)
    output, kind = output_settings(args)
    if args.overlay:
        from sam3_cli.overlay import overlay_format

        overlay_format(args.overlay)  # a wrong extension should not cost an encode
    remote = args.server or args.encoder_server or args.decoder_server
    if remote:
        check_targets(args)
    elif asked.object_key:
        how = "--object-key" if args.object_key else f"--refine {args.refine} (its mask was remembered by a worker)"
        raise UsageError(f"{how}: needs --server; in this process, use --save-logits and --refine or --mask-input")
    data, rgb = read_image(args.image)
    try:  # before any model or server work: a typo in a flag should not cost an encode
        validate([asked.prompt], rgb.shape[:2])
    except PromptError as error:
        raise UsageError(f"{asked.flag_for(error.field)}: {str(error).split(': ', 1)[1]}") from error
    started = time.perf_counter()
    segmentation = _segment_remote(args, data, asked, kind) if remote else _segment_in_process(args, rgb, asked)
    print_scores(segmentation.iou_scores, segmentation.presence, segmentation.chosen)
    write_outputs(args, rgb, asked, segmentation, output, kind)
    print(f"Time: {segmentation.timings}, total {time.perf_counter() - started:.2f} s", file=sys.stderr)
    return 0


def check_targets(args: argparse.Namespace) -> None:
    if not args.server and not (args.encoder_server and args.decoder_server):
        raise UsageError("give --server HOST:PORT, or both --encoder-server and --decoder-server")
    for flag in ("--server", "--encoder-server", "--decoder-server"):
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value:
            check_target(flag, value)


def _segment_in_process(args: argparse.Namespace, rgb: Any, asked: Asked) -> Segmentation:
    from sam3_cli.options import load_model
    from sam3_core.model import MaskInputNotSupportedError
    from sam3_core.predictor import Predictor
    from sam3_core.prompts import PromptError

    started = time.perf_counter()
    model = load_model(args, hint_server=True)
    predictor = Predictor(model)
    loaded = time.perf_counter()
    predictor.set_image(rgb)
    encoded = time.perf_counter()
    try:
        (prediction,) = predictor.predict_objects([asked.prompt])
    except PromptError as error:  # the mask input's size, which only the model knows
        raise UsageError(f"{asked.flag_for(error.field)}: {str(error).split(': ', 1)[1]}") from error
    except MaskInputNotSupportedError as error:
        raise CliError(str(error)) from error
    decoded = time.perf_counter()
    chosen = prediction.best_index if args.mask_index is None else args.mask_index
    timings = (
        f"model load {loaded - started:.2f} s, encoder {1000 * (encoded - loaded):.0f} ms, "
        f"decoder {1000 * (decoded - encoded):.1f} ms"
    )
    scores = [float(s) for s in prediction.iou_scores]
    return Segmentation(
        LocalMask(prediction, chosen, 1.0 if args.polygon_tolerance is None else args.polygon_tolerance),
        scores,
        prediction.presence,
        chosen,
        prediction.best_index,
        model.model_id,
        "in-process",
        timings,
        prediction.low_res_logits[chosen],
        asked.prompt.mask_input is not None,
    )


def _segment_remote(args: argparse.Namespace, data: bytes, asked: Asked, kind: str) -> Segmentation:
    from sam3_cli.options import channel_settings
    from sam3_client import Client, ObjectPrompt, Sam3Error, SegmentOptions

    # Interactive: 3 attempts (~0.6 s of backoff) rather than the SDK's 5 (~3 s) before "cannot reach".
    settings = channel_settings(args, retry_attempts=3)
    prompt = asked.prompt
    options: SegmentOptions = {"mask_format": "polygon" if kind == "polygon" else "rle"}
    if args.polygon_tolerance is not None:
        options["polygon_tolerance"] = args.polygon_tolerance
    with Client(
        args.server, encoder_target=args.encoder_server, decoder_target=args.decoder_server, settings=settings
    ) as client:
        try:
            result = client.segment_objects(
                data,
                [ObjectPrompt(prompt.points, prompt.labels, prompt.box, asked.mask_input, asked.object_key)],
                mask="best" if args.mask_index is None else args.mask_index,
                low_res_logits=args.save_logits is not None,
                timeout=args.timeout,
                **options,
            )
        except Sam3Error as error:
            target = error.target or args.decoder_server or args.server
            raise CliError(explain(error, target, flag_for=asked.flag_for, timeout=args.timeout)) from error
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
        obj.chosen_logits,
        obj.mask_input_used,
    )
