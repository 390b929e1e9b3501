"""`sam3 track VIDEO`: prompt objects on any frames of a video, then follow them through it, in this process.

Every flag is checked before the model loads: prompt values, their frames against the video's length and
their coordinates against its size, output paths. Each prompt runs the model on its frame (its answer is
printed), then propagation goes forward, backward or both from --start-frame, over at most --max-frames
frames per direction, a frame at a time: a label PNG is written as each frame finishes, the JSON and the
overlay at the end. Ctrl-C stops within the frame being computed, still writes every finished frame, and
exits with 130; a failure part way writes them too before it is reported.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sam3_cli.errors import CliError, UsageError
from sam3_cli.track_prompts import FramePrompt

DIRECTIONS = ("forward", "backward", "both")


def add_parser(commands: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    from sam3_cli.options import HelpFormatter, add_connection_options, add_model_options, option, whole_number
    from sam3_cli.track_outputs import OVERLAY_SUFFIXES
    from sam3_cli.track_prompts import add_prompt_arguments

    parser = commands.add_parser(
        "track",
        parents=parents,
        help="follow objects through a video (a file or a folder of frames) from clicks, boxes or masks",
        description="Prompt objects on any frames of a video, then track them through it in this process. "
        "OBJ is the object's id (1..65535: its value in the label PNGs), FRAME counts from 0, coordinates are "
        "pixels of the frame as shown (a phone video's rotation applied). Each prompt is answered on its frame; "
        "propagation then runs frame by frame. Writes a label PNG per frame (--labels), COCO RLE per frame and "
        "object (--json) and/or a video with the masks coloured in (--overlay). Ctrl-C stops within a frame "
        "and keeps every finished frame. Video files need the video extra (pip install 'sam3-service[video]'); "
        "a folder of PNG/JPEG frames, sorted by name, does not.",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
        "  sam3 track clip.mp4 --point 1:0:320,240 --box 2:0:400,100,560,300 --json tracks.json --model-dir DIR\n"
        "  sam3 track frames/ --point 1:0:320,240 --bg-point 1:12:330,250 --labels labels/ --overlay seen.mp4\n"
        "  sam3 track clip.mp4 --mask 1:99:car.png --direction backward --labels labels/\n"
        "  sam3 track clip.mp4 --point 1:40:320,240 --direction both --max-frames 100 --json tracks.json\n"
        "  sam3 track clip.mp4 --point 1:0:320,240 --json tracks.json --server localhost:50051",
    )
    parser.add_argument(
        "video", type=Path, metavar="VIDEO", help="a video file (MP4, MOV, MKV, WebM, ...) or a folder of frames"
    )
    add_prompt_arguments(parser.add_argument_group("prompts (repeatable; at least one)"))
    propagation = parser.add_argument_group("propagation")
    propagation.add_argument(
        "--direction",
        choices=DIRECTIONS,
        default="forward",
        help="from the start frame to the end, to the beginning, or both (forward first); default forward",
    )
    propagation.add_argument(
        "--start-frame",
        type=whole_number(0),
        metavar="N",
        help="where propagation starts (default: the first prompt's)",
    )
    propagation.add_argument(
        "--max-frames",
        type=whole_number(0),
        metavar="N",
        help="track at most N frames past the start frame in each direction (default: to the video's end)",
    )
    outputs = parser.add_argument_group("output (at least one)")
    outputs.add_argument(
        "--labels", type=Path, metavar="DIR", help="a label PNG per frame, DIR/00012.png: pixel = object id, 0 = none"
    )
    outputs.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help='every finished frame: {"frames": [{"frame", "name", "objects": [{"id", "score", "visible", "area", '
        '"bbox", "segmentation": COCO RLE {"size", "counts"}}]}], plus the video and the prompts}',
    )
    outputs.add_argument(
        "--overlay",
        type=Path,
        metavar="PATH",
        help=f"a video of the finished frames with each object coloured and the prompts drawn "
        f"({', '.join(OVERLAY_SUFFIXES)}, H.264)",
    )
    outputs.add_argument(
        "--fps", type=float, metavar="N", help="frame rate of the overlay (default: the video's; 30 for a folder)"
    )
    outputs.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    add_model_options(parser)
    service = parser.add_argument_group("service (instead of this process)")
    option(
        service,
        "--server",
        metavar="HOST:PORT",
        help="track through a running service: the frames are encoded there (cached by content) and the session "
        "lives in its session store (docs/video.md); the same outputs as in process",
    )
    add_connection_options(service)
    parser.set_defaults(handler=run)


class FrameFeed:
    """The session's frame source: frame index -> its embeddings, encoded on demand.

    Frames come from the reader in runs (a backward run keeps decoding backward), so following propagation
    costs one decode per frame, and the last frame's embeddings are kept: the start frame of a propagation is
    usually the frame just prompted.
    """

    def __init__(self, frames: Any, encode: Callable[[Any], Any]) -> None:
        self.frames, self.encode = frames, encode
        self._run: Any = None
        self._next = -1  # the index the current run yields next
        self._step = 1
        self._last: tuple[int, Any] | None = None

    def __call__(self, index: int) -> Any:
        if self._last is not None and self._last[0] == index:
            return self._last[1]
        if self._run is None or index != self._next:
            backward = self._last is not None and index == self._last[0] - 1
            self._step = -1 if backward else 1
            self._run = self.frames.read(range(index, -1, -1) if backward else range(index, self.frames.count))
        _, rgb = next(self._run)
        self._next = index + self._step
        self._last = (index, self.encode(rgb))
        return self._last[1]


def propagation_length(count: int, start: int, direction: str, max_frames: int | None) -> int:
    """How many frames a propagation answers, for the progress bar: the start frame and up to `max_frames`
    more in each direction ("both" answers the start twice), none backward from frame 0 (transformers' order,
    which the core keeps)."""
    limit = count if max_frames is None else max_frames
    forward = min(start + limit, count - 1) - start + 1
    backward = start - max(start - limit, 0) + 1 if start > 0 else 0
    return {"forward": forward, "backward": backward, "both": forward + backward}[direction]


def _open_video(path: Path) -> Any:
    from sam3_client.video import VideoError, open_frames

    try:
        return open_frames(path)
    except VideoError as error:
        raise CliError(f"VIDEO {error}") from error


def _check_propagation(args: argparse.Namespace, count: int) -> None:
    if args.start_frame is not None and args.start_frame >= count:
        raise UsageError(f"--start-frame {args.start_frame}: past the video's last frame ({count - 1})")
    if args.fps is not None and not 0 < args.fps <= 1000:
        raise UsageError(f"--fps {args.fps:g}: give a frame rate above 0, e.g. --fps 25")


def _summary(
    args: argparse.Namespace, frames: Any, prompts: Sequence[FramePrompt], stop: BaseException | None
) -> dict[str, Any]:
    return {
        "video": str(args.video),
        "width": frames.width,
        "height": frames.height,
        "frame_count": frames.count,
        "fps": frames.fps,
        "direction": args.direction,
        "start_frame": args.start_frame,
        "max_frames": args.max_frames,
        "objects": sorted({p.obj_id for p in prompts}),
        "prompts": [
            {
                "object": p.obj_id,
                "frame": p.frame,
                "points": [list(point) for point in p.points],
                "labels": p.labels,
                "box": list(p.box) if p.box is not None else None,
                "mask": str(p.mask) if p.mask is not None else None,
            }
            for p in prompts
        ],
        "interrupted": isinstance(stop, KeyboardInterrupt),
        "error": None if stop is None or isinstance(stop, KeyboardInterrupt) else str(stop),  # why frames are missing
    }


def run(args: argparse.Namespace) -> int:
    from sam3_cli.track_outputs import TrackOutputs, check_output_paths
    from sam3_cli.track_prompts import check_against_video, parse_prompts, read_mask

    prompts = parse_prompts(args.track_prompts)
    check_output_paths(args.labels, args.json, args.overlay)
    with _open_video(args.video) as frames:
        size = (frames.height, frames.width)
        check_against_video(prompts, frames.count, size)
        _check_propagation(args, frames.count)
        masks = {(p.obj_id, p.frame): read_mask(p.mask, p, size) for p in prompts if p.mask is not None}
        outputs = TrackOutputs(
            frames,
            sorted({p.obj_id for p in prompts}),
            labels=args.labels,
            json_path=args.json,
            overlay=args.overlay,
            fps=args.fps,
        )
        started = time.perf_counter()
        stop: BaseException | None = None
        try:
            _track(args, frames, prompts, masks, outputs)
        except BaseException as error:
            stop = error
            raise  # Ctrl-C exits 130, a failure is reported: both once what finished is written below
        finally:
            for line in outputs.finish(_summary(args, frames, prompts, stop)):
                print(f"Wrote {line}")
            stopped = ", interrupted" if isinstance(stop, KeyboardInterrupt) else ""
            seconds = time.perf_counter() - started
            print(f"Time: {len(outputs.finished)} frames in {seconds:.1f} s{stopped}", file=sys.stderr)
    return 0


def _track(
    args: argparse.Namespace, frames: Any, prompts: Sequence[FramePrompt], masks: dict[int, Any], outputs: Any
) -> None:
    """Prompts, each answered on its frame, then propagation; every finished frame goes to `outputs`."""
    if args.server:
        _track_on_server(args, frames, prompts, masks, outputs)
        return
    from sam3_cli.options import load_model
    from sam3_core.predictor import encode
    from sam3_core.tracking import TrackingError, TrackingSession, VideoGraphs

    model = load_model(args, load_decoder=False)
    graphs = VideoGraphs(model.folder, runtime=model.runtime)
    session = TrackingSession(
        graphs,
        FrameFeed(frames, lambda rgb: encode(model, rgb)),
        video_size=(frames.height, frames.width),
        num_frames=frames.count,
    )
    try:
        _drive(session, _add, args, frames, prompts, masks, outputs)
    except TrackingError as error:
        raise CliError(str(error)) from error


def _drive(
    session: Any,
    add: Callable[[Any, Any], dict[int, tuple[int, float]]],
    args: argparse.Namespace,
    frames: Any,
    prompts: Sequence[FramePrompt],
    masks: dict[int, Any],
    outputs: Any,
) -> None:
    """The prompts, each answered and printed, then the propagation, on an in-process TrackingSession or a
    service's VideoSession (the same verbs); `add` hands an answer to the outputs."""
    for prompt in prompts:
        answer = session.add_prompt(
            prompt.frame,
            prompt.obj_id,
            points=prompt.points,
            labels=prompt.labels,
            box=prompt.box,
            mask=masks.get((prompt.obj_id, prompt.frame)),
        )
        area, score = add(outputs, answer)[prompt.obj_id]
        print(f"{prompt.describe()}: {area} pixels, score {score:.2f}")
    with _progress(args, frames, prompts) as progress:
        for result in session.propagate(args.start_frame, direction=args.direction, max_frames=args.max_frames):
            add(outputs, result)
            progress.update(1)


def _progress(args: argparse.Namespace, frames: Any, prompts: Sequence[FramePrompt]) -> Any:
    from tqdm import tqdm

    start = min(p.frame for p in prompts) if args.start_frame is None else args.start_frame
    return tqdm(
        total=propagation_length(frames.count, start, args.direction, args.max_frames),
        unit="frame",
        file=sys.stderr,
        disable=None if args.progress is None else not args.progress,
    )


def _track_on_server(
    args: argparse.Namespace, frames: Any, prompts: Sequence[FramePrompt], masks: dict[int, Any], outputs: Any
) -> None:
    """The same, through a service: each frame encoded there (a frame already stored costs nothing), one video
    session over them, closed at the end."""
    from sam3_cli.options import channel_settings, check_target
    from sam3_client import Client

    check_target("--server", args.server)
    with Client(args.server, settings=channel_settings(args)) as client:
        frame_ids = [client.encode(rgb).image_id for _, rgb in frames.read(range(frames.count))]
        with client.video_session(frame_ids) as session:
            _drive(session, _add_tracked, args, frames, prompts, masks, outputs)


def _add(outputs: Any, result: Any) -> dict[int, tuple[int, float]]:
    """Hands one frame's answer to the outputs; returns each object's area in pixels and score."""
    objects = result.objects
    masks = [o.mask() for o in objects]
    return _hand(outputs, result.frame, [o.obj_id for o in objects], masks, [o.object_score_logit for o in objects])


def _add_tracked(outputs: Any, tracked: Any) -> dict[int, tuple[int, float]]:
    """`_add` for a service's answer (sam3_client.TrackedFrame)."""
    objects = tracked.objects
    masks = [o.mask.mask for o in objects]
    return _hand(outputs, tracked.frame_index, [o.object_id for o in objects], masks, [o.score for o in objects])


def _hand(
    outputs: Any, frame: int, ids: list[int], masks: list[Any], scores: list[float]
) -> dict[int, tuple[int, float]]:
    outputs.add(frame, ids, masks, scores)
    return {obj_id: (int(mask.sum()), score) for obj_id, mask, score in zip(ids, masks, scores, strict=True)}
