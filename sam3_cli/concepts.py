"""`sam3 segment --text PHRASE / --exemplar BOX`: every instance of a concept, in this process or through
a running service (--server: SegmentConcept, on the same stored encode as clicks).

One label PNG holds every instance: pixel value k is instance k (numbered from 1 in the order printed
and listed by --json), 0 is background; 8-bit when there are at most 255 instances, else 16-bit. Where
instances overlap, the pixel goes to the higher-scoring one (each instance's own area is in --json).
A single file keeps instances and their numbering together, which per-instance files would not.
Several --text phrases run one after the other on the same encode; exemplar boxes join every phrase (or,
with no phrase, prompt on their own as transformers does with the text "visual").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from sam3_cli.errors import CliError, UsageError, explain

POSITIVE_BOX = (0, 200, 70)
NEGATIVE_BOX = (230, 30, 30)
ALPHA = 0.5


def add_concept_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("concept prompts (every matching instance)")
    repeatable = (
        ("--text", "PHRASE", "noun phrase, e.g. 'yellow school bus' (repeatable: one set of instances per phrase)"),
        ("--exemplar", "X1,Y1,X2,Y2", "box around an example instance (repeatable)"),
        ("--neg-exemplar", "X1,Y1,X2,Y2", "box around a 'not this' example (repeatable)"),
    )
    for flag, metavar, help_text in repeatable:
        group.add_argument(flag, action="append", default=[], metavar=metavar, help=help_text)
    group.add_argument("--threshold", type=float, default=0.5, help="keep instances scoring above this (0..1)")


def requested(args: argparse.Namespace) -> bool:
    return bool(args.text or args.exemplar or args.neg_exemplar)


@dataclass(frozen=True)
class Found:
    """One instance as the command reports it, from either mode."""

    score: float
    box: tuple[float, ...]
    mask: np.ndarray


@dataclass(frozen=True)
class Answer:
    """One concept's answer: its presence score (is it in the image at all: printed even when no instance
    passed the threshold, the first thing to look at when nothing was found) and its instances."""

    concept: str
    presence: float
    instances: list[Found]


def palette(count: int) -> np.ndarray:
    """Distinct colours by golden-angle hue steps (HSV with full saturation and value)."""
    hues = (np.arange(count) * 0.618033988749895) % 1.0
    hsv = np.stack([hues * 255, np.full(count, 255), np.full(count, 255)], axis=-1).astype(np.uint8)
    rgb = Image.fromarray(hsv[None], "HSV").convert("RGB")
    return np.asarray(rgb)[0]


def render(rgb: np.ndarray, labels: np.ndarray, exemplars: list[tuple[tuple[float, ...], bool]]) -> Image.Image:
    """The image with each instance tinted in its own colour and the exemplar boxes drawn."""
    count = int(labels.max())
    colours = np.vstack([np.zeros((1, 3), np.uint8), palette(count)]).astype(np.float32)
    pixels = rgb.astype(np.float32)
    inside = labels > 0
    pixels[inside] = pixels[inside] * (1 - ALPHA) + colours[labels[inside]] * ALPHA
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    width = max(2, round(min(labels.shape) / 200))
    for box, positive in exemplars:
        draw.rectangle(box, outline=POSITIVE_BOX if positive else NEGATIVE_BOX, width=width)
    return image


def run(args: argparse.Namespace, data: bytes, rgb: np.ndarray, remote: bool) -> int:
    """`sam3 segment` with concept prompts: one encode, one concept query per phrase; label PNG + JSON."""
    from sam3_cli.options import parse_numbers
    from sam3_core.masks import label_image, to_label_png

    if args.point or args.bg_point or args.box:
        raise UsageError("give clicks (--point, --bg-point, --box) or concept prompts (--text, --exemplar), not both")
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold {args.threshold}: give a number from 0 to 1")
    exemplars = [(parse_numbers(b, 4, "--exemplar"), True) for b in args.exemplar]
    exemplars += [(parse_numbers(b, 4, "--neg-exemplar"), False) for b in args.neg_exemplar]
    for (x1, y1, x2, y2), positive in exemplars:
        if x2 <= x1 or y2 <= y1:
            flag = "--exemplar" if positive else "--neg-exemplar"
            raise UsageError(f"{flag} {x1:g},{y1:g},{x2:g},{y2:g}: an exemplar box needs x2 > x1 and y2 > y1")
    if args.overlay:
        from sam3_cli.overlay import overlay_format

        overlay_format(args.overlay)
    phrases: list[str | None] = list(args.text) or [None]
    started = time.perf_counter()
    if remote:
        answers, timings = _found_remote(args, data, phrases, exemplars)
    else:
        answers, timings = _found_in_process(args, rgb, phrases, exemplars)
    found = [(answer, item) for answer in answers for item in answer.instances]  # numbered from 1, in this order
    height, width = rgb.shape[:2]
    labels = label_image([item.mask for _, item in found], [item.score for _, item in found], height, width)
    output = args.output or Path("instances.png")
    output.write_bytes(to_label_png(labels))
    number = 0
    for answer in answers:
        count = f"{len(answer.instances)} instance(s) above {args.threshold:g}"
        print(f"{answer.concept!r}: presence {answer.presence:.4f}, {count}")
        for item in answer.instances:
            number += 1
            box = ", ".join(f"{v:.1f}" for v in item.box)
            print(f"  {number}: score {item.score:.4f} box [{box}] area {int(item.mask.sum())}")
    print(f"Label image written to {output} (pixel value = instance number, 0 = background)")
    if args.overlay:
        from sam3_cli.overlay import write_overlay

        write_overlay(args.overlay, render(rgb, labels, exemplars))
        print(f"Overlay written to {args.overlay}")
    if args.json:
        summary = {
            "image": str(args.image),
            "width": width,
            "height": height,
            "mode": "server" if remote else "in-process",
            "threshold": args.threshold,
            "output": str(output),
            "exemplars": [{"box": list(box), "positive": positive} for box, positive in exemplars],
            "concepts": [
                {"concept": answer.concept, "presence": answer.presence, "instances": len(answer.instances)}
                for answer in answers
            ],
            "instances": [
                {
                    "index": k,
                    "concept": answer.concept,
                    "score": item.score,
                    "presence": answer.presence,
                    "box": list(item.box),
                    "area": int(item.mask.sum()),
                }
                for k, (answer, item) in enumerate(found, start=1)
            ],
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"Time: {timings}, total {time.perf_counter() - started:.2f} s", file=sys.stderr)
    return 0


def _found_in_process(
    args: argparse.Namespace, rgb: np.ndarray, phrases: Sequence[str | None], exemplars: list[Any]
) -> tuple[list[Answer], str]:
    from sam3_cli.options import load_model
    from sam3_core.concept import ConceptModel
    from sam3_core.model import ConceptsNotSupportedError
    from sam3_core.predictor import Predictor

    started = time.perf_counter()
    model = load_model(args, hint_server=True)
    if not model.has_detector_features:  # before the encode: a tracker-only folder cannot answer
        raise ConceptsNotSupportedError(model.folder, model.encoder_path)
    predictor = Predictor(model, concepts=ConceptModel(model.folder, runtime=model.runtime))
    predictor.set_image(rgb)
    encoded = time.perf_counter()
    answers: list[Answer] = []
    for phrase in phrases:
        try:
            answer = predictor.detect_concept(phrase, exemplars, threshold=args.threshold)
        except ValueError as error:
            raise UsageError(f"{'--text ' + repr(phrase) if phrase else '--exemplar'}: {error}") from error
        instances = [Found(i.score, i.box, i.mask()) for i in answer.instances]
        answers.append(Answer(phrase or "exemplars", answer.presence, instances))
    queries = f"{len(phrases)} concept quer{'y' if len(phrases) == 1 else 'ies'}"
    return (
        answers,
        f"encoder {encoded - started:.2f} s (model load included), {queries} {time.perf_counter() - encoded:.2f} s",
    )


def _found_remote(
    args: argparse.Namespace, data: bytes, phrases: Sequence[str | None], exemplars: list[Any]
) -> tuple[list[Answer], str]:
    from sam3_cli.options import channel_settings
    from sam3_client import Client, Sam3Error

    settings = channel_settings(args, retry_attempts=3)
    texts = [p for p in phrases if p is not None]
    with Client(
        args.server, encoder_target=args.encoder_server, decoder_target=args.decoder_server, settings=settings
    ) as client:
        try:
            result = client.segment_concept(
                data, texts or None, exemplars=exemplars, threshold=args.threshold, timeout=args.timeout
            )
        except Sam3Error as error:
            target = error.target or args.decoder_server or args.server
            raise CliError(explain(error, target, timeout=args.timeout)) from error
    answers = [
        Answer(
            answer.text or "exemplars",
            answer.presence,
            [Found(i.score, i.box, i.mask) for i in answer.instances if i.mask is not None],
        )
        for answer in result.concepts
    ]
    encoded = "" if result.encoded is None else f"encode {result.encoded.timings.get('total', 0):.0f} ms, "
    return answers, encoded + f"concepts server-side {result.timings.get('total', 0):.0f} ms"
