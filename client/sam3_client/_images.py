"""Images as the client sends them: the encoded bytes and their id (the sha256 the store is keyed by).

Files and bytes travel unchanged; PIL images and numpy arrays become a lossless PNG of their pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sam3_client import wire

# Pillow modes a PNG stores as they are; anything else (CMYK, YCbCr, float...) is sent as RGB.
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


@dataclass(frozen=True)
class ImagePayload:
    """What the client sends: the encoded bytes (None when only an id was given) and its id."""

    image_id: str
    data: bytes | None


def image_payload(image: Any) -> ImagePayload:
    """Paths, bytes, PIL images, numpy arrays, or an image id (64 hex digits) -> bytes + sha256 id.

    Files and bytes travel unchanged (the server applies their EXIF orientation); PIL images and
    arrays travel as lossless PNG of exactly their pixels, as they are (no EXIF rotation).
    """
    if isinstance(image, ImagePayload):
        return image
    if isinstance(image, str) and wire.is_image_id(image) and not Path(image).exists():
        return ImagePayload(image, None)
    if isinstance(image, str | Path):
        if not Path(image).is_file():
            raise FileNotFoundError(f"image {str(image)!r} is neither a file nor an image id (64 hex digits)")
        data = Path(image).read_bytes()
    elif isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
    else:
        data = _encode_pixels(image)
    return ImagePayload(wire.image_id(data), data)


def _encode_pixels(image: Any) -> bytes:
    """PIL images and uint8 arrays (H x W, H x W x 1/3/4) -> PNG bytes the server decodes to the same pixels."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(
                f"numpy images must be uint8 (0..255), got {image.dtype}: convert first, "
                "e.g. (array * 255).round().astype(np.uint8) for floats in 0..1"
            )
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise ValueError(f"numpy images must be H x W, H x W x 3 (RGB) or H x W x 4 (RGBA), got {image.shape}")
        image = Image.fromarray(np.ascontiguousarray(image))
    if not isinstance(image, Image.Image):
        raise TypeError(
            f"expected a path, bytes, a PIL image, a numpy array or an image id, got {type(image).__name__}"
        )
    if image.mode not in _PNG_MODES:
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
