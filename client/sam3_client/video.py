"""Video files and folders of frames as RGB arrays, read forward or backward: what `sam3 track` runs over.

A frame is H x W x 3 uint8 RGB as a viewer shows it, the pixels the server decodes an image to: a folder's
PNG/JPEG frames are EXIF-oriented with transparency composited onto white (sam3_core.images' rules); a
video's frames are FFmpeg's RGB conversion, turned by the stream's display rotation (phone videos). Frames
are numbered from 0 in presentation order; a folder's files are sorted by name with their numbers compared
as numbers (frame9.png before frame10.png).

Reading holds at most one window of frames (BACKWARD_WINDOW_BYTES), whatever the video's length: a backward
read seeks to the keyframe before each window and decodes it forward (milliseconds a frame, the model seconds).
Video files need PyAV (`pip install 'sam3-client[video]'`); folders need nothing beyond Pillow.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FRAME_SUFFIXES", "FrameFolder", "Frames", "VideoError", "VideoFile", "open_frames"]

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
# What a backward read holds at once: a window of frames, each window decoded from the keyframe before it. Larger
# windows repeat less of that run: 1280x720 with a keyframe every 250 frames reads forward at 6 ms a frame,
# backward at 29 ms in windows of 16 frames (152 MB peak) and 15 ms in windows of 64 (249 MB); the model
# takes seconds a frame on a CPU. So: as many frames as fit this budget (35 at 720p, 16 at 1080p).
BACKWARD_WINDOW_BYTES = 96 * 2**20
_INSTALL_HINT = "reading video files needs PyAV: pip install 'sam3-client[video]' (or 'sam3-service[video]')"


class VideoError(ValueError):
    """A video or folder of frames that cannot be read; the message names the file and what to do."""


class Frames(ABC):
    """Frames 0 .. count - 1 of one size; `read` yields (index, RGB array) over a range, either direction."""

    path: Path
    count: int
    width: int
    height: int
    fps: float | None  # frames per second of a video file; None for a folder (it has no clock)

    def __len__(self) -> int:
        return self.count

    def __enter__(self) -> Frames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def close(self) -> None:
        """Releases what reading holds open (a video's decoder)."""

    def name(self, index: int) -> str:
        """What a frame is called in messages and outputs: its file name in a folder, its number in a video."""
        return f"frame {index}"

    def read(self, indices: range) -> Iterator[tuple[int, np.ndarray]]:
        """(index, H x W x 3 uint8 RGB) for every index of `indices`, in its order (step 1 or -1)."""
        if indices.step not in (1, -1):
            raise ValueError(f"read frames one by one forward or backward, not with step {indices.step}")
        if len(indices) and not (min(indices) >= 0 and max(indices) < self.count):
            raise IndexError(f"frames {min(indices)}..{max(indices)} are outside 0..{self.count - 1} of {self.path}")
        return self._read(indices)

    def frame(self, index: int) -> np.ndarray:
        """One frame (for a prompt's frame or a look at it); sequential reads go through `read`."""
        return next(self.read(range(index, index + 1)))[1]

    @abstractmethod
    def _read(self, indices: range) -> Iterator[tuple[int, np.ndarray]]:
        """`read` once the range is checked."""


def open_frames(path: str | Path) -> Frames:
    """A folder of PNG/JPEG frames or a video file (anything FFmpeg reads: MP4, MOV, MKV, WebM, AVI, ...)."""
    path = Path(path)
    if path.is_dir():
        return FrameFolder(path)
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")
    return VideoFile(path)


def _natural_key(path: Path) -> list[Any]:
    """'frame10.png' -> ['frame', 10, '.png']: numbers compared as numbers, the rest as text."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


class FrameFolder(Frames):
    """A folder of .png / .jpg / .jpeg frames (other files are ignored), all of one size."""

    def __init__(self, path: Path) -> None:
        self.path, self.fps = path, None
        self.files = sorted(
            (p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file()), key=_natural_key
        )
        if not self.files:
            raise VideoError(f"{path}: no {', '.join(FRAME_SUFFIXES)} frames in this folder")
        self.count = len(self.files)
        first = self._load(self.files[0])
        self.height, self.width = first.shape[:2]

    def name(self, index: int) -> str:
        return self.files[index].name

    def close(self) -> None:
        """Nothing stays open: each frame's file is closed once read."""

    def _read(self, indices: range) -> Iterator[tuple[int, np.ndarray]]:
        for index in indices:
            rgb = self._load(self.files[index])
            if rgb.shape[:2] != (self.height, self.width):
                raise VideoError(
                    f"{self.files[index]} is {rgb.shape[1]}x{rgb.shape[0]}, {self.files[0].name} "
                    f"{self.width}x{self.height}: every frame of a video needs the same size"
                )
            yield index, rgb

    @staticmethod
    def _load(file: Path) -> np.ndarray:
        from PIL import Image, ImageOps, UnidentifiedImageError

        try:
            with Image.open(file) as opened:
                image = ImageOps.exif_transpose(opened)
                image.load()
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise VideoError(f"{file}: cannot read it as an image ({error})") from error
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            raise VideoError(f"{file}: {image.mode} frames (16-bit or float) are not read; save 8-bit frames")
        if "A" in image.getbands() or image.info.get("transparency") is not None:  # onto white, as the server does
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        return np.asarray(image.convert("RGB"))


class VideoFile(Frames):
    """A video file's first video stream. Opening demuxes it once (no decoding) to number its frames by
    presentation time: the count is exact, and any frame can be reached by a seek."""

    def __init__(self, path: Path) -> None:
        try:
            import av
        except ImportError as error:
            raise VideoError(f"{path}: {_INSTALL_HINT}") from error
        self.path = path
        try:
            self._container: Any = av.open(str(path))
        except av.FFmpegError as error:
            raise VideoError(f"{path}: not a video FFmpeg can read ({error})") from error
        try:
            self._open_stream(path)
        except BaseException:
            self._container.close()
            raise

    def _open_stream(self, path: Path) -> None:
        import av

        if not self._container.streams.video:
            raise VideoError(f"{path}: the file has no video stream")
        self._stream = self._container.streams.video[0]
        try:
            packets = [p for p in self._container.demux(self._stream) if p.size and not p.is_discard]
        except av.FFmpegError as error:
            raise VideoError(f"{path}: the video is damaged ({error})") from error
        if not packets or any(p.pts is None for p in packets):
            raise VideoError(
                f"{path}: the video's frames have no timestamps (a raw stream?); put it in a container first, "
                f"e.g. ffmpeg -i {path.name} -c copy {path.stem}.mp4"
            )
        self._times: list[int] = sorted(p.pts for p in packets)
        self._index = {pts: index for index, pts in enumerate(self._times)}
        if len(self._index) != len(self._times):
            raise VideoError(f"{path}: two frames share a timestamp; re-encode it, e.g. ffmpeg -i {path.name} out.mp4")
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.count, self.fps = len(self._times), float(rate) if rate else None
        # The first frame says how it turns (its display rotation) and so the size shown.
        self.height, self.width = self.frame(0).shape[:2]

    def close(self) -> None:
        self._container.close()

    def _read(self, indices: range) -> Iterator[tuple[int, np.ndarray]]:
        if indices.step == 1:
            yield from self._forward(indices)
            return
        window = max(1, BACKWARD_WINDOW_BYTES // (self.width * self.height * 3))
        for high in indices[::window]:  # windows of the backward range, last frame first
            low = max(high - window + 1, indices[-1])
            yield from reversed(list(self._forward(range(low, high + 1))))

    def _forward(self, indices: range) -> Iterator[tuple[int, np.ndarray]]:
        """Seeks to the keyframe at or before the first frame and decodes up to the last."""
        import av

        if not indices:
            return
        expected = indices.start
        self._container.seek(self._times[expected], stream=self._stream, backward=True, any_frame=False)
        try:
            for decoded in self._container.decode(self._stream):
                index = self._index.get(decoded.pts, -1)
                if index < expected:
                    continue  # the run from the keyframe up to the first frame wanted
                if index != expected:
                    raise VideoError(f"{self.path}: frame {expected} did not decode (the video may be damaged)")
                yield index, _display_pixels(decoded)
                expected += 1
                if expected == indices.stop:
                    return
        except av.FFmpegError as error:
            raise VideoError(f"{self.path}: frame {expected} cannot be decoded ({error})") from error
        raise VideoError(f"{self.path}: the video ends before frame {expected} (it may be truncated)")


def _display_pixels(decoded: Any) -> np.ndarray:
    """A decoded frame as RGB, turned the way its display matrix says (a multiple of 90 degrees)."""
    rgb = decoded.to_ndarray(format="rgb24")
    quarter_turns = round((decoded.rotation or 0) / 90) % 4  # counter-clockwise, as np.rot90 turns
    return np.ascontiguousarray(np.rot90(rgb, quarter_turns)) if quarter_turns else rgb
