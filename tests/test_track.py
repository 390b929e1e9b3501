"""`sam3 track`: its flags are checked before any model work, and what it writes reads back as what it tracked."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from sam3_cli.main import main
from sam3_cli.track import FrameFeed
from sam3_cli.track_outputs import COLOURS, TrackOutputs
from sam3_client.video import open_frames
from videos import frame_number, moving_shapes, numbered_frames, write_video

COUNT, WIDTH, HEIGHT = 12, 64, 48


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("track") / "shapes.mp4", moving_shapes(COUNT, WIDTH, HEIGHT))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--point", "1:0"],
            "--point 1:0: expected the object, the frame and the prompt, separated by colons; "
            "write OBJ:FRAME:X,Y, e.g. --point 1:0:320,240",
        ),
        (
            ["--point", "1,0,20,30"],
            "--point 1,0,20,30: separate the object and the frame with colons: --point 1:0:20,30",
        ),
        (["--point", "car:0:20,30"], "--point car:0:20,30: the object 'car' is not a whole number"),
        (["--point", "0:0:20,30"], "the object must be 1..65535 (0 is the background of a label PNG)"),
        (
            ["--bg-point", "1:x:20,30"],
            "--bg-point 1:x:20,30: the frame 'x' is not a whole number (frames count from 0)",
        ),
        (["--box", "1:0:1,2,3"], "--box 1:0:1,2,3: '1,2,3' is not 4 comma-separated numbers (X1,Y1,X2,Y2)"),
        (["--point", "1:0:nan,3"], "'nan,3' is not 2 comma-separated numbers (X,Y)"),
        (["--box", "1:0:1,2,30,40", "--box", "1:0:2,2,30,40"], "object 1 already has a box on frame 0; give one"),
        (["--point", "1:12:20,30"], "--point 1:12:20,30: frame 12 is past the video's last frame (11)"),
        (["--point", "1:0:20,30", "--point", "1:0:65,30"], "--point 1:0:65,30: 65 is outside the image (0..64)"),
        (["--box", "2:3:30,30,10,40"], "--box 2:3:30,30,10,40: (30.0, 30.0, 10.0, 40.0) needs x2 > x1 and y2 > y1"),
        (["--mask", "1:0:m.png", "--point", "1:0:2,2"], "a mask prompt stands alone; give object 1 on frame 0 either"),
        ([], "give at least one prompt, e.g. --point 1:0:320,240"),
        (["--point", "1:0:20,30", "--start-frame", "12"], "--start-frame 12: past the video's last frame (11)"),
        (["--point", "1:0:20,30", "--fps", "0"], "--fps 0: give a frame rate above 0"),
    ],
)
def test_bad_prompts_are_one_line_usage_errors_naming_the_flag_and_the_fix(clip, flags, message, tmp_path, capsys):
    assert main(["track", str(clip), *flags, "--json", str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("sam3: error: ") and err.count("\n") == 1
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "say what to write: --labels DIR (a PNG per frame), --json PATH and/or --overlay PATH.mp4"),
        (["--overlay", "seen.gif"], "--overlay seen.gif: use a .mp4, .mov, .mkv file name"),
        (["--json", "no/such/folder/t.json"], "--json no/such/folder/t.json: the folder"),
    ],
)
def test_outputs_are_checked_before_the_video_is_read(flags, message, capsys):
    assert main(["track", "missing.mp4", "--point", "1:0:1,1", *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_video_that_cannot_be_read_is_named(tmp_path, capsys):
    assert main(["track", str(tmp_path / "missing.mp4"), "--point", "1:0:1,1", "--json", "t.json"]) == 1
    assert "sam3: error: VIDEO " in (err := capsys.readouterr().err) and "missing.mp4: no such file or folder" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bg-piont", "1:0:1,1"], "did you mean --bg-point?"),
        (["--direction", "backwards"], "did you mean 'backward'?"),
        (["--start-frame", "-1"], "-1 is below 0"),
    ],
)
def test_misspelled_flags_and_choices_get_a_suggestion(argv, message, capsys):
    assert main(["track", "clip.mp4", "--point", "1:0:1,1", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: sam3 track ") and message in err


def test_a_mask_prompt_of_another_size_or_empty_is_refused(clip, tmp_path, capsys):
    Image.fromarray(np.full((HEIGHT, WIDTH + 1), 255, np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(np.zeros((HEIGHT, WIDTH), np.uint8)).save(tmp_path / "empty.png")
    for name, message in (("wide.png", "the mask is 65x48, the video 64x48"), ("empty.png", "the mask is empty")):
        assert main(["track", str(clip), "--mask", f"1:0:{tmp_path / name}", "--json", str(tmp_path / "t.json")]) == 2
        assert message in capsys.readouterr().err


def disc(centre_x: float, centre_y: float, radius: float) -> np.ndarray:
    rows, columns = np.mgrid[:HEIGHT, :WIDTH]
    return (rows - centre_y) ** 2 + (columns - centre_x) ** 2 <= radius**2


def test_label_pngs_hold_object_ids_and_the_higher_score_wins_an_overlap(clip, tmp_path):
    left, right = disc(20, 20, 10), disc(30, 20, 10)
    with open_frames(clip) as frames:
        outputs = TrackOutputs(frames, [3, 7], labels=tmp_path / "labels", json_path=None, overlay=None)
        outputs.add(4, [3, 7], [left, right], [2.5, -1.0])
        outputs.add(5, [3, 7], [left, right], [-3.0, 0.5])
    four = np.asarray(Image.open(tmp_path / "labels" / "00004.png"))
    five = np.asarray(Image.open(tmp_path / "labels" / "00005.png"))
    assert four.dtype == np.uint8 and set(np.unique(four)) == {0, 3, 7}
    assert (four[left] == 3).all() and (four[right & ~left] == 7).all()
    assert (five[right] == 7).all() and (five[left & ~right] == 3).all()
    assert (four[~(left | right)] == 0).all()


def test_object_ids_above_255_make_every_label_png_16_bit(clip, tmp_path):
    with open_frames(clip) as frames:
        outputs = TrackOutputs(frames, [1, 300], labels=tmp_path, json_path=None, overlay=None)
        outputs.add(0, [1], [disc(20, 20, 5)], [1.0])
    labels = np.asarray(Image.open(tmp_path / "00000.png"))
    assert labels.dtype == np.uint16 and set(np.unique(labels)) == {0, 1}


def test_the_json_is_coco_rle_per_frame_and_object_and_a_frame_answered_twice_keeps_the_later(clip, tmp_path):
    first, later, other = disc(20, 20, 8), disc(22, 24, 9), np.zeros((HEIGHT, WIDTH), bool)
    other[:, 50:] = True  # touches the last column and every row
    with open_frames(clip) as frames:
        outputs = TrackOutputs(frames, [1, 2], labels=None, json_path=tmp_path / "t.json", overlay=None)
        outputs.add(3, [1, 2], [first, other], [1.5, 2.0])
        outputs.add(2, [1, 2], [first, np.zeros_like(other)], [1.0, -4.0])
        outputs.add(3, [1, 2], [later, other], [2.5, 2.0])
        assert outputs.finish({"video": "x"}) == [f"COCO RLE of 2 frames in {tmp_path / 't.json'}"]
    written = json.loads((tmp_path / "t.json").read_text())
    assert written["video"] == "x" and [f["frame"] for f in written["frames"]] == [2, 3]
    assert written["frames"][0]["name"] == "frame 2"
    hidden = written["frames"][0]["objects"][1]
    assert (hidden["id"], hidden["visible"], hidden["area"], hidden["bbox"]) == (2, False, 0, [0, 0, 0, 0])
    for record, expected in zip(written["frames"][1]["objects"], [later, other], strict=True):
        rle = coco_mask.frPyObjects(record["segmentation"], HEIGHT, WIDTH)
        assert np.array_equal(coco_mask.decode(rle).astype(bool), expected)
        assert record["area"] == int(coco_mask.area(rle)) and record["bbox"] == coco_mask.toBbox(rle).tolist()
    assert written["frames"][1]["objects"][0]["score"] == 2.5


def test_the_overlay_is_a_video_of_the_finished_frames_coloured_per_object(tmp_path):
    shapes = moving_shapes(COUNT, WIDTH - 1, HEIGHT - 1)  # odd sizes: padded for 4:2:0, cropped when read
    source = write_video(tmp_path / "odd.mkv", shapes, codec="ffv1")
    square = np.zeros((HEIGHT - 1, WIDTH - 1), bool)
    square[20:40, 5:25] = True
    overlay = tmp_path / "seen.mp4"
    with open_frames(source) as frames:
        outputs = TrackOutputs(frames, [1, 2], labels=None, json_path=None, overlay=overlay, fps=5)
        for index in (7, 2, 3, 4, 8):  # two runs, out of order (a backward pass, then a forward one)
            outputs.add(index, [2], [square], [1.0])
        prompts = [{"frame": 3, "points": [[50, 40]], "labels": [1], "box": None}]
        outputs.finish({"prompts": prompts})
    with open_frames(overlay) as seen:
        assert (len(seen), seen.fps, seen.width, seen.height) == (5, 5.0, WIDTH, HEIGHT)
        pictures = [rgb for _, rgb in seen.read(range(5))]
    expected = np.asarray(COLOURS[1], float) * 0.5 + np.asarray([110, 110, 110]) * 0.5
    inside = pictures[0][25:35, 10:20].reshape(-1, 3).mean(axis=0)
    assert np.abs(inside - expected).max() < 12, inside  # orange over grey
    outside = pictures[0][2:4, 30:40].reshape(-1, 3).mean(axis=0)
    assert np.abs(outside - 110).max() < 12, outside
    assert pictures[1][40, 50, 1] > 150 and pictures[0][40, 50, 1] < 150  # the click (green) on frame 3 only


def test_the_frame_feed_decodes_once_per_frame_whichever_way_propagation_goes(tmp_path):
    """Prompt frame, then forward from it, then backward from it: each frame encoded once, in runs."""
    encoded: list[int] = []
    with open_frames(write_video(tmp_path / "n.mp4", numbered_frames(10))) as frames:
        feed = FrameFeed(frames, lambda rgb: encoded.append(frame_number(rgb)) or frame_number(rgb))
        asked = [5, 5, 6, 7, 8, 9, 5, 4, 3, 2, 1, 0, 9]
        assert [feed(i) for i in asked] == asked
    assert encoded == [5, 6, 7, 8, 9, 5, 4, 3, 2, 1, 0, 9]


# ---------------------------------------------------------------- end to end, on the committed tiny video model

VIDEO_MODEL = Path(__file__).parent / "fixtures" / "model-tiny-video"
CLIP = Path(__file__).parent / "fixtures" / "videos" / "shapes.mp4"


@pytest.fixture(scope="module")
def embeddings() -> dict[int, object]:
    from sam3_core.model import Sam3Model
    from sam3_core.predictor import encode

    model = Sam3Model(VIDEO_MODEL, load_decoder=False)
    with open_frames(CLIP) as frames:
        return {index: encode(model, rgb) for index, rgb in frames.read(range(len(frames)))}


def core_answers(embeddings: dict, prompts: list[tuple], **propagation: object) -> dict[int, dict[int, np.ndarray]]:
    """The tracking core driven directly: frame -> object id -> mask, a frame answered twice keeping the later."""
    from sam3_core.tracking import TrackingSession, VideoGraphs

    session = TrackingSession(VideoGraphs(VIDEO_MODEL), embeddings.__getitem__, video_size=(48, 64), num_frames=6)
    answers = [session.add_prompt(frame, obj, **prompt) for frame, obj, prompt in prompts]
    answers += list(session.propagate(**propagation))
    return {answer.frame: {o.obj_id: o.mask() for o in answer.objects} for answer in answers}


@pytest.mark.parametrize(
    ("flags", "prompts", "propagation"),
    [
        (
            ["--point", "1:0:10,12", "--box", "2:0:36,2,52,18"],
            [(0, 1, {"points": [(10, 12)], "labels": [1]}), (0, 2, {"box": (36, 2, 52, 18)})],
            {},
        ),
        (  # a correction on a later frame (foreground and background, in the order typed), backward from the end
            [
                "--point",
                "1:0:10,12",
                "--bg-point",
                "1:3:40,40",
                "--point",
                "1:3:20,12",
                "--direction",
                "backward",
                "--start-frame",
                "5",
                "--max-frames",
                "2",
            ],
            [(0, 1, {"points": [(10, 12)], "labels": [1]}), (3, 1, {"points": [(40, 40), (20, 12)], "labels": [0, 1]})],
            {"start_frame": 5, "direction": "backward", "max_frames": 2},
        ),
        (  # an object first prompted mid-video by its mask, both ways from there
            ["--mask", "7:2:{mask}", "--direction", "both"],
            [(2, 7, {"mask": "mask"})],
            {"direction": "both"},
        ),
    ],
    ids=["clicks and a box", "correction, backward", "mask mid-video, both ways"],
)
def test_the_command_writes_what_the_core_answers(embeddings, flags, prompts, propagation, tmp_path, capsys):
    mask = np.zeros((48, 64), bool)
    mask[8:20, 30:42] = True
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    flags = [flag.format(mask=tmp_path / "mask.png") for flag in flags]
    prompts = [(f, o, {k: mask if v == "mask" else v for k, v in p.items()}) for f, o, p in prompts]
    labels, tracks = tmp_path / "labels", tmp_path / "tracks.json"
    argv = ["track", str(CLIP), *flags, "--labels", str(labels), "--json", str(tracks), "--model-dir", str(VIDEO_MODEL)]
    assert main(argv) == 0
    expected = core_answers(embeddings, prompts, **propagation)
    written = json.loads(tracks.read_text())
    assert [f["frame"] for f in written["frames"]] == sorted(expected)
    assert sorted(p.name for p in labels.iterdir()) == [f"{frame:05d}.png" for frame in sorted(expected)]
    for record in written["frames"]:
        masks = expected[record["frame"]]
        assert [o["id"] for o in record["objects"]] == list(masks)
        for obj in record["objects"]:
            rle = coco_mask.frPyObjects(obj["segmentation"], 48, 64)
            assert np.array_equal(coco_mask.decode(rle).astype(bool), masks[obj["id"]]), (record["frame"], obj["id"])
        label = np.asarray(Image.open(labels / f"{record['frame']:05d}.png"))
        covered = np.sum(list(masks.values()), axis=0)
        for obj_id, obj_mask in masks.items():  # every pixel an object alone covers holds its id
            assert (label[obj_mask & (covered == 1)] == obj_id).all()
        assert (label[covered == 0] == 0).all()
    assert capsys.readouterr().out.count(" pixels, score ") == len(prompts)  # each prompt's answer is printed


def test_ctrl_c_stops_within_a_frame_exits_130_and_writes_every_finished_frame(tmp_path):
    """SIGINT to a real `sam3 track` mid-propagation: the frame being computed is dropped (or finishes, if
    the signal came as it ended), the JSON, the label PNGs and the overlay hold the same finished frames."""
    count = 150
    video = write_video(tmp_path / "long.mp4", moving_shapes(count, WIDTH, HEIGHT))
    labels, tracks, overlay = tmp_path / "labels", tmp_path / "tracks.json", tmp_path / "seen.mp4"
    sam3 = Path(sys.executable).with_name("sam3")
    command = [str(sam3)] if sam3.exists() else [sys.executable, "-m", "sam3_cli"]
    # As from a terminal: SIGINT handled by default even where pytest runs with it ignored (a background job).
    as_typed = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    )
    flags = ["--point", "1:0:10,12", "--labels", str(labels), "--json", str(tracks), "--overlay", str(overlay)]
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            as_typed,
            *command,
            "track",
            str(video),
            *flags,
            "--model-dir",
            str(VIDEO_MODEL),
            "--progress",
        ],
        stdout=PIPE,
        stderr=PIPE,
    )
    progress = b""
    while not re.search(rb" [2-9]/%d " % count, progress):  # tqdm's "n/150": propagation is under way
        byte = process.stderr.read(1)
        assert byte, f"sam3 track ended before propagating: {progress.decode(errors='replace')}"
        progress += byte
    finished_before = len(list(labels.iterdir()))
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err.decode(errors="replace")
    assert b"sam3: interrupted" in err and b"Traceback" not in err
    written = json.loads(tracks.read_text())
    frames = [f["frame"] for f in written["frames"]]
    assert written["interrupted"] is True and written["error"] is None
    assert finished_before <= len(frames) <= finished_before + 1 < count  # at most the frame in flight finished
    assert frames == list(range(len(frames)))
    assert sorted(p.name for p in labels.iterdir()) == [f"{frame:05d}.png" for frame in frames]
    with open_frames(overlay) as seen:
        assert len(seen) == len(frames)
    assert f"Wrote COCO RLE of {len(frames)} frames in {tracks}" in out.decode()


def test_without_pyav_a_video_file_or_an_overlay_says_what_to_install(clip, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *rest: None if name == "av" else object())
    assert main(["track", str(clip), "--point", "1:0:1,1", "--overlay", str(tmp_path / "o.mp4")]) == 2
    assert "writing a video needs PyAV: pip install 'sam3-service[video]'" in capsys.readouterr().err
    assert main(["track", str(clip), "--point", "1:0:1,1", "--json", str(tmp_path / "t.json")]) == 1
    assert "reading video files needs PyAV: pip install 'sam3-client[video]'" in capsys.readouterr().err


def test_a_folder_of_frames_is_tracked_and_its_file_names_kept(tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    with open_frames(CLIP) as frames:
        for index, rgb in frames.read(range(3)):
            Image.fromarray(rgb).save(folder / f"img{index + 8}.png")  # img8, img9, img10: sorted as numbers
    argv = ["track", str(folder), "--box", "2:1:36,2,52,18", "--direction", "both", "--json", str(tmp_path / "t.json")]
    assert main([*argv, "--model-dir", str(VIDEO_MODEL)]) == 0
    written = json.loads((tmp_path / "t.json").read_text())
    assert written["fps"] is None and written["frame_count"] == 3
    assert [(f["frame"], f["name"]) for f in written["frames"]] == [(0, "img8.png"), (1, "img9.png"), (2, "img10.png")]


def test_a_failure_part_way_still_writes_the_finished_frames(tmp_path, capsys):
    """A folder whose fourth frame has another size: frames 0..2 are tracked and written, then the error."""
    folder = tmp_path / "frames"
    folder.mkdir()
    with open_frames(CLIP) as frames:
        for index, rgb in frames.read(range(4)):
            Image.fromarray(rgb if index < 3 else np.pad(rgb, ((0, 0), (0, 1), (0, 0)))).save(folder / f"{index}.png")
    tracks = tmp_path / "t.json"
    argv = ["track", str(folder), "--point", "1:0:10,12", "--json", str(tracks), "--model-dir", str(VIDEO_MODEL)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "sam3: error: " in captured.err and "3.png is 65x48, 0.png 64x48: every frame" in captured.err
    written = json.loads(tracks.read_text())
    assert [f["frame"] for f in written["frames"]] == [0, 1, 2] and written["interrupted"] is False
    assert "3.png is 65x48" in written["error"]
    assert f"Wrote COCO RLE of 3 frames in {tracks}" in captured.out
