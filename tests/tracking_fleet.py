"""What the video-session tests share: a small synthetic video encoded by a real encoder, the tracking model,
and the masks an in-process TrackingSession computes for the same prompts (what a right answer is)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from sam3_client.masks import decode_packed_bits, decode_png, decode_rle
from sam3_client.proto import decoder_pb2, encoder_pb2, encoder_pb2_grpc, tracker_pb2
from sam3_core.model import Sam3Model
from sam3_core.predictor import encode
from sam3_core.tracking import TrackingSession, VideoGraphs

VIDEO_MODEL_DIR = Path(os.environ.get("SAM3_VIDEO_MODEL_DIR", Path(__file__).parent / "fixtures" / "model-tiny-video"))
SIZE = (48, 64)  # (height, width) of the synthetic video
FRAMES = 6


@cache
def video_model() -> Sam3Model:
    return Sam3Model(VIDEO_MODEL_DIR)


@cache
def frames(size: tuple[int, int] = SIZE, count: int = FRAMES) -> tuple[bytes, ...]:
    """PNG frames of a disc moving right over a gradient: enough texture for the random tracker to see."""
    height, width = size
    scale = height / SIZE[0]
    y, x = np.mgrid[:height, :width] / scale
    out = []
    for t in range(count):
        disc = (x - 14 - 6 * (t % FRAMES)) ** 2 + (y - 24) ** 2 < 80
        rgb = np.stack([x * 3, y * 4, np.where(disc, 250, 30)], -1).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return tuple(out)


def encode_frames(channel: grpc.Channel, size: tuple[int, int] = SIZE, count: int = FRAMES) -> list[str]:
    """The frames' image ids, each encoded and stored by the encoder behind `channel`."""
    encoder = encoder_pb2_grpc.EncoderServiceStub(channel)
    return [encoder.Encode(encoder_pb2.EncodeRequest(image=d), timeout=60).image_id for d in frames(size, count)]


def reference(
    prompts: Sequence[tuple[int, int, list[tuple[float, float]]]],
    propagate: dict,
    size: tuple[int, int] = SIZE,
    count: int = FRAMES,
) -> tuple[dict[int, np.ndarray], list[tuple[int, dict[int, np.ndarray]]]]:
    """In process: the prompted frames' masks and each propagated frame's masks, by object id."""
    model = video_model()
    rgb = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in frames(size, count)]
    embeddings = [encode(model, frame) for frame in rgb]
    session = TrackingSession(VideoGraphs(model.folder), embeddings.__getitem__, video_size=size, num_frames=count)
    prompted = {}
    for frame, obj_id, points in prompts:
        result = session.add_prompt(frame, obj_id, points=points)
        prompted = {o.obj_id: o.mask() for o in result.objects}
    tracked = [(r.frame, {o.obj_id: o.mask() for o in r.objects}) for r in session.propagate(**propagate)]
    return prompted, tracked


def mask_of(mask: decoder_pb2.Mask) -> np.ndarray:
    if mask.format == decoder_pb2.MASK_FORMAT_RLE:
        return decode_rle(mask.rle.counts, mask.rle.height, mask.rle.width)
    if mask.format == decoder_pb2.MASK_FORMAT_PNG:
        return decode_png(mask.data)
    return decode_packed_bits(mask.data, mask.height, mask.width)


def masks_of(frame: tracker_pb2.FrameResult) -> dict[int, np.ndarray]:
    """A frame result's masks by object id."""
    return {o.object_id: mask_of(o.mask) for o in frame.objects}
