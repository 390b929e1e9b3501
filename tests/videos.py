"""Small synthetic videos the tests write with PyAV: shapes moving over a plain background, and numbered frames."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np


def numbered_frames(count: int, width: int = 48, height: int = 32) -> list[np.ndarray]:
    """Frame i is a flat grey of level 8 * i + 16 (apart by far more than a lossy codec's error), RGB uint8."""
    return [np.full((height, width, 3), 8 * i + 16, np.uint8) for i in range(count)]


def frame_number(rgb: np.ndarray) -> int:
    """The i of a numbered frame, read back through a lossy codec."""
    return round((float(rgb.mean()) - 16) / 8)


def moving_shapes(count: int, width: int = 64, height: int = 48) -> list[np.ndarray]:
    """A red square moving right and a blue disc moving down over grey: two objects to track."""
    rows, columns = np.mgrid[:height, :width]
    frames = []
    for i in range(count):
        rgb = np.full((height, width, 3), 110, np.uint8)
        left, top = 4 + 2 * i, 6
        rgb[top : top + 12, left : left + 12] = (220, 40, 40)
        centre_y, centre_x = 10 + 2 * i, 44
        rgb[(rows - centre_y) ** 2 + (columns - centre_x) ** 2 <= 36] = (40, 60, 220)
        frames.append(rgb)
    return frames


def write_video(
    path: Path,
    frames: Sequence[np.ndarray],
    *,
    fps: int = 10,
    codec: str = "libx264",
    keyframe_interval: int = 4,
    rotation: int = 0,
) -> Path:
    """Encodes RGB frames (libx264 with B-frames by default, so presentation and decoding order differ);
    `rotation` stores a display rotation (degrees counter-clockwise) as phones do."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = {"libx264": "yuv444p", "ffv1": "bgr0"}.get(codec, "yuv420p")  # bgr0: RGB, losslessly
        stream.codec_context.gop_size = keyframe_interval
        if codec == "libx264":
            stream.options = {"bf": "2", "crf": "4", "preset": "ultrafast"}
        if rotation:
            stream.set_display_rotation(rotation)
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


if __name__ == "__main__":  # the committed clip the README's `sam3 track` and the SDK's video snippet run on
    folder = Path(__file__).parent / "fixtures" / "videos"
    folder.mkdir(exist_ok=True)
    write_video(folder / "shapes.mp4", moving_shapes(6))
