"""The `sam3` command end to end: in-process (`main([...])` + capsys) and as a real process against a live
`sam3 serve` on the tiny model (one per module), plus in-process workers where a setting differs (auth).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from subprocess import PIPE

import grpc
import numpy as np
import pytest
from PIL import Image

import references
from sam3_cli.errors import explain
from sam3_cli.main import main
from sam3_cli.models import human_size
from sam3_cli.segment import join_negative_coordinates
from sam3_cli.workers import DECODER, ENCODER
from sam3_client import Reason, Sam3Error
from sam3_core.images import load_image
from sam3_core.model import Preprocessing, compute_model_id, graph_path
from sam3_core.predictor import Predictor
from sam3_core.sources import graph_size
from sam3_serving.redis_server import free_port
from service_stack import running, serve_subprocess, shared_model

ROOT = Path(__file__).resolve().parent.parent
IMAGE = references.IMAGES_DIR / "landscape.jpg"  # 640 x 480
WIDTH, HEIGHT = 640, 480
FG_POINTS = ["192,192", "384,264"]
BG_POINT = "544,72"
BOX = "128,120,448,384"
PROMPT_FLAGS = ["--point", FG_POINTS[0], "--point", FG_POINTS[1], "--bg-point", BG_POINT]
SCORE_BLOCK = re.compile(
    r"Segmentation scores:\n(  Mask \d: IoU = \d\.\d{4}\n){3}  Object presence probability: \d\.\d{4}\n"
)
SAM3 = Path(sys.executable).with_name("sam3")


def tiny_model_id() -> str:
    folder = references.MODEL_DIR
    return compute_model_id(graph_path(folder, "vision_encoder", None), Preprocessing.from_folder(folder))


def sam3(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The installed `sam3` console script (or `python -m sam3_cli.main`) as a real process."""
    command = [str(SAM3)] if SAM3.exists() else [sys.executable, "-m", "sam3_cli"]
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def read_png_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.mode == "L"
        pixels = np.asarray(image)
    assert set(np.unique(pixels)) <= {0, 255}, "mask PNG is not binary 0/255"
    return pixels == 255


def decode_rle(rle: dict) -> np.ndarray:
    """With pycocotools when it is installed (the format's reference), else our own decoder."""
    height, width = rle["size"]
    try:
        from pycocotools import mask as coco
    except ImportError:
        from sam3_client.masks import decode_rle as sdk_decode_rle

        return sdk_decode_rle(rle["counts"], height, width)
    with warnings.catch_warnings():  # pycocotools' own NumPy 2 deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        return coco.decode(coco.frPyObjects(rle, height, width)).astype(bool)


def dead_target() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def server() -> str:
    """One `sam3 serve` process on the tiny model for the whole module."""
    with serve_subprocess("--log-level", "WARNING") as (_, target):
        yield target


@pytest.fixture(scope="module")
def prediction():
    """The core's own answer for PROMPT_FLAGS, to compare the CLI's files against."""
    predictor = Predictor(shared_model())
    predictor.set_image(IMAGE)
    return predictor.predict(points=[[192, 192], [384, 264], [544, 72]], labels=[1, 1, 0])


# ---------------------------------------------------------------- help and parsing


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["segment"],
        ["encode"],
        ["track"],
        ["serve"],
        ["encoder"],
        ["decoder"],
        ["models"],
        ["models", "pull"],
        ["models", "list"],
        ["models", "export"],
        ["health"],
        ["export"],
    ],
    ids=lambda c: " ".join(c) or "sam3",
)
def test_help_of_every_command_exits_0(command, capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sam3 {' '.join(command)}".rstrip())


def test_help_as_a_process_is_fast_and_lists_the_commands():
    started = time.monotonic()
    result = sam3("--help")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10
    for command in ("segment", "encode", "track", "serve", "encoder", "decoder", "models", "health", "export"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), command
    assert "examples:" in result.stdout


def test_usage_errors_exit_2(capsys):
    assert main(["segment", "--no-such-flag"]) == 2
    assert main(["segment", "-i", str(IMAGE), "--mask-index", "3", "--point", "1,1"]) == 2
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "usage", "message"),
    [
        (["helth"], "sam3", "invalid choice: 'helth' (choose from"),
        (["helth"], "sam3", "; did you mean 'health'?"),
        (["models", "pul"], "sam3 models", "did you mean 'pull'?"),
        (
            ["encode", "photos", "--sever", "localhost:50051"],
            "sam3 encode",
            "unrecognized arguments: --sever localhost:50051; did you mean --server?",
        ),
        (
            ["encode", "--forse", "--sever", "x", "photos"],
            "sam3 encode",
            "did you mean --force for --forse, --server for --sever?",
        ),
        (
            ["segment", "--imgae", "a.jpg", "--point", "1,1"],
            "sam3 segment",
            "unrecognized arguments: --imgae; did you mean --image?",
        ),
        (["health", "--targt", "localhost:50051"], "sam3 health", "did you mean --target?"),
        (["--dbug", "health"], "sam3", "unrecognized arguments: --dbug; did you mean --debug?"),
        (["segment", "-i", "a.jpg", "--format", "pgn"], "sam3 segment", "invalid choice: 'pgn'"),
        (["serve", "--log-format", "txt"], "sam3 serve", "did you mean 'text'?"),
        (["models", "list", "--zzz"], "sam3 models list", "unrecognized arguments: --zzz\n"),
    ],
)
def test_a_misspelled_flag_or_command_is_named_with_a_suggestion_under_its_own_usage(argv, usage, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {usage} ")
    assert message in err


def test_flags_given_as_prefixes_or_with_attached_values_are_not_taken_for_typos(server, tmp_path, capsys):
    image = write_random_png(tmp_path / "a.png", 3)
    assert main(["encode", "-j2", "--serv", server, "--jso", str(tmp_path / "out.json"), str(image)]) == 0
    assert "1 encoded" in capsys.readouterr().out


def test_negative_coordinates_are_joined_to_their_flag():
    assert join_negative_coordinates(["segment", "--point", "-5,3", "--box", "-1,-2,3,4", "-i", "x"]) == [
        "segment",
        "--point=-5,3",
        "--box=-1,-2,3,4",
        "-i",
        "x",
    ]
    assert join_negative_coordinates(["--point", "5,3"]) == ["--point=5,3"]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--point=-5,3"], "--point -5,3"),
        (["--point", "-5,3"], "--point -5,3"),
        (["--point", "10,10", "--bg-point", "-1,20"], "--bg-point -1,20"),
        (["--box", "-5,3,100,100"], "--box -5,3,100,100"),
        (["--point", f"{WIDTH + 1},10"], f"--point {WIDTH + 1},10"),
    ],
)
def test_coordinates_outside_the_image_are_rejected_naming_the_flag(flags, named, tmp_path, capsys):
    output = tmp_path / "x.png"
    code = main(["segment", "-i", str(IMAGE), *flags, "--model-dir", str(references.MODEL_DIR), "-o", str(output)])
    err = capsys.readouterr().err
    assert code == 2  # a usage error, like argparse's own
    assert err.startswith(f"sam3: error: {named}: ")
    assert "outside the image" in err
    assert "Traceback" not in err
    assert not output.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--point", "5"], "--point '5': expected 2 comma-separated numbers (X,Y)"),
        (["--box", "1,2,3"], "--box '1,2,3': expected 4 comma-separated numbers"),
        ([], "give at least one --point, --bg-point or --box"),
        (["--point", "5,5", "--overlay", "out.gif"], "--overlay out.gif: use a .png, .jpg or .jpeg file name"),
    ],
)
def test_bad_prompt_flags_are_one_line_errors(flags, message, capsys):
    assert main(["segment", "-i", str(IMAGE), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_missing_model_folder_says_what_to_do(tmp_path, capsys):
    code = main(["segment", "-i", str(IMAGE), "--point", "5,5", "--model-dir", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 1
    assert "does not exist" in err
    assert "sam3 models export" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("given", ["models/sam3", "./models/sam3"])
def test_a_model_dir_that_reads_like_a_repo_id_is_a_folder_and_never_downloads(given, tmp_path, monkeypatch, capsys):
    """`--model-dir models/sam3` names a folder here: it says the folder is missing (and how to fetch the repo
    of that name) instead of trying the Hugging Face Hub (pointed at a closed port: a try would say so)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    code = main(["segment", "-i", str(IMAGE), "--point", "5,5", "--model-dir", given])
    err = capsys.readouterr().err
    assert code == 1
    assert "model folder models/sam3 does not exist" in err and "never downloads" in err
    assert "--model models/sam3" in err and "sam3 models pull --model models/sam3 --dir DIR" in err
    assert "cannot download" not in err and "Traceback" not in err


def test_a_hub_repo_that_cannot_be_reached_says_what_to_do(tmp_path, monkeypatch, capsys):
    """--model is the flag that downloads: without the Hub it fails within seconds, naming the way offline."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    code = main(["segment", "-i", str(IMAGE), "--point", "5,5", "--model", "models/sam3"])
    err = capsys.readouterr().err
    assert code == 1
    assert "cannot download models/sam3 from the Hugging Face Hub" in err and "--model-dir DIR" in err
    assert "Traceback" not in err


def test_missing_image_is_one_line(capsys):
    assert main(["segment", "-i", "no-such.jpg", "--point", "5,5"]) == 1
    err = capsys.readouterr().err
    assert "--image no-such.jpg: No such file or directory" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------- segment


def segment(capsys, tmp_path: Path, name: str, *flags: str) -> tuple[str, dict, Path]:
    """Runs `sam3 segment` in-process; returns (stdout, --json content, mask path)."""
    output, summary = tmp_path / f"{name}.png", tmp_path / f"{name}.json"
    code = main(["segment", "-i", str(IMAGE), "-o", str(output), "--json", str(summary), *flags])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out, json.loads(summary.read_text()), output


def test_segment_in_process_and_through_the_server_agree(server, prediction, tmp_path, capsys):
    local_out, local, local_png = segment(
        capsys, tmp_path, "local", *PROMPT_FLAGS, "--model-dir", str(references.MODEL_DIR)
    )
    remote_out, remote, remote_png = segment(capsys, tmp_path, "remote", *PROMPT_FLAGS, "--server", server)

    for out in (local_out, remote_out):
        assert SCORE_BLOCK.search(out), out
    assert local_out.split("Mask written")[0] == remote_out.split("Mask written")[0]  # same printed scores
    assert local["mode"] == "in-process"
    assert remote["mode"] == "server"
    assert local["model_id"] == remote["model_id"] == tiny_model_id()
    np.testing.assert_allclose(local["iou_scores"], prediction.iou_scores, atol=1e-6)
    np.testing.assert_allclose(remote["iou_scores"], local["iou_scores"], atol=1e-6)
    assert remote["presence"] == pytest.approx(local["presence"], abs=1e-6)
    for summary in (local, remote):
        assert (summary["width"], summary["height"]) == (WIDTH, HEIGHT)
        assert summary["mask_index"] == summary["best_index"] == prediction.best_index
        assert summary["points"] == [[192.0, 192.0], [384.0, 264.0]]
        assert summary["bg_points"] == [[544.0, 72.0]]
        assert summary["box"] is None
        assert summary["format"] == "png"

    local_mask, remote_mask = read_png_mask(local_png), read_png_mask(remote_png)
    assert local_mask.shape == remote_mask.shape == (HEIGHT, WIDTH)
    np.testing.assert_array_equal(local_mask, prediction.mask())
    assert references.agreement(remote_mask, local_mask) >= references.MIN_MASK_AGREEMENT
    assert local["area"] == int(local_mask.sum())
    assert 0 < local["area"] < WIDTH * HEIGHT


def test_segment_as_a_process_through_the_server(server, tmp_path):
    output = tmp_path / "mask.png"
    result = sam3("segment", "-i", str(IMAGE), *PROMPT_FLAGS, "--server", server, "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert SCORE_BLOCK.search(result.stdout)
    assert f"Mask written to {output} ({WIDTH}x{HEIGHT} PNG" in result.stdout
    assert read_png_mask(output).shape == (HEIGHT, WIDTH)


@pytest.mark.parametrize("mode", ["in-process", "server"])
def test_mask_index_writes_that_candidate(mode, server, prediction, tmp_path, capsys):
    index = (prediction.best_index + 1) % 3
    where = ["--model-dir", str(references.MODEL_DIR)] if mode == "in-process" else ["--server", server]
    out, summary, png = segment(capsys, tmp_path, mode, *PROMPT_FLAGS, "--mask-index", str(index), *where)
    assert f"Selected mask: {index}" in out
    assert summary["mask_index"] == index
    assert summary["best_index"] == prediction.best_index
    expected = prediction.mask(index)
    assert references.agreement(read_png_mask(png), expected) >= references.MIN_MASK_AGREEMENT
    assert references.agreement(read_png_mask(png), prediction.mask()) < 0.999  # a different candidate


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_overlay_tints_the_mask_and_draws_the_prompts(suffix, server, tmp_path, capsys):
    overlay = tmp_path / f"overlay{suffix}"
    flags = [*PROMPT_FLAGS, "--box", BOX, "--server", server, "--overlay", str(overlay)]
    _, summary, png = segment(capsys, tmp_path, "o", *flags)
    assert summary["overlay"] == str(overlay)
    with Image.open(overlay) as image:
        assert image.format == ("PNG" if suffix == ".png" else "JPEG")
        assert image.size == (WIDTH, HEIGHT)
        drawn = np.asarray(image.convert("RGB")).astype(int)
    original = load_image(IMAGE).astype(int)
    mask = read_png_mask(png)

    # Away from the dots and the box outline, only the mask changes the picture.
    ys, xs = np.mgrid[:HEIGHT, :WIDTH]
    near = np.zeros((HEIGHT, WIDTH), bool)
    for x, y in [(192, 192), (384, 264), (544, 72)]:
        near |= (xs - x) ** 2 + (ys - y) ** 2 <= 15**2
    x1, y1, x2, y2 = 128, 120, 448, 384
    on_box = (xs >= x1 - 6) & (xs <= x2 + 6) & (ys >= y1 - 6) & (ys <= y2 + 6)
    on_box &= ~((xs > x1 + 6) & (xs < x2 - 6) & (ys > y1 + 6) & (ys < y2 - 6))
    inside, outside = mask & ~near & ~on_box, ~mask & ~near & ~on_box
    assert inside.sum() > 1000 and outside.sum() > 1000
    tint = np.array([30, 144, 255])
    distance_to_tint = np.abs(drawn - tint).sum(axis=2)
    assert distance_to_tint[inside].mean() < 0.6 * np.abs(original - tint).sum(axis=2)[inside].mean()  # tinted
    if suffix == ".png":  # exact pixels: every mask pixel changed, nothing else did
        assert (np.abs(drawn - original).sum(axis=2)[inside] > 0).mean() > 0.99
        np.testing.assert_array_equal(drawn[outside], original[outside])

    # A green dot on each foreground click, a red one on the background click, the box edge in its colour.
    def colour_at(x: int, y: int) -> np.ndarray:
        return drawn[y, x]

    for x, y in [(192, 192), (384, 264)]:
        r, g, b = colour_at(x, y)
        assert g > 150 and r < 80 and b < 130, (x, y, (r, g, b))
    r, g, b = colour_at(544, 72)
    assert r > 180 and g < 80 and b < 80
    r, g, b = colour_at(300, y1)
    assert r > 200 and g > 150 and b < 80


@pytest.mark.parametrize("how", [["--format", "rle"], []])
def test_rle_output_decodes_to_the_png_mask(how, server, tmp_path, capsys):
    rle_path = tmp_path / ("mask.rle.json" if how else "mask.json")  # without --format: by the .json suffix
    code = main(["segment", "-i", str(IMAGE), *PROMPT_FLAGS, "--server", server, "-o", str(rle_path), *how])
    assert code == 0, capsys.readouterr().err
    assert f"Mask written to {rle_path} ({WIDTH}x{HEIGHT} RLE" in capsys.readouterr().out
    _, _, png = segment(capsys, tmp_path, "png", *PROMPT_FLAGS, "--server", server)
    rle = json.loads(rle_path.read_text())
    assert set(rle) == {"size", "counts"}
    assert rle["size"] == [HEIGHT, WIDTH]
    assert all(isinstance(c, int) for c in rle["counts"])
    assert sum(rle["counts"]) == HEIGHT * WIDTH
    np.testing.assert_array_equal(decode_rle(rle), read_png_mask(png))


def test_in_process_rle_matches_the_core(prediction, tmp_path, capsys):
    output = tmp_path / "m.json"
    flags = ["--format", "rle", "-o", str(output), "--model-dir", str(references.MODEL_DIR)]
    assert main(["segment", "-i", str(IMAGE), *PROMPT_FLAGS, *flags]) == 0
    np.testing.assert_array_equal(decode_rle(json.loads(output.read_text())), prediction.mask())


# ---------------------------------------------------------------- encode


def write_random_png(path: Path, seed: int) -> Path:
    rng = np.random.default_rng([seed, time.time_ns() % 2**32])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    return path


def test_encode_a_folder_twice_then_force(server, tmp_path, capsys):
    folder = tmp_path / "photos"
    images = [write_random_png(folder / "a.png", 1), write_random_png(folder / "nested" / "deeper" / "b.PNG", 2)]
    (folder / "nested" / "broken.jpg").write_bytes(b"this is not a jpeg")
    (folder / "notes.txt").write_text("not an image: skipped by extension")
    records = tmp_path / "encoded.json"

    first = sam3("encode", str(folder), "--server", server, "--json", str(records), "--progress")
    assert first.returncode == 1, first.stderr  # one file failed
    assert "Summary: 2 encoded, 0 cached, 1 failed (3 images" in first.stdout
    assert re.search(r"failed: .*broken\.jpg: the server cannot use the image", first.stdout)
    assert "img" in first.stderr  # the progress bar (tqdm) went to stderr
    assert "Traceback" not in first.stderr
    by_path = {Path(r["path"]).name: r for r in json.loads(records.read_text())}
    assert set(by_path) == {"a.png", "b.PNG", "broken.jpg"}
    for image in images:
        record = by_path[image.name]
        assert record["status"] == "encoded"
        assert record["image_id"] == hashlib.sha256(image.read_bytes()).hexdigest()
        assert (record["width"], record["height"]) == (40, 30)
    assert by_path["broken.jpg"]["status"] == "failed"

    assert main(["encode", str(folder), "--server", server]) == 1
    assert "Summary: 0 encoded, 2 cached, 1 failed (3 images" in capsys.readouterr().out

    assert main(["encode", str(images[0]), "--server", server, "--force"]) == 0
    assert "Summary: 1 encoded, 0 cached, 0 failed (1 image in" in capsys.readouterr().out


def test_encode_reports_missing_paths_and_needs_a_server(tmp_path, server, capsys):
    assert main(["encode", str(tmp_path / "nothing-here")]) == 2
    assert "needs a service: pass --server HOST:PORT" in capsys.readouterr().err
    assert main(["encode", str(tmp_path / "nothing-here"), "--server", server]) == 1
    out = capsys.readouterr().out
    assert "failed: " in out and "no such file or folder" in out
    (tmp_path / "empty").mkdir()
    assert main(["encode", str(tmp_path / "empty"), "--server", server]) == 1
    assert "no images" in capsys.readouterr().err


def test_encode_stops_when_the_server_is_unreachable(tmp_path, capsys):
    images = [write_random_png(tmp_path / f"{i}.png", i) for i in range(3)]
    target = dead_target()
    records = tmp_path / "encoded.json"
    assert main(["encode", *map(str, images), "--server", target, "--json", str(records)]) == 1
    captured = capsys.readouterr()
    assert f"cannot reach {target}: connection refused" in captured.err
    assert "stopped early, 3 not finished" in captured.out
    assert "Traceback" not in captured.err
    written = json.loads(records.read_text())
    assert [r["path"] for r in written] == list(map(str, images))
    assert {r["status"] for r in written} == {"unfinished"}
    assert all("the run stopped (cannot reach" in r["error"] for r in written)


def test_ctrl_c_stops_encode_within_the_calls_in_flight_and_writes_the_json(server, tmp_path):
    """SIGINT to a real `sam3 encode -j 2`: the calls in flight are cancelled, not waited for, and the
    images never started are not started; --json lists what finished and marks the rest; exit code 130."""
    jobs, count = 2, 24
    folder = tmp_path / "photos"
    for i in range(count):
        write_random_png(folder / f"{i:02}.png", 100 + i)
    records = tmp_path / "encoded.json"
    command = [str(SAM3)] if SAM3.exists() else [sys.executable, "-m", "sam3_cli"]
    flags = ["--server", server, "-j", str(jobs), "--json", str(records), "--progress"]
    # As from a terminal: SIGINT handled by default even when pytest itself runs where it is ignored
    # (a background job), which Python would pass on to the command, and Python then never raises Ctrl-C.
    as_typed = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    )
    command = [sys.executable, "-c", as_typed, *command]
    process = subprocess.Popen([*command, "encode", str(folder), *flags], stdout=PIPE, stderr=PIPE)
    progress = b""
    while not re.search(rb" [1-9]\d*/%d " % count, progress):  # tqdm's "n/24": the first image is done
        byte = process.stderr.read(1)
        assert byte, f"sam3 encode ended before the first image: {progress.decode(errors='replace')}"
        progress += byte
    finished_before = max(int(n) for n in re.findall(rb" (\d+)/%d " % count, progress))
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err.decode(errors="replace")
    assert "sam3: interrupted" in err.decode() and b"Traceback" not in err

    written = {Path(r["path"]).name: r for r in json.loads(records.read_text())}
    assert len(written) == count  # every image is listed, finished or not
    finished = [r for r in written.values() if r["status"] in ("encoded", "cached")]
    unfinished = [r for r in written.values() if r["status"] == "unfinished"]
    assert len(finished) + len(unfinished) == count
    assert finished_before <= len(finished) <= finished_before + jobs  # at most the calls in flight completed
    assert all(r["error"] == "not finished: interrupted (Ctrl-C)" for r in unfinished)
    assert f"interrupted, {len(unfinished)} not finished" in out.decode()
    assert sam3("health", "--target", server).returncode == 0  # the cancelled calls left the server serving


# ---------------------------------------------------------------- errors from the service


def test_unreachable_server_is_one_line_without_traceback(capsys):
    target = dead_target()
    assert main(["segment", "-i", str(IMAGE), "--point", "10,10", "--server", target]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"sam3: error: cannot reach {target}: connection refused. Is `sam3 serve` running there? "
        "(start one with: sam3 serve --model-dir DIR)"
    )
    assert "Traceback" not in err
    assert err.count("\n") == 1


def test_split_targets_name_the_one_that_is_down(server, tmp_path, capsys):
    """The decoder answers (NOT_FOUND: a new image), the encoder is down: the message names the encoder."""
    target = dead_target()
    image = write_random_png(tmp_path / "new.png", 7)
    flags = ["--encoder-server", target, "--decoder-server", server]
    assert main(["segment", "-i", str(image), "--point", "5,5", *flags]) == 1
    assert f"cannot reach {target}: connection refused" in capsys.readouterr().err


def test_debug_shows_the_traceback():
    result = sam3("segment", "-i", str(IMAGE), "--point", "10,10", "--server", dead_target(), "--debug")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "cannot reach" in result.stderr
    plain = sam3("--debug", "health", "--target", dead_target())  # --debug also before the command
    assert plain.returncode == 1
    assert "Traceback" in plain.stderr


def test_token_errors_mention_the_token_flag(redis_url, redis_namespace, capsys):
    with running(redis_url, redis_namespace, server={"auth_token": "s3cret"}) as stack:
        base = ["segment", "-i", str(IMAGE), "--point", "320,240", "--server", stack.target, "-o", os.devnull]
        assert main(base) == 1
        err = capsys.readouterr().err
        assert "refused the call" in err and "--token" in err
        assert main([*base, "--token", "s3cret"]) == 0
        assert "Segmentation scores:" in capsys.readouterr().out


def test_in_a_split_deployment_the_error_names_the_worker_that_refused(redis_url, redis_namespace, tmp_path, capsys):
    with (
        running(redis_url, redis_namespace, {ENCODER}, server={"auth_token": "s3cret"}) as encoder,
        running(redis_url, redis_namespace, {DECODER}) as decoder,
    ):
        image = write_random_png(tmp_path / "new.png", 23)  # not stored: the decoder answers, then Encode fails
        flags = ["--encoder-server", encoder.target, "--decoder-server", decoder.target]
        assert main(["segment", "-i", str(image), "--point", "5,5", *flags]) == 1
        err = capsys.readouterr().err
        assert f"{encoder.target} refused the call" in err and decoder.target not in err


FIELD = "objects[0].points[1].x"


def error(code: grpc.StatusCode, message: str, reason: Reason | None = None, **metadata: str) -> Sam3Error:
    return Sam3Error(code, message, reason, metadata)


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (
            error(grpc.StatusCode.UNAVAILABLE, "last error: ipv4:1.2.3.4:5: Connection refused"),
            "cannot reach host:1: connection refused. Is `sam3 serve` running there?",
        ),
        (error(grpc.StatusCode.UNAVAILABLE, "DNS resolution failed for nope:1"), "the host name does not resolve"),
        (
            error(grpc.StatusCode.UNAVAILABLE, "embedding store unavailable: x", Reason.STORE_UNAVAILABLE),
            "cannot reach its embedding store",
        ),
        (error(grpc.StatusCode.UNAVAILABLE, "draining", Reason.SHUTTING_DOWN), "is shutting down"),
        (error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), "did not answer within 10 s"),
        (error(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token", Reason.UNAUTHENTICATED), "--token TOKEN"),
        (
            error(grpc.StatusCode.INVALID_ARGUMENT, "objects[0].points[1].x: bad", Reason.INVALID_PROMPT, field=FIELD),
            "the server rejected --point 3,4: bad",
        ),
        (
            error(grpc.StatusCode.INVALID_ARGUMENT, "image: not an image", Reason.INVALID_IMAGE, field="image"),
            "the server cannot use the image: not an image",
        ),
        (error(grpc.StatusCode.RESOURCE_EXHAUSTED, "encoder busy", Reason.OVERLOADED), "is busy (encoder busy)"),
        (
            error(grpc.StatusCode.RESOURCE_EXHAUSTED, "image: too big", Reason.IMAGE_TOO_LARGE, limit="max_pixels"),
            "--max-image-pixels",
        ),
        (
            error(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (5 vs. 4)"),
            "--max-message-mb",
        ),
    ],
    ids=lambda v: f"{v.code.name}:{v.reason}" if isinstance(v, Sam3Error) else None,
)
def test_status_codes_become_sentences(failure, expected):
    flags = {FIELD: "--point 3,4"}
    assert expected in explain(failure, "host:1", flag_for=flags.get, timeout=10)


# ---------------------------------------------------------------- models


def make_hub_cache(root: Path, repo: str = "onnx-community/sam3-tracker-ONNX") -> Path:
    """A Hugging Face cache holding the tiny model as `repo` (blobs + snapshot symlinks, as the hub writes)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    graphs = ("vision_encoder", "prompt_encoder_mask_decoder")
    files = {
        (f"onnx/{p.name}" if p.name.startswith(graphs) else p.name): p.name
        for p in references.MODEL_DIR.iterdir()
        if p.is_file()
    }
    for relative, name in files.items():
        data = (references.MODEL_DIR / name).read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return root


@pytest.mark.parametrize(
    "offline",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}],  # offline mode / no route to the Hub
    ids=["HF_HUB_OFFLINE", "unreachable-endpoint"],
)
def test_models_pull_offline_fails_fast_saying_what_to_do(offline, tmp_path):
    started = time.monotonic()
    result = sam3("models", "pull", "--cache-dir", str(tmp_path / "hub"), "--dir", str(tmp_path / "out"), env=offline)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert elapsed < 10
    assert "cannot download onnx-community/sam3-tracker-ONNX" in result.stderr
    assert "--model-dir DIR" in result.stderr
    assert "sam3 models export --random-init" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("link", ["copy", "symlink"])
def test_models_pull_materialises_a_cached_model(link, tmp_path):
    cache = make_hub_cache(tmp_path / "hub")
    target = tmp_path / "models" / "sam3"
    result = sam3(
        "models", "pull", "--cache-dir", str(cache), "--dir", str(target), "--link", link, env={"HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stderr
    assert f"model id {tiny_model_id()}" in result.stdout
    assert f"sam3 serve --model-dir {target}" in result.stdout
    encoder = target / "onnx" / "vision_encoder.onnx"
    assert encoder.is_symlink() == (link == "symlink")
    assert encoder.read_bytes() == (references.MODEL_DIR / "vision_encoder.onnx").read_bytes()
    assert (target / "preprocessor_config.json").is_file()
    assert compute_model_id(graph_path(target, "vision_encoder", None), Preprocessing.from_folder(target)) == (
        tiny_model_id()
    )


def test_models_list_shows_local_folders_and_the_hub_cache(tmp_path, capsys):
    assert main(["models", "list", "--no-cache", "--dir", str(references.MODEL_DIR)]) == 0
    out = capsys.readouterr().out
    assert str(references.MODEL_DIR) in out
    assert f"model id {tiny_model_id()}" in out
    assert "serves: clicks and boxes (no concepts)" in out
    assert "video tracking: no (no video graphs)" in out
    video = references.FIXTURES / "model-tiny-video"
    assert main(["models", "list", "--no-cache", "--no-ids", "--dir", str(video)]) == 0
    assert "video tracking: yes" in capsys.readouterr().out
    for role, stem in (("encoder", "vision_encoder"), ("decoder", "prompt_encoder_mask_decoder")):
        size = human_size(graph_size(graph_path(references.MODEL_DIR, stem, None)))
        assert re.search(rf"{role}\s+fp32\s+{re.escape(size)}", out), (role, size, out)

    # A folder of model folders, and the hub cache, as JSON.
    cache = make_hub_cache(tmp_path / "hub")
    assert main(["models", "list", "--cache-dir", str(cache), "--dir", str(references.FIXTURES), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(f["origin"], f["repo_id"]) for f in listed] == [
        ("hub cache", "onnx-community/sam3-tracker-ONNX"),
        ("local", None),  # model-tiny
        ("local", None),  # model-tiny-concept
        ("local", None),  # model-tiny-video
    ]
    assert [f["concepts"] for f in listed] == [False, False, True, False]  # only the unified export serves concepts
    assert [f["tracking"] for f in listed] == [False, False, False, True]  # model-tiny-concept predates the graphs
    for folder in listed:
        assert folder["usable"]
        encoder = next(g for g in folder["graphs"] if g["role"] == "encoder")
        if folder["path"].endswith("model-tiny"):  # the others are different models: their own ids
            assert encoder["model_id"] == tiny_model_id()

    assert main(["models", "list", "--cache-dir", str(tmp_path / "empty")]) == 0
    assert "No model folders" in capsys.readouterr().err


def test_models_help_names_what_concepts_and_video_tracking_need(capsys):
    from sam3_core import graphs

    assert main(["models", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the description
    for name in (*graphs.CONCEPT_FILES, *graphs.VIDEO_FILES):
        assert name in out, name
    assert "says which folders serve concepts and which track videos" in out


def test_models_default_repo_matches_sources():
    from sam3_cli import models as cli_models
    from sam3_core import sources

    assert cli_models.DEFAULT_REPO == sources.DEFAULT_REPO


# ---------------------------------------------------------------- health


def test_health_of_a_live_server_and_a_dead_port(server):
    live = sam3("health", "--target", server)
    assert live.returncode == 0, live.stderr
    assert live.stdout.strip() == f"{server} (server): SERVING"
    decoder = sam3("health", "--target", server, "--service", "sam3.v1.DecoderService")
    assert decoder.returncode == 0
    unknown = sam3("health", "--target", server, "--service", "nope")
    assert unknown.returncode == 1
    assert "does not report health for 'nope'; it knows: '' (the whole worker), liveness" in unknown.stderr

    target = dead_target()
    started = time.monotonic()
    dead = sam3("health", "--target", target, "--timeout", "2")
    assert dead.returncode == 1
    assert time.monotonic() - started < 10
    assert f"cannot reach {target}: connection refused" in dead.stderr
    assert "Traceback" not in dead.stderr


def test_health_of_a_service_the_worker_lacks_names_the_ones_it_has(redis_url, redis_namespace, capsys):
    with running(redis_url, redis_namespace, {ENCODER}) as encoder:
        assert main(["health", "--target", encoder.target, "--service", "sam3.v1.DecoderService"]) == 1
    assert capsys.readouterr().err == (
        f"sam3: error: {encoder.target} does not report health for 'sam3.v1.DecoderService'; "
        "it knows: '' (the whole worker), liveness, sam3.v1.EncoderService\n"
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--auth-token", "bad token!"], "--auth-token must be a non-empty RFC 6750 bearer token"),
        (
            ["--auth-token", "a", "--tenants-file", "t"],
            "use either --auth-token (one shared namespace) or --tenants-file",
        ),
        (["--tenant-from", "cert"], "--tenant-from cert needs --tls-client-ca"),
        (["--tls-cert", "c.pem"], "TLS needs both --tls-cert and --tls-key"),
        (["--handler-threads", "4", "--max-streams", "4"], "--max-streams must be 1..3 (below the 4 handler threads"),
    ],
)
def test_worker_settings_errors_speak_flags_before_the_model_loads(flags, message, tmp_path, capsys):
    """The settings classes word their checks for Python callers (auth_token, None); the command names its flags.
    The folder does not exist: the settings are checked first, not after minutes of model loading."""
    assert main(["serve", "--model-dir", str(tmp_path / "not-loaded"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sam3: error: ") and message in err
    assert "None" not in err and not re.search(r"\b[a-z]+_[a-z_]+\b", err)  # no Python field names


def test_health_loads_no_model_runtime(server):
    """Container healthchecks run it every few seconds: grpc only, no torch, no ONNX Runtime."""
    script = (
        "import sys; from sam3_cli.main import main; code = main(['health', '--target', sys.argv[1]]); "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'transformers') if m in sys.modules)); sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", script, server], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


# ---------------------------------------------------------------- what a new user hit


@pytest.mark.parametrize(
    ("variable", "value", "argv", "message"),
    [
        ("SAM3_PORT", "abc", ["serve"], "SAM3_PORT='abc' from the environment: 'abc' is not a whole number"),
        ("SAM3_THREADS", "two", ["segment", "-i", "x.jpg", "--point", "1,1"], "SAM3_THREADS='two'"),
        ("SAM3_LOG_FORMAT", "yaml", ["decoder"], "SAM3_LOG_FORMAT='yaml' from the environment: choose one of"),
    ],
)
def test_a_malformed_variable_is_a_usage_error_only_where_it_is_used(
    variable, value, argv, message, monkeypatch, capsys
):
    monkeypatch.setenv(variable, value)
    assert main(["--help"]) == 0
    assert main(["models", "list", "--no-cache", "--dir", str(references.MODEL_DIR), "--no-ids"]) == 0
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("flags", [["--threads", "-1"], ["--port", "70000x"], ["--max-points", "0"]])
def test_out_of_range_numbers_are_usage_errors(flags, capsys):
    assert main(["serve", *flags]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_a_typed_model_flag_beats_the_images_model_dir(monkeypatch):
    from sam3_cli.main import build_parser
    from sam3_cli.options import model_source

    monkeypatch.setenv("SAM3_MODEL_DIR", "/models")  # what the container image presets
    assert model_source(build_parser().parse_args(["encoder", "--model", "owner/repo"])) == "owner/repo"
    monkeypatch.setenv("SAM3_MODEL", "owner/other")  # both from the environment: the folder wins
    assert model_source(build_parser().parse_args(["encoder"])) == Path("/models")


def test_a_file_that_is_not_an_image_is_named(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture\n")
    assert main(["segment", "-i", str(notes), "--point", "1,1", "--server", dead_target()]) == 1
    err = capsys.readouterr().err
    assert f"--image {notes}: not an image file" in err and "BytesIO" not in err


@pytest.mark.parametrize(
    ("target", "advice"),
    [
        ("localhost", "localhost has no port (gRPC would dial 443): give HOST:PORT, e.g. {flag} localhost:50051"),
        (
            "127.0.0.1:5005x",
            "has the port '5005x', not a number from 1 to 65535: give HOST:PORT, e.g. {flag} 127.0.0.1:50051",
        ),
        ("[::1]", "[::1] has no port (gRPC would dial 443): give HOST:PORT, e.g. {flag} [::1]:50051"),
        ("dns:///sam3", "give HOST:PORT, e.g. {flag} dns:///sam3:50051"),
        (
            "http://localhost:50051",
            "is a URL, and a gRPC target has no scheme: give HOST:PORT, e.g. {flag} localhost:50051",
        ),
        ("https://sam3.example.com:443/", "e.g. {flag} sam3.example.com:443 with --tls"),
    ],
)
def test_a_target_grpc_would_misread_is_a_usage_error_with_the_fix(target, advice, capsys):
    """One rule (the SDK's sam3_client.targets) for every flag that takes a target; nothing is dialled."""
    image = str(IMAGE)
    commands = {
        "--server": [
            ["segment", "-i", image, "--point", "1,1"],
            ["segment", "-i", image, "--text", "cat"],
            ["encode", image],
        ],
        "--encoder-server": [["segment", "-i", image, "--point", "1,1", "--decoder-server", "127.0.0.1:1"]],
        "--decoder-server": [["segment", "-i", image, "--point", "1,1", "--encoder-server", "127.0.0.1:1"]],
        "--target": [["health"]],
    }
    for flag, lines in commands.items():
        for line in lines:
            assert main([*line, flag, target]) == 2, (flag, line)
            assert f"sam3: error: {flag} {target} " in (err := capsys.readouterr().err)
            assert advice.format(flag=flag) in err, err


def test_forgetting_server_mentions_server_when_the_default_model_cannot_be_fetched(tmp_path):
    offline = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path), "SAM3_MODEL_DIR": "", "SAM3_MODEL": ""}
    result = sam3("segment", "-i", str(IMAGE), "--point", "1,1", env=offline)
    assert result.returncode == 1
    assert "pass --server HOST:PORT" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["-o", "/nonexistent/dir/m.png"],
            "--output /nonexistent/dir/m.png: the folder /nonexistent/dir does not exist",
        ),
        (["-o", "mask.jpg"], "--output mask.jpg: a PNG mask file needs a .png name"),
        (["-o", "m.png", "--format", "rle"], "--output m.png: a RLE mask file needs a .json name"),
        (["--json", "/nonexistent/s.json"], "--json /nonexistent/s.json: the folder /nonexistent does not exist"),
    ],
)
def test_outputs_are_checked_before_any_work(flags, message, capsys):
    """A dead server proves it: the usage error comes before any attempt to reach it."""
    assert main(["segment", "-i", str(IMAGE), "--point", "1,1", "--server", dead_target(), *flags]) == 2
    assert message in capsys.readouterr().err


def test_a_busy_port_is_one_clear_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = sam3("serve", "--model-dir", str(references.MODEL_DIR), "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"sam3: error: cannot listen on 127.0.0.1:{port}: the port is in use (or the address is not this "
        "machine's); choose another with --port / SAM3_PORT"
    ]


def test_a_tls_mistake_prints_no_grpc_logs(server):
    result = sam3("health", "--target", server, "--tls", "--timeout", "2")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("sam3: error: ")


def test_make_serve_listens_on_loopback_only():
    dry_run = subprocess.run(["make", "-n", "serve"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "--host 127.0.0.1" in dry_run


def test_models_export_help_says_the_default_is_the_full_size(capsys):
    assert main(["models", "export", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    assert "full (the default: the real architecture, minutes and ~12 GB of RAM)" in text


def test_segment_refines_an_earlier_run_and_writes_polygons(server, tmp_path, capsys):
    """The annotation loop on the command line: --save-logits + --json, then --refine with one more click
    (in-process and through the server, the same answer); --object-key lets the worker keep the mask;
    --format polygon writes COCO polygons that fill back to the mask."""
    first = segment(
        capsys,
        tmp_path,
        "first",
        "--point",
        "320,240",
        "--save-logits",
        str(tmp_path / "first.npy"),
        "--model-dir",
        str(references.MODEL_DIR),
    )[1]
    assert first["logits"] == str(tmp_path / "first.npy") and np.load(tmp_path / "first.npy").shape == (288, 288)
    refine = ("--refine", str(tmp_path / "first.json"), "--bg-point", "100,100")
    out, local, _ = segment(capsys, tmp_path, "local", *refine, "--model-dir", str(references.MODEL_DIR))
    assert "Refined from the previous mask" in out and local["mask_input_used"]
    assert local["points"] == [[320.0, 240.0]] and local["bg_points"] == [[100.0, 100.0]]
    _, remote, _ = segment(capsys, tmp_path, "remote", *refine, "--server", server)
    np.testing.assert_allclose(remote["iou_scores"], local["iou_scores"], atol=1e-5)

    keyed = segment(capsys, tmp_path, "keyed", "--point", "320,240", "--object-key", "cli-car", "--server", server)[1]
    assert keyed["object_key"] == "cli-car" and keyed["logits"] is None
    out, again, _ = segment(
        capsys, tmp_path, "again", "--refine", str(tmp_path / "keyed.json"), "--bg-point", "100,100", "--server", server
    )
    assert again["mask_input_used"] and np.allclose(again["iou_scores"], local["iou_scores"], atol=1e-5)

    outline = tmp_path / "outline.json"
    code = main(
        [
            "segment",
            "-i",
            str(IMAGE),
            "--point",
            "320,240",
            "--format",
            "polygon",
            "--polygon-tolerance",
            "0",
            "-o",
            str(outline),
            "--server",
            server,
        ]
    )
    assert code == 0
    written = json.loads(outline.read_text())
    from sam3_client.masks import rasterize_polygons

    filled = rasterize_polygons(written["segmentation"], *written["size"])
    assert filled.sum() == int(re.search(r"(\d+) foreground pixels", capsys.readouterr().out).group(1))
    assert len(written["holes"]) == len(written["segmentation"]) and written["tolerance"] == 0
    assert (
        main(
            [
                "segment",
                "-i",
                str(IMAGE),
                "--point",
                "1,1",
                "--object-key",
                "k",
                "--model-dir",
                str(references.MODEL_DIR),
            ]
        )
        == 2
    )
