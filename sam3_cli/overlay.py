"""`sam3 segment --overlay`: the image with the chosen mask tinted and the prompts drawn on it (`tint` also
colours `sam3 track`'s overlay video, one colour per object).

Foreground clicks are green dots, background clicks red dots, the box a rectangle; the mask is
blended in blue with an opaque outline so thin objects stay visible. Written as PNG or JPEG by the
file's extension.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sam3_cli.errors import UsageError

MASK_TINT = (30, 144, 255)
MASK_ALPHA = 0.5
FOREGROUND_DOT = (0, 200, 70)
BACKGROUND_DOT = (230, 30, 30)
BOX_COLOUR = (255, 190, 0)
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def overlay_format(path: Path) -> str:
    """PNG or JPEG from the file name; any other extension is a usage error (checked before any work)."""
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise UsageError(f"--overlay {path}: use a .png, .jpg or .jpeg file name") from None


def _outline(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with at least one 4-neighbour outside the mask (or on the image border)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def tint(rgb: np.ndarray, masks: Sequence[np.ndarray], colours: Sequence[Sequence[int]]) -> np.ndarray:
    """RGB uint8 with each mask blended in its colour and outlined opaquely (thin objects stay visible)."""
    pixels = rgb.astype(np.float32)
    for mask, colour in zip(masks, colours, strict=True):
        shade = np.asarray(colour, np.float32)
        pixels[mask] = pixels[mask] * (1 - MASK_ALPHA) + shade * MASK_ALPHA
        pixels[_outline(mask)] = shade
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def render_overlay(
    rgb: np.ndarray,
    mask: np.ndarray,
    foreground: Sequence[Sequence[float]] = (),
    background: Sequence[Sequence[float]] = (),
    box: Sequence[float] | None = None,
) -> Image.Image:
    """RGB H x W x 3 uint8 + boolean H x W mask + prompts (image pixels) -> an RGB PIL image."""
    height, width = mask.shape
    if rgb.shape[:2] != (height, width):
        raise ValueError(f"mask {width}x{height} does not match the image {rgb.shape[1]}x{rgb.shape[0]}")
    image = Image.fromarray(tint(rgb, [mask], [MASK_TINT]), "RGB")
    draw_prompts(image, foreground, background, box)
    return image


def draw_prompts(
    image: Image.Image,
    foreground: Sequence[Sequence[float]] = (),
    background: Sequence[Sequence[float]] = (),
    box: Sequence[float] | None = None,
) -> None:
    """Clicks as dots (green: foreground, red: background) and the box as a rectangle, sized to the image."""
    draw = ImageDraw.Draw(image)
    radius = max(3.0, min(image.size) / 80)
    line = max(1, round(radius / 3))
    if box is not None:
        x1, y1, x2, y2 = box
        draw.rectangle((x1, y1, x2, y2), outline=BOX_COLOUR, width=max(2, round(radius / 2)))
    for points, colour in ((foreground, FOREGROUND_DOT), (background, BACKGROUND_DOT)):
        for x, y in points:
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline="white", width=line)


def write_overlay(path: Path, image: Image.Image) -> None:
    kind = overlay_format(path)
    options = {"quality": 92} if kind == "JPEG" else {"compress_level": 6}
    image.save(path, format=kind, **options)
