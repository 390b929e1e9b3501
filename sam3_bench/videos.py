"""Synthetic videos, deterministic from a seed: a still background, shapes that move across it, one that
leaves the frame and one that passes behind a bar for a few frames. What tracking must cope with, in code.

Shared by the fixture generator (transformers' references), the tests and the benchmark.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from sam3_bench.images import synthetic_rgb


def synthetic_video(num_frames: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """`num_frames` RGB frames H x W x 3 uint8. Shape 1 (a disc) drifts right and leaves the frame by the
    end; shape 2 (a square) moves down and is hidden behind a vertical bar mid-video; shape 3 (an ellipse)
    moves slowly left."""
    rng = np.random.default_rng(seed)
    background = Image.fromarray(synthetic_rgb(width, height, seed))
    colours = [tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(4)]
    span = max(num_frames - 1, 1)
    frames = []
    for index in range(num_frames):
        t = index / span
        canvas = background.copy()
        draw = ImageDraw.Draw(canvas)
        radius = 0.12 * height
        cx, cy = (0.25 + 1.0 * t) * width, 0.3 * height  # leaves through the right edge
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colours[0])
        side = 0.2 * height
        sx, sy = 0.45 * width, (0.35 + 0.3 * t) * height
        draw.rectangle([sx, sy, sx + side, sy + side], fill=colours[1])
        ex, ey = (0.8 - 0.15 * t) * width, 0.75 * height
        draw.ellipse([ex - 0.12 * width, ey - 0.08 * height, ex + 0.12 * width, ey + 0.08 * height], fill=colours[2])
        if 0.4 <= t <= 0.6:  # a bar passes in front of the square
            draw.rectangle([0.4 * width, 0, 0.7 * width, height], fill=colours[3])
        frames.append(np.asarray(canvas))
    return frames
