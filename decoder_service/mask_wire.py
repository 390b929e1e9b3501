"""Masks on the wire: how each `MaskFormat` is encoded, and what a format costs before a mask is made.

A format's size is either fixed by the image (packed bits: one bit a pixel) or known only once the mask
is encoded (PNG, RLE, polygons): `fixed_bytes` tells the response budget which (decoder_service.budget),
and `encode` / `predicted_mask` are the places a mask becomes the message's pixels. MASK_FORMAT_NONE
computes nothing at full size. Polygons are traced from the mask's runs (`sam3_core.polygons`), after
the budget has counted their corners (`outline`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sam3_client.proto import decoder_pb2
from sam3_core import masks as mask_codecs
from sam3_core.masks import CocoRle
from sam3_core.polygons import Outline
from sam3_core.predictor import ObjectPrediction
from sam3_core.timing import StageTimer

if TYPE_CHECKING:  # budget.py imports fixed_bytes from here
    from decoder_service.budget import ResponseBudget

__all__ = [
    "MaskWire",
    "empty_mask",
    "encode",
    "fixed_bytes",
    "low_res_logits",
    "low_res_logits_bytes",
    "outline",
    "predicted_mask",
]

_FLOAT32_BYTES = 4


def fixed_bytes(fmt: int, size: tuple[int, int]) -> int:
    """The bytes one mask of an image of `size` (height, width) takes in `fmt` whatever its content; 0 when
    its size depends on the content (or nothing is sent)."""
    height, width = size
    return -(-height * width // 8) if fmt == decoder_pb2.MASK_FORMAT_PACKED_BITS else 0


def low_res_logits_bytes(count: int, size: tuple[int, int]) -> int:
    """The bytes of `count` low-resolution logit maps of `size` (float32)."""
    return count * size[0] * size[1] * _FLOAT32_BYTES


class MaskWire:
    """How one answer's masks travel: the format, the polygon tolerance, and the budget an outline is
    counted against before it is traced."""

    def __init__(self, fmt: int, polygon_tolerance: float, budget: ResponseBudget) -> None:
        self.format = fmt
        self.polygon_tolerance = polygon_tolerance
        self.budget = budget


def empty_mask(index: int, score: float, fmt: int, size: tuple[int, int]) -> decoder_pb2.Mask:
    """A Mask with everything but the pixels: what MASK_FORMAT_NONE returns."""
    height, width = size
    return decoder_pb2.Mask(
        index=index,
        iou_score=score,
        format=fmt,  # type: ignore[arg-type]
        width=width,
        height=height,
        bbox=decoder_pb2.BoundingBox(),  # present even when empty, as the contract promises
    )


def encode(message: decoder_pb2.Mask, mask: np.ndarray, timer: StageTimer, wire: MaskWire, because: str) -> None:
    """The pixels of a boolean H x W mask into `message`, in its format, with area and box."""
    height, width = mask.shape
    if message.format == decoder_pb2.MASK_FORMAT_POLYGON:
        with timer.stage("encode_mask"):
            runs = mask_codecs.to_coco_rle(mask)
        outline(message, runs, timer, wire, because)
    with timer.stage("encode_mask"):
        if message.format == decoder_pb2.MASK_FORMAT_RLE:
            rle = mask_codecs.to_coco_rle(mask)
            message.rle.CopyFrom(decoder_pb2.RleMask(counts=rle.counts, height=height, width=width))
        elif message.format == decoder_pb2.MASK_FORMAT_PACKED_BITS:
            message.data = mask_codecs.to_packed_bits(mask)
        elif message.format == decoder_pb2.MASK_FORMAT_PNG:
            message.data = mask_codecs.to_png(mask)
        x, y, w, h = mask_codecs.bounding_box(mask)
        message.area = int(np.count_nonzero(mask))
        message.bbox.CopyFrom(decoder_pb2.BoundingBox(x=x, y=y, width=w, height=h))


def predicted_mask(
    prediction: ObjectPrediction, index: int, timer: StageTimer, wire: MaskWire, because: str
) -> decoder_pb2.Mask:
    """One of an object's masks on the wire. RLE and polygons come straight from the logits' runs (no H x W
    mask for smooth masks); with MASK_FORMAT_NONE nothing at full size is computed at all."""
    fmt = wire.format
    message = empty_mask(index, float(prediction.iou_scores[index]), fmt, prediction.original_size)
    if fmt == decoder_pb2.MASK_FORMAT_NONE:
        return message
    if fmt in (decoder_pb2.MASK_FORMAT_RLE, decoder_pb2.MASK_FORMAT_POLYGON):
        height, width = prediction.original_size
        with timer.stage("postprocess"):
            rle = prediction.mask_rle(index)
            area, (x, y, w, h) = mask_codecs.rle_area_and_box(rle)
        if fmt == decoder_pb2.MASK_FORMAT_RLE:
            with timer.stage("encode_mask"):
                message.rle.CopyFrom(decoder_pb2.RleMask(counts=rle.counts, height=height, width=width))
        else:
            outline(message, rle, timer, wire, because)
        message.area = area
        message.bbox.CopyFrom(decoder_pb2.BoundingBox(x=x, y=y, width=w, height=h))
    else:
        with timer.stage("postprocess"):
            mask = prediction.mask(index)
        encode(message, mask, timer, wire, because)
    return message


def outline(message: decoder_pb2.Mask, rle: CocoRle, timer: StageTimer, wire: MaskWire, because: str) -> None:
    """The outline of the mask `rle` describes into `message.polygons`: its corners counted against the
    budget before it is traced (at tolerance 0, its exact size too), then traced and simplified."""
    with timer.stage("encode_mask"):
        shape = Outline(rle)
        tolerance = wire.polygon_tolerance
        exact = _varint_bytes(shape.corner_coordinates) if tolerance == 0 else None
        wire.budget.trace(shape.corners, because, exact)
        rings = [
            decoder_pb2.PolygonRing(points=ring.points.reshape(-1).tolist(), hole=ring.hole)
            for ring in shape.rings(tolerance)
        ]
        message.polygons.CopyFrom(decoder_pb2.PolygonMask(rings=rings, tolerance=tolerance))


def _varint_bytes(values: np.ndarray) -> int:
    """Bytes the non-negative `values` take as protobuf varints (packed, without the field's own header)."""
    bits = np.maximum(np.floor(np.log2(np.maximum(values, 1))).astype(np.int64) + 1, 1)
    return int(np.sum((bits + 6) // 7))


def low_res_logits(logits: np.ndarray) -> decoder_pb2.LowResLogits:
    """[N, h, w] logits as little-endian float32 bytes."""
    return decoder_pb2.LowResLogits(
        data=logits.astype("<f4").tobytes(), count=len(logits), height=logits.shape[1], width=logits.shape[2]
    )
