"""Synthetic photos: smooth colour fields with hard-edged shapes, deterministic from a seed.

Shared by the benchmark and the fixture generator, so both see the same kind of content.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def synthetic_rgb(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth colour fields with a few hard-edged shapes: compressible, yet with structure to segment."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), np.float32)
    for _ in range(6):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.15, 0.5) * max(width, height)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))
        image += blob[..., None] * rng.uniform(0, 255, 3)
    image = image / max(image.max(), 1e-6) * 200 + 20
    canvas = Image.fromarray(image.astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(4):
        x0, y0 = rng.uniform(0, width * 0.7), rng.uniform(0, height * 0.7)
        x1, y1 = x0 + rng.uniform(0.1, 0.3) * width, y0 + rng.uniform(0.1, 0.3) * height
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    return np.asarray(canvas)
