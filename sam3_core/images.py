"""Turning whatever a user hands us into the RGB pixels a viewer would show, with explicit limits.

transformers' SAM3 processor is the reference for the conversion: transparency is composited onto
white (Pillow's plain `convert("RGB")` would drop alpha and change the masks), everything else goes
through Pillow's `convert("RGB")`. Unlike transformers we also apply the EXIF orientation, because a
user's clicks are in the coordinates of the image as they see it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Formats a photo realistically arrives in. Anything else (EPS runs Ghostscript, for one) is refused.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"})
DEFAULT_MAX_PIXELS = 50_000_000  # 50 MP: above any phone camera, far below a decompression bomb.
# A mask's pixel count must fit a signed 32-bit integer: that is how its area travels (sam3.v1.Mask.area).
PIXELS_CEILING = 2**31 - 1

ImageInput = bytes | bytearray | memoryview | str | Path | Image.Image | np.ndarray


class ImageError(ValueError):
    """The input is not an image we can segment; the message says why in words a user can act on.

    `limit` names the limit a too-large image exceeded ("max_pixels", or Pillow's "decompression_bomb"),
    and is None for an image that is bad rather than big.
    """

    def __init__(self, message: str, *, limit: str | None = None) -> None:
        super().__init__(message)
        self.limit = limit

    @property
    def too_large(self) -> bool:
        return self.limit is not None


@dataclass(frozen=True)
class ImageLimits:
    """What a worker accepts: total pixels after decoding and the container formats."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    formats: frozenset[str] = ALLOWED_FORMATS

    def __post_init__(self) -> None:
        if not 1 <= self.max_pixels <= PIXELS_CEILING:
            raise ValueError(f"max_pixels must be 1..{PIXELS_CEILING} (areas travel as 32-bit), got {self.max_pixels}")


def open_image(data: bytes | bytearray | memoryview, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Encoded file bytes -> a PIL image whose header (format, size) passed the limits; no pixel decoded yet.

    Cheap (microseconds): a worker checks this before it takes a lock or an encoder slot.
    """
    if len(data) == 0:
        raise ImageError("the image is empty (0 bytes)")
    with _pillow_errors():
        image = Image.open(io.BytesIO(data))
    if image.format not in limits.formats:
        raise ImageError(
            f"image format {image.format or 'unknown'} is not accepted; send one of {', '.join(sorted(limits.formats))}"
        )
    _check_size(image.width, image.height, limits)
    return image


def image_pixels(image: Image.Image) -> np.ndarray:
    """An opened image -> H x W x 3 uint8 RGB, EXIF-oriented (the expensive part: decoding every pixel)."""
    with _pillow_errors():
        image.load()
    return to_rgb(image)


def decode_image(data: bytes | bytearray | memoryview, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Encoded file bytes -> H x W x 3 uint8 RGB, EXIF-oriented. Raises ImageError for anything else."""
    return image_pixels(open_image(data, limits))


@contextmanager
def _pillow_errors() -> Iterator[None]:
    """Pillow's many exception types for bad data -> one ImageError a user can act on."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"the image is too large to decode safely: {error}", limit="decompression_bomb") from error
    except UnidentifiedImageError as error:  # its message is the repr of our in-memory buffer: useless to a user
        raise ImageError("not an image file (no known image header); send a JPEG, PNG or WebP") from error
    except Exception as error:  # Pillow raises many types for corrupt data; all mean "not an image".
        raise ImageError(
            f"cannot decode the image ({type(error).__name__}: {error}); send a JPEG, PNG or WebP"
        ) from error


def _check_size(width: int, height: int, limits: ImageLimits) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"the image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageError(
            f"the image is {width}x{height} = {width * height / 1e6:.1f} MP, above the limit of "
            f"{limits.max_pixels / 1e6:.1f} MP; downscale it first",
            limit="max_pixels",
        )


def to_rgb(image: Image.Image) -> np.ndarray:
    """A decoded PIL image -> H x W x 3 uint8 RGB: EXIF orientation, 16-bit scaled, alpha onto white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale (Pillow opens 16-bit PNGs as I;16 or I): convert("RGB") would clip at 255,
        # an all-white picture. Scale the full 16-bit range to 8 bits, as a viewer does.
        image = Image.fromarray(_scale_to_uint8(np.asarray(image), 65535.0), "L")
    elif image.mode == "F":
        values = np.asarray(image)
        image = Image.fromarray(_scale_to_uint8(values, 1.0 if values.max(initial=0) <= 1.0 else 255.0), "L")
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("RGB"))


def _scale_to_uint8(values: np.ndarray, peak: float) -> np.ndarray:
    return np.clip(values.astype(np.float64) / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)


def load_image(source: ImageInput, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Paths, encoded bytes, PIL images and arrays -> H x W x 3 uint8 RGB (the library's one entry)."""
    if isinstance(source, bytes | bytearray | memoryview):
        return decode_image(source, limits)
    if isinstance(source, str | Path):
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ImageError(f"cannot read {path}: {error.strerror or error}") from error
        return decode_image(data, limits)
    if isinstance(source, Image.Image):
        _check_size(source.width, source.height, limits)
        return to_rgb(source)
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, limits)
    raise TypeError(f"expected a path, bytes, a PIL image or a numpy array, got {type(source).__name__}")


def _array_to_rgb(array: np.ndarray, limits: ImageLimits) -> np.ndarray:
    """Arrays are taken as already-oriented pixels: H x W (grey), H x W x 3 (RGB) or H x W x 4 (RGBA);
    uint8 as is, uint16 scaled from 0..65535, floats from 0..1 (or 0..255 when larger)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"expected an H x W, H x W x 3 or H x W x 4 array, got shape {array.shape}")
    _check_size(array.shape[1], array.shape[0], limits)
    if array.dtype == np.uint16:
        array = _scale_to_uint8(array, 65535.0)
    elif array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
            raise ImageError(f"expected finite uint8 pixels, got dtype {array.dtype}")
        floats_in_unit_range = np.issubdtype(array.dtype, np.floating) and array.max(initial=0) <= 1.0
        array = _scale_to_uint8(array, 1.0 if floats_in_unit_range else 255.0)
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.shape[2] == 4:
        return to_rgb(Image.fromarray(np.ascontiguousarray(array), "RGBA"))
    return np.ascontiguousarray(array)
