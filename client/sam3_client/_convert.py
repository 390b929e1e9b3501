"""Between user-facing Python values and sam3.v1 messages: shared by the sync and async clients."""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam3_client.proto import decoder_pb2, encoder_pb2

IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")
MASK_FORMATS = {
    "png": decoder_pb2.MASK_FORMAT_PNG,
    "rle": decoder_pb2.MASK_FORMAT_RLE,
    "bits": decoder_pb2.MASK_FORMAT_PACKED_BITS,
    "none": decoder_pb2.MASK_FORMAT_NONE,
}
_LABELS = {1: decoder_pb2.POINT_LABEL_FOREGROUND, 0: decoder_pb2.POINT_LABEL_BACKGROUND}


@dataclass(frozen=True)
class ObjectPrompt:
    """One object: clicks (x, y in pixels of the displayed image) with labels (1 fg, 0 bg), and/or a box."""

    points: Sequence[Sequence[float]] = ()
    labels: Sequence[int] | None = None
    box: Sequence[float] | None = None


@dataclass(frozen=True)
class EncodeResult:
    image_id: str
    width: int
    height: int
    cached: bool
    model_id: str
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Mask:
    """One returned mask: boolean H x W at the original size (None when the format was 'none')."""

    index: int
    iou_score: float
    mask: np.ndarray | None
    bbox: tuple[int, int, int, int]  # COCO x, y, width, height
    area: int


@dataclass(frozen=True)
class ObjectResult:
    masks: list[Mask]
    iou_scores: list[float]
    best_index: int
    presence: float
    low_res_logits: np.ndarray | None = None

    @property
    def mask(self) -> np.ndarray | None:
        """The first returned mask (the chosen one, unless all three were asked for)."""
        return self.masks[0].mask if self.masks else None


@dataclass(frozen=True)
class SegmentResult:
    image_id: str
    width: int
    height: int
    objects: list[ObjectResult]
    model_id: str
    timings: dict[str, float] = field(default_factory=dict)
    encoded: EncodeResult | None = None  # set when the call had to Encode the image first


@dataclass(frozen=True)
class ImagePayload:
    """What the client sends: the encoded bytes (None when only an id was given) and its id."""

    image_id: str
    data: bytes | None


def image_payload(image: Any) -> ImagePayload:
    """Paths, bytes, PIL images, numpy arrays, or an image id (64 hex digits) -> bytes + sha256 id."""
    if isinstance(image, str) and IMAGE_ID.match(image) and not Path(image).exists():
        return ImagePayload(image, None)
    if isinstance(image, str | Path):
        if not Path(image).is_file():
            raise FileNotFoundError(f"image {str(image)!r} is neither a file nor an image id (64 hex digits)")
        data = Path(image).read_bytes()
    elif isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
    else:
        data = _encode_pixels(image)
    return ImagePayload(hashlib.sha256(data).hexdigest(), data)


def _encode_pixels(image: Any) -> bytes:
    """PIL images and arrays travel as lossless PNG (the server decodes exactly these pixels)."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        array = image if image.dtype == np.uint8 else np.clip(np.rint(image), 0, 255).astype(np.uint8)
        image = Image.fromarray(array)
    if not isinstance(image, Image.Image):
        raise TypeError(
            f"expected a path, bytes, a PIL image, a numpy array or an image id, got {type(image).__name__}"
        )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def object_prompt(prompt: ObjectPrompt) -> decoder_pb2.ObjectPrompt:
    points = [tuple(p) for p in prompt.points]
    labels = list(prompt.labels) if prompt.labels is not None else [1] * len(points)
    if len(labels) != len(points):
        raise ValueError(f"{len(labels)} labels for {len(points)} points")
    if any(label not in _LABELS for label in labels):
        raise ValueError(f"labels must be 1 (foreground) or 0 (background), got {labels}")
    message = decoder_pb2.ObjectPrompt(
        points=[
            decoder_pb2.Point(x=float(x), y=float(y), label=_LABELS[label])
            for (x, y), label in zip(points, labels, strict=True)
        ]
    )
    if prompt.box is not None:
        x1, y1, x2, y2 = (float(v) for v in prompt.box)
        message.box.CopyFrom(decoder_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2))
    return message


def segment_request(
    image_id: str,
    objects: Sequence[ObjectPrompt],
    *,
    mask: int | str = "best",
    mask_format: str = "rle",
    low_res_logits: bool = False,
    request_id: str = "",
    object_key: str = "",
) -> decoder_pb2.SegmentRequest:
    """mask: "best", "all" or an index 0..2; mask_format: "rle" (compact), "png", "bits" or "none"."""
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format {mask_format!r}: choose one of {sorted(MASK_FORMATS)}")
    request = decoder_pb2.SegmentRequest(
        image_id=image_id,
        objects=[object_prompt(o) for o in objects],
        mask_format=MASK_FORMATS[mask_format],
        return_low_res_logits=low_res_logits,
        request_id=request_id,
        object_key=object_key,
    )
    if mask == "all":
        request.selection = decoder_pb2.MASK_SELECTION_ALL
    elif mask == "best":
        request.selection = decoder_pb2.MASK_SELECTION_BEST
    elif isinstance(mask, int) and not isinstance(mask, bool):
        request.selection, request.mask_index = decoder_pb2.MASK_SELECTION_INDEX, mask
    else:
        raise ValueError(f"mask {mask!r}: use 'best', 'all' or an index 0..2")
    return request


def decode_mask(message: decoder_pb2.Mask) -> np.ndarray | None:
    from sam3_core import masks as codecs

    if message.format == decoder_pb2.MASK_FORMAT_NONE:
        return None
    if message.format == decoder_pb2.MASK_FORMAT_RLE:
        rle = message.rle
        return codecs.from_coco_rle(codecs.CocoRle(list(rle.counts), (rle.height, rle.width)))
    if message.format == decoder_pb2.MASK_FORMAT_PACKED_BITS:
        return codecs.from_packed_bits(message.data, message.height, message.width)
    return codecs.from_png(message.data)


def segment_result(response: decoder_pb2.SegmentResponse, encoded: EncodeResult | None = None) -> SegmentResult:
    objects = []
    for obj in response.objects:
        logits = None
        if obj.HasField("low_res_logits"):
            shape = (obj.low_res_logits.count, obj.low_res_logits.height, obj.low_res_logits.width)
            logits = np.frombuffer(obj.low_res_logits.data, "<f4").reshape(shape)
        objects.append(
            ObjectResult(
                masks=[
                    Mask(
                        m.index, m.iou_score, decode_mask(m), (m.bbox.x, m.bbox.y, m.bbox.width, m.bbox.height), m.area
                    )
                    for m in obj.masks
                ],
                iou_scores=list(obj.iou_scores),
                best_index=obj.best_index,
                presence=obj.presence_probability,
                low_res_logits=logits,
            )
        )
    return SegmentResult(
        response.image_id,
        response.width,
        response.height,
        objects,
        response.model_id,
        dict(response.timings.milliseconds),
        encoded,
    )


def encode_request(payload: ImagePayload, *, force: bool = False, request_id: str = "") -> encoder_pb2.EncodeRequest:
    if payload.data is None:
        raise ValueError(f"image {payload.image_id} is only an id: pass the image itself to encode it")
    return encoder_pb2.EncodeRequest(image=payload.data, force=force, request_id=request_id)


def encode_result(response: encoder_pb2.EncodeResponse) -> EncodeResult:
    return EncodeResult(
        response.image_id,
        response.width,
        response.height,
        response.cached,
        response.model_id,
        dict(response.timings.milliseconds),
    )
