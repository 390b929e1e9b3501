"""sam3_core.images: every way a user hands us pixels becomes the H x W x 3 uint8 RGB a viewer shows."""

from __future__ import annotations

import io
import re
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from sam3_core.images import ImageError, ImageLimits, decode_image, load_image

IMAGES_DIR = Path(__file__).parent / "fixtures" / "images"

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def quadrants(width: int = 32, height: int = 16) -> np.ndarray:
    """Red / green over blue / white: every rotation and flip gives a different picture."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[: height // 2, : width // 2] = RED
    pixels[: height // 2, width // 2 :] = GREEN
    pixels[height // 2 :, : width // 2] = BLUE
    pixels[height // 2 :, width // 2 :] = WHITE
    return pixels


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height greyscale, followed by a token IDAT: never decodable whole."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------------------
# Container formats
# ------------------------------------------------------------------------------------------------

LOSSLESS_FORMATS = [
    ("PNG", {}),
    ("BMP", {}),
    ("TIFF", {}),
    ("GIF", {}),  # four pure colours fit the palette exactly
    pytest.param(
        "WEBP",
        {"lossless": True},
        marks=pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP"),
    ),
]


@pytest.mark.parametrize(("fmt", "options"), LOSSLESS_FORMATS)
def test_lossless_formats_decode_exactly(fmt, options):
    pixels = quadrants()
    rgb = decode_image(encode(Image.fromarray(pixels), fmt, **options))
    assert rgb.dtype == np.uint8
    assert rgb.shape == (16, 32, 3)
    np.testing.assert_array_equal(rgb, pixels)


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("JPEG", {"quality": 95}),
        pytest.param(
            "WEBP",
            {"quality": 95},
            marks=pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP"),
        ),
    ],
)
def test_lossy_formats_decode_close(fmt, options):
    pixels = quadrants()
    rgb = decode_image(encode(Image.fromarray(pixels), fmt, **options))
    assert rgb.shape == (16, 32, 3) and rgb.dtype == np.uint8
    # Block centres are far from the edges where compression rings.
    for y, x, colour in ((4, 8, RED), (4, 24, GREEN), (12, 8, BLUE), (12, 24, WHITE)):
        np.testing.assert_allclose(rgb[y, x].astype(int), colour, atol=12)


def test_animated_gif_gives_first_frame():
    first, second = Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)
    data = encode(first, "GIF", save_all=True, append_images=[second], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    rgb = decode_image(data)
    assert rgb.shape == (8, 8, 3)
    assert (rgb == RED).all()


# ------------------------------------------------------------------------------------------------
# EXIF orientation
# ------------------------------------------------------------------------------------------------


def _with_orientation(pixels: np.ndarray, fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(pixels), fmt, exif=exif)


# Orientation 6: the viewer rotates the stored pixels 90° clockwise; 8: 90° counter-clockwise.
@pytest.mark.parametrize(("orientation", "k"), [(6, -1), (8, 1)])
def test_exif_orientation_png_exact(orientation, k):
    stored = quadrants()
    rgb = decode_image(_with_orientation(stored, "PNG", orientation))
    assert rgb.shape == (32, 16, 3)
    np.testing.assert_array_equal(rgb, np.rot90(stored, k))


@pytest.mark.parametrize(
    ("orientation", "top_left", "bottom_left"),
    [(6, BLUE, WHITE), (8, GREEN, RED)],
)
def test_exif_orientation_jpeg(orientation, top_left, bottom_left):
    rgb = decode_image(_with_orientation(quadrants(), "JPEG", orientation))
    assert rgb.shape == (32, 16, 3)  # 32 wide x 16 tall stored -> 16 wide x 32 tall shown
    np.testing.assert_allclose(rgb[4, 4].astype(int), top_left, atol=12)
    np.testing.assert_allclose(rgb[-4, 4].astype(int), bottom_left, atol=12)


def test_exif_fixture_is_shown_rotated():
    data = (IMAGES_DIR / "exif_rotated.jpg").read_bytes()
    stored = Image.open(io.BytesIO(data))
    orientation = stored.getexif().get(0x0112)
    assert orientation in (5, 6, 7, 8), "fixture should need a 90° turn"
    assert decode_image(data).shape[:2] == (stored.width, stored.height)


# ------------------------------------------------------------------------------------------------
# Modes: transparency onto white, grey, CMYK, 16 bit
# ------------------------------------------------------------------------------------------------


def test_rgba_composited_onto_white():
    rgba = np.array([[[0, 0, 0, 0], [255, 0, 0, 128], [0, 0, 255, 255]]], np.uint8)
    rgb = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG")).astype(int)
    assert rgb[0, 0].tolist() == [255, 255, 255]  # fully transparent black is white, not black
    np.testing.assert_allclose(rgb[0, 1], [255, 128, 128], atol=1)
    assert rgb[0, 2].tolist() == [0, 0, 255]


def test_la_composited_onto_white():
    la = np.array([[[0, 0], [0, 255], [0, 128]]], np.uint8)
    rgb = decode_image(encode(Image.fromarray(la, "LA"), "PNG")).astype(int)
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == [0, 0, 0]
    np.testing.assert_allclose(rgb[0, 2], [127, 127, 127], atol=1)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_composited_onto_white(fmt):
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    rgb = decode_image(encode(palette, fmt, transparency=0))
    assert rgb.tolist() == [[[255, 255, 255], [255, 0, 0]]]


def test_rgba_fixture_differs_from_dropping_alpha():
    data = (IMAGES_DIR / "rgba.png").read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGBA"
        alpha = np.asarray(image)[..., 3]
        dropped = np.asarray(image.convert("RGB"))
    rgb = decode_image(data)
    assert (alpha == 0).any()
    assert (rgb[alpha == 0] == 255).all()
    assert not np.array_equal(rgb, dropped)


def test_grayscale_gives_three_equal_channels():
    grey = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    rgb = decode_image(encode(Image.fromarray(grey, "L"), "PNG"))
    assert rgb.shape == (4, 6, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], grey)


def test_cmyk_tiff_to_rgb():
    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putpixel((0, 0), (255, 0, 0, 0))  # cyan
    cmyk.putpixel((1, 0), (0, 0, 0, 255))  # black
    cmyk.putpixel((2, 0), (0, 0, 0, 0))  # paper white
    rgb = decode_image(encode(cmyk, "TIFF"))
    assert rgb.tolist() == [[[0, 255, 255], [0, 0, 0], [255, 255, 255]]]


def test_cmyk_jpeg_to_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red ink
    data = encode(cmyk, "JPEG", quality=95)
    rgb = decode_image(data)
    assert rgb.shape == (16, 16, 3)
    np.testing.assert_allclose(rgb[8, 8].astype(int), RED, atol=8)


def _png16(values: np.ndarray) -> bytes:
    image = Image.fromarray(values.astype(np.uint16))
    assert image.mode.startswith("I;16")
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really stored as 16 bit
    return data


def test_16_bit_png_is_scaled_not_clipped():
    rgb = decode_image(_png16(np.array([[65535, 32768, 0]])))
    assert rgb[0, :, 0].tolist() == [255, 128, 0]
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_dark_16_bit_png_stays_dark():
    """BUG (images.py, to_rgb): a 16-bit image whose maximum is <= 255 is stretched by its own maximum.

    200 / 65535 of full scale is nearly black, yet it comes out as 255; the output of one pixel
    depends on the brightest pixel elsewhere (and jumps when the maximum crosses 255).
    """
    rgb = decode_image(_png16(np.array([[200, 100, 0]])))
    assert rgb[0, :, 0].max() <= 1, f"a dark 16-bit image came out as {rgb[0, :, 0].tolist()}"


# ------------------------------------------------------------------------------------------------
# Refusals
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, this is not an image at all", bytes(range(256)) * 4],
    ids=["empty", "text", "noise"],
)
def test_not_an_image_raises_image_error(data):
    with pytest.raises(ImageError) as info:
        decode_image(data)
    assert info.value.too_large is False


def test_empty_bytes_message():
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"")


def test_truncated_jpeg_raises_image_error():
    data = encode(Image.fromarray(quadrants(64, 64)), "JPEG")
    decode_image(data)  # the whole file is fine
    with pytest.raises(ImageError):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA"])
def test_format_outside_limits_is_refused_by_name(fmt):
    data = encode(Image.new("RGB", (16, 16)), fmt)
    with pytest.raises(ImageError, match=fmt):
        decode_image(data)


def test_formats_limit_is_configurable():
    data = encode(Image.new("RGB", (8, 8)), "JPEG")
    with pytest.raises(ImageError, match="JPEG"):
        decode_image(data, ImageLimits(formats=frozenset({"PNG"})))


@pytest.fixture
def load_calls(monkeypatch):
    """Records every ImageFile.load (the call that allocates and decodes the pixels)."""
    calls = []
    original = ImageFile.ImageFile.load

    def spy(self):
        calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    return calls


def test_load_spy_sees_ordinary_decodes(load_calls):
    decode_image(encode(Image.new("L", (5, 4)), "PNG"))
    assert (5, 4) in load_calls  # so an empty list below really means "never decoded"


@pytest.mark.parametrize("size", [(20000, 20000), (5000, 4000)], ids=["pillow-bomb", "over-our-limit"])
def test_decompression_bomb_refused_before_decoding(size, load_calls):
    data = png_header_only(*size)
    started = time.perf_counter()
    with pytest.raises(ImageError) as info:
        decode_image(data, ImageLimits(max_pixels=10_000_000))
    assert time.perf_counter() - started < 0.5
    assert info.value.too_large is True
    assert load_calls == []


def test_over_limit_message_names_size_and_limit():
    with pytest.raises(ImageError, match=r"5000x4000.*10\.0 MP") as info:
        decode_image(png_header_only(5000, 4000), ImageLimits(max_pixels=10_000_000))
    assert info.value.too_large


def test_max_pixels_boundary():
    data = encode(Image.new("RGB", (3, 2)), "PNG")
    assert decode_image(data, ImageLimits(max_pixels=6)).shape == (2, 3, 3)
    with pytest.raises(ImageError) as info:
        decode_image(data, ImageLimits(max_pixels=5))
    assert info.value.too_large


# ------------------------------------------------------------------------------------------------
# load_image: every input type
# ------------------------------------------------------------------------------------------------

TINY = IMAGES_DIR / "tiny_17x23.png"


@pytest.fixture(scope="module")
def tiny_rgb() -> np.ndarray:
    return decode_image(TINY.read_bytes())


def test_tiny_fixture_shape(tiny_rgb):
    with Image.open(TINY) as image:
        assert tiny_rgb.shape == (image.height, image.width, 3)


@pytest.mark.parametrize(
    "make",
    [
        lambda: str(TINY),
        lambda: TINY,
        lambda: TINY.read_bytes(),
        lambda: bytearray(TINY.read_bytes()),
        lambda: memoryview(TINY.read_bytes()),
        lambda: Image.open(TINY),
    ],
    ids=["str", "Path", "bytes", "bytearray", "memoryview", "PIL"],
)
def test_load_image_sources_agree(make, tiny_rgb):
    rgb = load_image(make())
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, tiny_rgb)


def test_load_image_missing_file_names_path(tmp_path):
    missing = tmp_path / "no-such-picture.jpg"
    for source in (missing, str(missing)):
        with pytest.raises(ImageError, match=re.escape(str(missing))):
            load_image(source)


def test_load_image_directory_is_image_error(tmp_path):
    with pytest.raises(ImageError):
        load_image(tmp_path)


def test_load_image_pil_over_limit():
    with pytest.raises(ImageError) as info:
        load_image(Image.new("RGB", (4, 4)), ImageLimits(max_pixels=15))
    assert info.value.too_large


def test_load_image_pil_applies_exif_orientation():
    stored = quadrants()
    image = Image.open(io.BytesIO(_with_orientation(stored, "PNG", 6)))
    np.testing.assert_array_equal(load_image(image), np.rot90(stored, -1))


def test_array_grey_hw_and_hw1():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    for array in (grey, grey[..., None]):
        rgb = load_image(array)
        assert rgb.shape == (3, 4, 3)
        for channel in range(3):
            np.testing.assert_array_equal(rgb[..., channel], grey)


def test_array_rgb_unchanged_and_contiguous():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 14, 3), dtype=np.uint8)
    view = pixels[:, ::2]  # not C-contiguous
    rgb = load_image(view)
    np.testing.assert_array_equal(rgb, view)
    assert rgb.flags.c_contiguous


def test_array_rgba_composited_onto_white():
    rgba = np.array([[[0, 0, 0, 0], [255, 0, 0, 128], [0, 0, 255, 255]]], np.uint8)
    rgb = load_image(rgba).astype(int)
    assert rgb.shape == (1, 3, 3)
    assert rgb[0, 0].tolist() == [255, 255, 255]
    np.testing.assert_allclose(rgb[0, 1], [255, 128, 128], atol=1)
    assert rgb[0, 2].tolist() == [0, 0, 255]


def test_array_float_unit_range_scaled():
    values = np.array([[0.0, 0.5, 1.0, 0.25]], np.float32)
    rgb = load_image(values)
    assert rgb.dtype == np.uint8
    assert rgb[0, :, 0].tolist() == [0, 128, 255, 64]


def test_array_float_255_range_kept():
    values = np.array([[0.0, 17.0, 254.6, 300.0]], np.float64)
    assert load_image(values)[0, :, 0].tolist() == [0, 17, 255, 255]


def test_array_uint16_scaled_like_16_bit_png():
    """BUG (images.py, _array_to_rgb): uint16 arrays are clipped at 255, so a 16-bit picture (what
    OpenCV or tifffile return) turns almost white, while the same pixels as a 16-bit PNG are scaled."""
    values = np.array([[65535, 32768, 0]], np.uint16)
    np.testing.assert_array_equal(load_image(values), decode_image(_png16(values)))


@pytest.mark.parametrize(
    "shape",
    [(5,), (2, 3, 2), (2, 3, 5), (1, 2, 3, 3), (0, 4), (4, 0, 3)],
)
def test_array_bad_shapes(shape):
    with pytest.raises(ImageError):
        load_image(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_array_non_finite(bad):
    values = np.full((2, 2, 3), 0.5, np.float32)
    values[1, 1, 2] = bad
    with pytest.raises(ImageError):
        load_image(values)


def test_array_over_limit():
    with pytest.raises(ImageError) as info:
        load_image(np.zeros((4, 4, 3), np.uint8), ImageLimits(max_pixels=15))
    assert info.value.too_large


@pytest.mark.parametrize("source", [[[0, 1], [2, 3]], 42, None, {"path": "x.png"}], ids=["list", "int", "none", "dict"])
def test_unknown_types_raise_type_error(source):
    with pytest.raises(TypeError):
        load_image(source)
