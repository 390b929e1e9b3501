"""What `sam3 track` writes: a label PNG per frame as each frame finishes, and at the end (after Ctrl-C or a
failure too) the JSON of COCO RLE per frame and object and the overlay video of every finished frame.

Only the runs of each finished mask stay in memory (a few KB a frame), so a long video costs no more than
its JSON; the overlay re-reads the frames it draws on, in order. In a label PNG a pixel holds the object's
id (8-bit, 16-bit when an id is above 255), 0 none; where objects overlap, the higher object score wins.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from sam3_cli.errors import CliError, UsageError
from sam3_client.video import Frames
from sam3_core.masks import CocoRle

OVERLAY_SUFFIXES = (".mp4", ".mov", ".mkv")
# A folder of frames has no clock: its overlay plays at this rate unless --fps says otherwise.
DEFAULT_FPS = 30.0
# Distinct, saturated colours (Tableau 10), object id k gets COLOURS[(k - 1) % 10].
COLOURS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


@dataclass(frozen=True)
class TrackedObject:
    """One object on one frame, as kept until the end: its score and its mask's runs."""

    obj_id: int
    score: float  # the object score logit: > 0 means the object is on this frame
    rle: CocoRle

    def record(self) -> dict[str, Any]:
        from sam3_core.masks import rle_area_and_box

        area, box = rle_area_and_box(self.rle)
        segmentation = {"size": list(self.rle.size), "counts": self.rle.counts}
        return {
            "id": self.obj_id,
            "score": self.score,
            "visible": self.score > 0,
            "area": area,
            "bbox": list(box),
            "segmentation": segmentation,
        }


def check_output_paths(labels: Path | None, json_path: Path | None, overlay: Path | None) -> None:
    """Before any model work: at least one output, folders that exist, an overlay container FFmpeg writes."""
    if labels is None and json_path is None and overlay is None:
        raise UsageError("say what to write: --labels DIR (a PNG per frame), --json PATH and/or --overlay PATH.mp4")
    if labels is not None and labels.exists() and not labels.is_dir():
        raise UsageError(f"--labels {labels}: a file is in the way; give a folder (it is made if missing)")
    for flag, path in (("--json", json_path), ("--overlay", overlay), ("--labels", labels)):
        if path is not None and not path.absolute().parent.is_dir():
            raise UsageError(f"{flag} {path}: the folder {path.absolute().parent} does not exist")
    if overlay is not None and overlay.suffix.lower() not in OVERLAY_SUFFIXES:
        raise UsageError(f"--overlay {overlay}: use a {', '.join(OVERLAY_SUFFIXES)} file name (an H.264 video)")
    if overlay is not None and importlib.util.find_spec("av") is None:
        raise UsageError(f"--overlay {overlay}: writing a video needs PyAV: pip install 'sam3-service[video]'")


def colour(obj_id: int) -> tuple[int, int, int]:
    return COLOURS[(obj_id - 1) % len(COLOURS)]


class TrackOutputs:
    """Takes each finished frame's masks; `finish` writes the JSON and the overlay of all of them."""

    def __init__(
        self,
        frames: Frames,
        obj_ids: Sequence[int],
        *,
        labels: Path | None,
        json_path: Path | None,
        overlay: Path | None,
        fps: float | None = None,
    ) -> None:
        self.frames, self.obj_ids = frames, tuple(obj_ids)
        self.labels, self.json_path, self.overlay = labels, json_path, overlay
        self.fps = fps or frames.fps or DEFAULT_FPS
        self.finished: dict[int, list[TrackedObject]] = {}
        if labels is not None:
            labels.mkdir(exist_ok=True)

    def add(self, frame: int, obj_ids: Sequence[int], masks: Sequence[np.ndarray], scores: Sequence[float]) -> None:
        """One frame's answer (a frame answered twice keeps the later answer: propagation after the prompt)."""
        from sam3_core.masks import label_image, to_coco_rle, to_label_png

        self.finished[frame] = [
            TrackedObject(obj_id, float(score), to_coco_rle(mask))
            for obj_id, mask, score in zip(obj_ids, masks, scores, strict=True)
        ]
        if self.labels is not None:
            labels = label_image(masks, scores, self.frames.height, self.frames.width, obj_ids)
            depth = np.uint16 if max(self.obj_ids) > 255 else np.uint8  # one bit depth for every frame of the run
            (self.labels / f"{frame:05d}.png").write_bytes(to_label_png(labels.astype(depth)))

    def finish(self, summary: dict[str, Any]) -> list[str]:
        """Writes the JSON (`summary` plus every finished frame) and the overlay; returns what was written."""
        written = []
        if self.labels is not None:
            written.append(f"{len(self.finished)} label PNGs in {self.labels}")
        if self.json_path is not None:
            frames = [
                {"frame": index, "name": self.frames.name(index), "objects": [o.record() for o in self.finished[index]]}
                for index in sorted(self.finished)
            ]
            self.json_path.write_text(json.dumps({**summary, "frames": frames}) + "\n")
            written.append(f"COCO RLE of {len(frames)} frames in {self.json_path}")
        if self.overlay is not None and self.finished:
            self._write_overlay(summary.get("prompts", []))
            written.append(f"overlay of {len(self.finished)} frames in {self.overlay}")
        return written

    def _write_overlay(self, prompts: Sequence[dict[str, Any]]) -> None:
        import av
        from PIL import Image

        from sam3_cli.overlay import draw_prompts, tint
        from sam3_client.masks import decode_rle

        height, width = self.frames.height, self.frames.width
        try:
            container = av.open(str(self.overlay), "w")
        except av.FFmpegError as error:
            raise CliError(f"--overlay {self.overlay}: cannot write it ({error})") from error
        with container:
            stream = container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
            stream.width, stream.height = width + width % 2, height + height % 2  # 4:2:0 needs even sizes
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "20", "preset": "veryfast"}
            for index, rgb in self._finished_frames():
                objects = self.finished[index]
                masks = [decode_rle(o.rle.counts, height, width) for o in objects]
                image = Image.fromarray(tint(rgb, masks, [colour(o.obj_id) for o in objects]))
                for prompt in (p for p in prompts if p["frame"] == index):
                    clicks = list(zip(prompt["points"], prompt["labels"], strict=True))
                    foreground = [point for point, label in clicks if label == 1]
                    background = [point for point, label in clicks if label == 0]
                    draw_prompts(image, foreground, background, prompt["box"])
                even = np.pad(np.asarray(image), ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
                container.mux(stream.encode(av.VideoFrame.from_ndarray(even, format="rgb24")))
            container.mux(stream.encode())

    def _finished_frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """The finished frames in order, read a run of consecutive frames at a time."""
        indices = sorted(self.finished)
        starts = [i for n, i in enumerate(indices) if n == 0 or indices[n - 1] != i - 1]
        for start in starts:
            stop = start
            while stop + 1 in self.finished:
                stop += 1
            yield from self.frames.read(range(start, stop + 1))
