"""The wire contract from another language: a Node.js client (tests/node/) against a live `sam3 serve`.

Node loads the .proto files at run time with @grpc/grpc-js, decodes RLE and packed bits itself and
reads the standard rich error details; every mask and score it gets must equal, bit for bit, what the
Python SDK gets for the same requests. Prompts are fresh random ones each run (the seed is in any
failure message). Needs node and npm (`npm ci` runs here when tests/node's lock file changed).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import references
from sam3_client import Client, ObjectPrompt
from service_stack import serve_subprocess

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "tests" / "node"
IMAGE = references.IMAGES_DIR / "landscape.jpg"  # 640 x 480
WIDTH, HEIGHT = 640, 480
FORMATS = {
    "MASK_FORMAT_PNG": "png",
    "MASK_FORMAT_RLE": "rle",
    "MASK_FORMAT_PACKED_BITS": "bits",
    "MASK_FORMAT_NONE": "none",
}
SELECTIONS = {"MASK_SELECTION_BEST": "best", "MASK_SELECTION_ALL": "all"}
LABELS = {"POINT_LABEL_FOREGROUND": 1, "POINT_LABEL_BACKGROUND": 0}


def readme_tour() -> tuple[str, list[str], list[str]]:
    """The README's Node.js script, the commands that install and run it, and what they print."""
    found = re.search(r"```js\n(.*?)```\n.*?```console\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert found, "the README shows a Node.js script followed by the console commands that run it"
    script, console = found.groups()
    commands = [line[2:] for line in console.splitlines() if line.startswith("$ ")]
    return script, commands, [line for line in console.splitlines() if not line.startswith("$ ")]


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with tests/node's packages installed exactly as locked, by the README's own
    install command run from the repository root (again only when the lock file changed)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not on PATH: the second-language client test needs Node.js >= 18")
    install = readme_tour()[1][0]
    assert install.startswith("npm ci --prefix tests/node"), install
    lock = (NODE_DIR / "package-lock.json").read_bytes()
    stamp = NODE_DIR / "node_modules" / ".sam3-lock-sha256"
    if not stamp.is_file() or stamp.read_text() != hashlib.sha256(lock).hexdigest():
        command = [npm, *shlex.split(install)[1:]]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
        assert result.returncode == 0, f"{install} failed:\n{result.stdout}{result.stderr}"
        stamp.write_text(hashlib.sha256(lock).hexdigest())
    return node


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A real `sam3 serve` process on the tiny model."""
    with serve_subprocess() as (_process, target):
        yield target


def random_cases(rng: np.random.Generator) -> list[dict[str, Any]]:
    """Clicks (fractional pixels, both labels), boxes, several objects, and every selection."""

    def point(label: str | None = None) -> list[Any]:
        label = label or str(rng.choice(list(LABELS)))
        return [round(float(rng.uniform(0, WIDTH)), 3), round(float(rng.uniform(0, HEIGHT)), 3), label]

    def box() -> list[float]:
        x1, y1 = float(rng.uniform(0, WIDTH / 2)), float(rng.uniform(0, HEIGHT / 2))
        return [x1, y1, x1 + float(rng.uniform(20, WIDTH / 2)), y1 + float(rng.uniform(20, HEIGHT / 2))]

    return [
        {
            "objects": [{"points": [point("POINT_LABEL_FOREGROUND"), point("POINT_LABEL_BACKGROUND")]}],
            "selection": "MASK_SELECTION_ALL",
        },
        {"objects": [{"points": [point() for _ in range(3)], "box": box()}], "selection": "MASK_SELECTION_BEST"},
        {
            "objects": [{"points": [point("POINT_LABEL_FOREGROUND")]}, {"points": [], "box": box()}],
            "selection": "MASK_SELECTION_INDEX",
            "mask_index": int(rng.integers(0, 3)),
        },
    ]


def sdk_segment(client: Client, case: dict[str, Any], mask_format: str) -> Any:
    """The same request through the Python SDK (labels as SAM's 1 / 0, selection as its option)."""
    objects = [
        ObjectPrompt([p[:2] for p in o["points"]], [LABELS[p[2]] for p in o["points"]], o.get("box"))
        for o in case["objects"]
    ]
    mask = case["mask_index"] if case["selection"] == "MASK_SELECTION_INDEX" else SELECTIONS[case["selection"]]
    return client.segment_objects(IMAGE, objects, mask=mask, mask_format=mask_format)


def png_mask(encoded: str) -> np.ndarray:
    """The PNG bytes Node received (base64), decoded here: Node reports RLE and bits decoded itself."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded)))) > 0


def assert_same_result(node_result: dict[str, Any], sdk_result: Any, where: str) -> None:
    assert (node_result["width"], node_result["height"]) == (sdk_result.width, sdk_result.height), where
    assert len(node_result["objects"]) == len(sdk_result.objects), where
    for i, (ours, theirs) in enumerate(zip(node_result["objects"], sdk_result.objects, strict=True)):
        at = f"{where} object {i}"
        # JSON carries JavaScript's doubles exactly; float32 -> double is exact on both sides.
        assert ours["iou_scores"] == theirs.iou_scores and ours["best_index"] == theirs.best_index, at
        assert ours["presence_probability"] == theirs.presence, at
        assert [m["index"] for m in ours["masks"]] == [m.index for m in theirs.masks], at
        for mine, sdk in zip(ours["masks"], theirs.masks, strict=True):
            assert (mine["iou_score"], mine["area"], tuple(mine["bbox"])) == (sdk.iou_score, sdk.area, sdk.bbox), at
            if sdk.mask is None:
                assert mine["format"] == "MASK_FORMAT_NONE" and "sha256" not in mine and "png" not in mine, at
                continue
            if "png" in mine:
                np.testing.assert_array_equal(png_mask(mine["png"]), sdk.mask, err_msg=at)
            else:  # the row-major 0/1 bytes Node decoded, by their sha256
                pixels = np.ascontiguousarray(sdk.mask, dtype=np.uint8).tobytes()
                assert mine["sha256"] == hashlib.sha256(pixels).hexdigest(), at


def run_node(node: str, script: str, stdin: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [node, script], input=stdin, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env, check=False
    )
    assert result.returncode == 0, f"node {script} failed:\n{result.stderr}"
    return result.stdout


def details(error: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The google.rpc.Status details Node unpacked, by type name."""
    return {detail["type"]: detail for detail in error["status"]["details"]}


@pytest.fixture(scope="module")
def node_run(node: str, server: str) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """One run of the Node client on fresh random prompts: (seed, cases, what Node saw)."""
    seed = secrets.randbits(32)
    cases = random_cases(np.random.default_rng(seed))
    spec = {"target": server, "protoRoot": str(ROOT / "protos"), "image": str(IMAGE), "cases": cases}
    return seed, cases, json.loads(run_node(node, str(NODE_DIR / "wire_client.js"), json.dumps(spec)))


def test_node_client_gets_what_the_python_sdk_gets(node_run: tuple[int, list, dict], server: str) -> None:
    seed, cases, out = node_run
    with Client(server) as client:
        for c, (case, by_format) in enumerate(zip(cases, out["segments"], strict=True)):
            for wire_name, sdk_name in FORMATS.items():
                expected = sdk_segment(client, case, sdk_name)
                assert_same_result(by_format[wire_name], expected, f"seed {seed} case {c} {sdk_name}")

    # SegmentStream: one answer per request, in order, equal to the unary answer; a failure is an item.
    stream = out["stream"]
    assert [r["request_id"] for r in stream] == [*map(str, range(len(cases))), "missing"]
    for c, answer in enumerate(stream[:-1]):
        assert answer == {**out["segments"][c]["MASK_FORMAT_RLE"], "request_id": str(c)}, f"seed {seed} stream {c}"
    assert stream[-1]["error"]["code"] == 5 and stream[-1]["error"]["info"]["reason"] == "EMBEDDING_NOT_FOUND"


def test_node_client_reads_the_standard_error_details(node_run: tuple[int, list, dict]) -> None:
    errors = node_run[2]["errors"]

    not_found = errors["not_found"]
    assert not_found["code"] == not_found["status"]["code"] == 5
    info = details(not_found)["google.rpc.ErrorInfo"]
    assert (info["reason"], info["domain"]) == ("EMBEDDING_NOT_FOUND", "sam3.v1")
    assert info["metadata"]["image_id"] == "0" * 64

    for name, field in (("label_zero", "objects[0].points[0].label"), ("misspelt_format", "mask_format")):
        error = errors[name]
        assert error["code"] == error["status"]["code"] == 3, name
        found = details(error)
        assert found["google.rpc.ErrorInfo"]["reason"] == "INVALID_PROMPT", name
        (violation,) = found["google.rpc.BadRequest"]["field_violations"]
        assert violation["field"] == field and "not set" in violation["description"], name


def js_snippets() -> list[tuple[str, str]]:
    """(document, code) of every ```js block in docs/ (the README's is run by its own instructions, below)."""
    docs = sorted((ROOT / "docs").glob("*.md"))
    return [(d.name, block) for d in docs for block in re.findall(r"```js\n(.*?)```", d.read_text(), re.S)]


def test_the_docs_show_node_calls() -> None:
    assert {doc for doc, _ in js_snippets()} >= {"api.md"}
    assert readme_tour()[0].startswith('const grpc = require("@grpc/grpc-js");')


def test_the_readme_node_tour_runs_as_written(node: str, server: str, tmp_path: Path) -> None:
    """The README's commands, as a user types them, in a folder laid out like the repository root (its
    protos/ and tests/), with nothing in the environment that the README does not set (no NODE_PATH)."""
    script, (_install, run), printed = readme_tour()
    name = re.fullmatch(r"NODE_PATH=\S+ node (\S+\.js)", run)
    assert name, run
    for folder in ("protos", "tests"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    (tmp_path / name[1]).write_text(script.replace("localhost:50051", server), encoding="utf-8")
    environment = {key: value for key, value in os.environ.items() if key != "NODE_PATH"}
    result = subprocess.run(
        run, shell=True, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{run} failed:\n{result.stderr}"
    assert result.stdout.splitlines() == printed


@pytest.mark.parametrize(("doc", "snippet"), js_snippets(), ids=lambda value: value if value.endswith(".md") else "")
def test_documented_node_snippets_print_what_they_say(
    node: str, server: str, tmp_path: Path, doc: str, snippet: str
) -> None:
    """Each snippet ends with its output as // comments; run as printed (against the test server), with
    the packages where the README's tour puts them."""
    lines = snippet.rstrip().splitlines()
    expected: list[str] = []
    while lines and lines[-1].startswith("// "):
        expected.insert(0, lines.pop()[3:])
    assert expected, f"a js snippet in {doc} must end with its output as // comment lines"
    script = tmp_path / "snippet.js"
    script.write_text(snippet.replace("localhost:50051", server), encoding="utf-8")
    env = {**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")}
    assert run_node(node, str(script), "", env=env).splitlines() == expected
