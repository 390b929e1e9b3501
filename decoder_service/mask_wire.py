"""Masks on the wire: how each `MaskFormat` is encoded, and what a format costs before a mask is made.

A format's size is either fixed by the image (packed bits: one bit a pixel) or known only once the mask
is encoded (PNG, RLE): `fixed_bytes` tells the response budget which (decoder_service.budget), and
`encode` is the one place a full-size mask becomes the message's pixels. MASK_FORMAT_NONE computes
nothing at full size. A new format (polygons) joins here: its encoding in `encode`, its size in
`fixed_bytes`.
"""

from __future__ import annotations

import numpy as np

from sam3_client.proto import decoder_pb2
from sam3_core import masks as mask_codecs
from sam3_core.predictor import ObjectPrediction
from sam3_core.timing import StageTimer

__all__ = ["empty_mask", "encode", "fixed_bytes", "low_res_logits", "low_res_logits_bytes", "predicted_mask"]

_FLOAT32_BYTES = 4


def fixed_bytes(fmt: int, size: tuple[int, int]) -> int:
    """The bytes one mask of an image of `size` (height, width) takes in `fmt` whatever its content; 0 when
    its size depends on the content (or nothing is sent)."""
    height, width = size
    return -(-height * width // 8) if fmt == decoder_pb2.MASK_FORMAT_PACKED_BITS else 0


def low_res_logits_bytes(count: int, size: tuple[int, int]) -> int:
    """The bytes of `count` low-resolution logit maps of `size` (float32)."""
    return count * size[0] * size[1] * _FLOAT32_BYTES


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


def encode(message: decoder_pb2.Mask, mask: np.ndarray, timer: StageTimer) -> None:
    """The pixels of a boolean H x W mask into `message`, in its format, with area and box."""
    height, width = mask.shape
    with timer.stage("encode_mask"):
        if message.format == decoder_pb2.MASK_FORMAT_RLE:
            rle = mask_codecs.to_coco_rle(mask)
            message.rle.CopyFrom(decoder_pb2.RleMask(counts=rle.counts, height=height, width=width))
        elif message.format == decoder_pb2.MASK_FORMAT_PACKED_BITS:
            message.data = mask_codecs.to_packed_bits(mask)
        else:
            message.data = mask_codecs.to_png(mask)
        x, y, w, h = mask_codecs.bounding_box(mask)
        message.area = int(np.count_nonzero(mask))
        message.bbox.CopyFrom(decoder_pb2.BoundingBox(x=x, y=y, width=w, height=h))


def predicted_mask(prediction: ObjectPrediction, index: int, fmt: int, timer: StageTimer) -> decoder_pb2.Mask:
    """One of an object's masks on the wire. RLE comes straight from the logits (no H x W mask for smooth
    masks); with MASK_FORMAT_NONE nothing at full size is computed at all."""
    message = empty_mask(index, float(prediction.iou_scores[index]), fmt, prediction.original_size)
    if fmt == decoder_pb2.MASK_FORMAT_NONE:
        return message
    if fmt == decoder_pb2.MASK_FORMAT_RLE:
        height, width = prediction.original_size
        with timer.stage("postprocess"):
            rle = prediction.mask_rle(index)
            area, (x, y, w, h) = mask_codecs.rle_area_and_box(rle)
        with timer.stage("encode_mask"):
            message.rle.CopyFrom(decoder_pb2.RleMask(counts=rle.counts, height=height, width=width))
        message.area = area
        message.bbox.CopyFrom(decoder_pb2.BoundingBox(x=x, y=y, width=w, height=h))
    else:
        with timer.stage("postprocess"):
            mask = prediction.mask(index)
        encode(message, mask, timer)
    return message


def low_res_logits(logits: np.ndarray) -> decoder_pb2.LowResLogits:
    """[N, h, w] logits as little-endian float32 bytes."""
    return decoder_pb2.LowResLogits(
        data=logits.astype("<f4").tobytes(), count=len(logits), height=logits.shape[1], width=logits.shape[2]
    )
