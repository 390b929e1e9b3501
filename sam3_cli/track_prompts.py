"""`sam3 track`'s prompt flags -> one prompt per object and frame, checked against the video before any model work.

`--point OBJ:FRAME:X,Y`, `--bg-point OBJ:FRAME:X,Y`, `--box OBJ:FRAME:X1,Y1,X2,Y2` and `--mask OBJ:FRAME:PNG`
name the object (a label value, 1..65535: what the object's pixels hold in the label PNGs) and the frame
(0-based). Every flag for one object on one frame makes one prompt, its clicks in command-line order: the
model answers each prompt on its frame, prompts run frame by frame, then in the order first given.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam3_cli.errors import UsageError

MAX_OBJECT_ID = 65535  # a 16-bit label PNG holds it; 0 is the background
FORMS = {
    "--point": ("OBJ:FRAME:X,Y", "1:0:320,240"),
    "--bg-point": ("OBJ:FRAME:X,Y", "1:0:400,260"),
    "--box": ("OBJ:FRAME:X1,Y1,X2,Y2", "1:0:100,80,420,360"),
    "--mask": ("OBJ:FRAME:MASK.png", "1:0:car.png"),
}
_NUMBERS = {"--point": 2, "--bg-point": 2, "--box": 4}
_DEST = "track_prompts"


@dataclass
class FramePrompt:
    """One object's prompt on one frame: clicks (x, y, label 1 or 0) in the order given, a box, or a mask."""

    obj_id: int
    frame: int
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    mask: Path | None = None
    flags: list[str] = field(default_factory=list)  # as typed, for messages

    def describe(self) -> str:
        return " ".join(self.flags)


class PromptFlag(argparse.Action):
    """Appends (flag, value) to one list shared by the four flags, so foreground and background clicks keep
    the order they were typed in."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        given = getattr(namespace, _DEST, None) or []
        setattr(namespace, _DEST, [*given, (option_string, values)])


def add_prompt_arguments(group: argparse._ActionsContainer) -> None:
    helps = {
        "--point": "foreground click on object OBJ in frame FRAME (0-based), in pixels (repeatable)",
        "--bg-point": "background click: 'not part of object OBJ' (repeatable)",
        "--box": "box around object OBJ on frame FRAME (one per object and frame)",
        "--mask": "the object's mask on that frame: a PNG of the video's size, non-zero where the object is "
        "(instead of clicks and a box)",
    }
    for flag, text in helps.items():
        form, example = FORMS[flag]
        group.add_argument(flag, action=PromptFlag, dest=_DEST, metavar=form, help=f"{text}; e.g. {flag} {example}")
    group.set_defaults(**{_DEST: []})


def _malformed(flag: str, value: str, problem: str) -> UsageError:
    form, example = FORMS[flag]
    return UsageError(f"{flag} {value}: {problem}; write {form}, e.g. {flag} {example}")


def _parse_one(flag: str, value: str) -> tuple[int, int, str]:
    """'3:12:rest' -> (3, 12, 'rest'), with the fix for the usual slips (commas for colons, a missing frame)."""
    parts = value.split(":", 2)
    if len(parts) < 3:
        commas = value.split(",")
        if len(parts) == 1 and flag in _NUMBERS and len(commas) == _NUMBERS[flag] + 2:
            meant = f"{commas[0]}:{commas[1]}:{','.join(commas[2:])}"
            raise UsageError(f"{flag} {value}: separate the object and the frame with colons: {flag} {meant}")
        raise _malformed(flag, value, "expected the object, the frame and the prompt, separated by colons")
    obj_text, frame_text, rest = parts
    try:
        obj = int(obj_text)
    except ValueError:
        raise _malformed(flag, value, f"the object {obj_text!r} is not a whole number") from None
    if not 1 <= obj <= MAX_OBJECT_ID:
        raise _malformed(flag, value, f"the object must be 1..{MAX_OBJECT_ID} (0 is the background of a label PNG)")
    try:
        frame = int(frame_text)
    except ValueError:
        raise _malformed(flag, value, f"the frame {frame_text!r} is not a whole number (frames count from 0)") from None
    if frame < 0:
        raise _malformed(flag, value, "frames count from 0")
    return obj, frame, rest


def _numbers(flag: str, value: str, text: str) -> tuple[float, ...]:
    count = _NUMBERS[flag]
    try:
        numbers = tuple(float(part) for part in text.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != count or not all(np.isfinite(numbers)):
        shape = FORMS[flag][0].split(":")[-1]
        raise _malformed(flag, value, f"{text!r} is not {count} comma-separated numbers ({shape})")
    return numbers


def parse_prompts(given: Sequence[tuple[str, str]]) -> list[FramePrompt]:
    """The flags in command-line order -> one FramePrompt per (object, frame), ordered by frame, then first use."""
    prompts: dict[tuple[int, int], FramePrompt] = {}
    for flag, value in given:
        obj, frame, rest = _parse_one(flag, value)
        prompt = prompts.setdefault((obj, frame), FramePrompt(obj, frame))
        prompt.flags.append(f"{flag} {value}")
        if flag == "--mask":
            if prompt.mask is not None:
                raise UsageError(f"{flag} {value}: object {obj} already has a mask on frame {frame}; give one")
            prompt.mask = Path(rest)
        elif flag == "--box":
            if prompt.box is not None:
                raise UsageError(f"{flag} {value}: object {obj} already has a box on frame {frame}; give one")
            prompt.box = _numbers(flag, value, rest)  # type: ignore[assignment]
        else:
            x, y = _numbers(flag, value, rest)
            prompt.points.append((x, y))
            prompt.labels.append(1 if flag == "--point" else 0)
        if prompt.mask is not None and (prompt.points or prompt.box is not None):
            raise UsageError(
                f"{prompt.describe()}: a mask prompt stands alone; give object {obj} on frame {frame} either "
                "--mask or clicks and a box"
            )
    if not prompts:
        raise UsageError("give at least one prompt, e.g. --point 1:0:320,240 (object 1 on frame 0 at x=320, y=240)")
    first_use = {key: order for order, key in enumerate(prompts)}
    return sorted(prompts.values(), key=lambda p: (p.frame, first_use[(p.obj_id, p.frame)]))


def check_against_video(prompts: Sequence[FramePrompt], count: int, size: tuple[int, int]) -> None:
    """Frames inside the video, coordinates inside the frame (sam3_core.prompts' rules), before any model work."""
    from sam3_core.prompts import Prompt, PromptError, validate

    for prompt in prompts:
        if prompt.frame >= count:
            raise UsageError(f"{prompt.describe()}: frame {prompt.frame} is past the video's last frame ({count - 1})")
        if prompt.mask is not None:
            continue
        try:
            validate([Prompt.of(prompt.points, prompt.labels, prompt.box)], size)
        except PromptError as error:
            raise UsageError(f"{_flag_of(prompt, error.field)}: {str(error).split(': ', 1)[1]}") from error


def _flag_of(prompt: FramePrompt, field: str) -> str:
    """A core field (objects[0].points[1].x, objects[0].box.x2) -> the flag that set it."""
    clicks = [flag for flag in prompt.flags if not flag.startswith(("--box", "--mask"))]
    match = re.search(r"points\[(\d+)\]", field)
    if match:
        return clicks[int(match.group(1))]
    return next((flag for flag in prompt.flags if flag.startswith("--box")), prompt.describe())


def read_mask(path: Path, prompt: FramePrompt, size: tuple[int, int]) -> np.ndarray:
    """A --mask PNG as a boolean mask of the video's (height, width) (non-zero = the object)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"))
    except (OSError, ValueError) as error:
        raise UsageError(f"{prompt.describe()}: cannot read {path} as an image ({error})") from error
    if pixels.shape != size:
        raise UsageError(
            f"{prompt.describe()}: the mask is {pixels.shape[1]}x{pixels.shape[0]}, the video {size[1]}x{size[0]}; "
            "give a mask of the video's size"
        )
    if not pixels.any():
        raise UsageError(f"{prompt.describe()}: the mask is empty (every pixel 0); non-zero pixels mark the object")
    return pixels > 0
