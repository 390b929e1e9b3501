"""The Label Studio ML backend against a real Label Studio: the commands the README gives, Label Studio's
own API, and Label Studio's own RLE decoder reading back what it stored.

A venv of its own gets label-studio and label-studio-sdk (pinned: the versions this was proved with)
plus client/ and labelstudio/, exactly as labelstudio/README.md installs them; Label Studio runs on
SQLite in a temporary folder, on loopback; sam3 is the tiny concept model in this process.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import concept_references
from sam3_client import Client
from sam3_serving.redis_server import start_embedded_redis
from service_stack import Stack, running
from test_concept_service import unified_model

# Minutes: pip installs Label Studio (~1 GB) into a fresh venv, then Label Studio migrates its database.
pytestmark = [pytest.mark.labelstudio, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parent.parent
LABEL_STUDIO = ("label-studio==1.23.2", "label-studio-sdk==2.1.2")
IMAGES = [concept_references.IMAGES_DIR / name for name in ("landscape.jpg", "portrait.png")]
USER, PASSWORD, LEGACY_TOKEN = "annotator@example.com", "annotate-123", "legacy0123456789"
THRESHOLD = "0.45"  # the tiny random-weight model scores "Dog" 0.42-0.48 on landscape.jpg: keep a few
README = (ROOT / "labelstudio" / "README.md").read_text()
CONFIG = re.search(r"^```xml\n(.*?)^```", README, re.M | re.S).group(1)  # the README's labelling config
# Runs in the Label Studio venv: Label Studio's own decoder and encoder on what it stored.
DECODE = textwrap.dedent(
    """
    import base64, json, sys
    import numpy as np
    from label_studio_sdk.converter.brush import decode_rle, mask2rle
    answers = []
    for region in json.load(sys.stdin):
        height, width = region["original_height"], region["original_width"]
        values = decode_rle(bytes(region["value"]["rle"])).reshape(height, width, 4)
        mask = values[:, :, 3] > 0
        answers.append({
            "bits": base64.b64encode(np.packbits(mask)).decode(),
            "channels_equal": bool((values == values[:, :, :1]).all()),
            "same_as_mask2rle": list(mask2rle(mask.astype(np.uint8) * 255)) == region["value"]["rle"],
        })
    print(json.dumps(answers))
    """
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def readme_commands(block: int = 0) -> list[str]:
    """The commands of labelstudio/README.md's bash blocks: 0 installs and serves, 1 pre-encodes a project."""
    commands = re.findall(r"^```bash\n(.*?)^```", README, re.M | re.S)[block].strip().splitlines()
    assert len(commands) == 2
    return commands


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with Label Studio, and the backend installed by the README's command from a copy of the repository.

    LABEL_STUDIO_VENV names an existing venv that has those Label Studio versions, to skip minutes of pip
    while working on the backend: the README's install command still runs in it."""
    work = tmp_path_factory.mktemp("label-studio")
    for folder in ("client", "labelstudio"):
        shutil.copytree(ROOT / folder, work / folder, ignore=shutil.ignore_patterns("*.egg-info", "build"))
    started = time.monotonic()
    reused = os.environ.get("LABEL_STUDIO_VENV")
    if not reused:
        subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True, timeout=600)
    bin_dir = Path(reused or work / "venv") / "bin"
    install = shlex.split(readme_commands()[0])[2:]
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    ran = subprocess.run([*pip, *LABEL_STUDIO, *install], cwd=work, capture_output=True, text=True, timeout=1200)
    assert ran.returncode == 0, f"pip install failed:\n{ran.stdout}{ran.stderr}"
    print(f"\nLabel Studio venv installed in {time.monotonic() - started:.0f} s")
    return bin_dir


class LabelStudioServer:
    """`label-studio start` on SQLite in a temporary folder, on loopback, with a user and a legacy token."""

    def __init__(self, bin_dir: Path, data: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "LABEL_STUDIO_BASE_DATA_DIR": str(data),
            # The backend is on this machine: Label Studio refuses local addresses for models and webhooks
            # unless told (the README says so too).
            "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false",
            "COLLECT_ANALYTICS": "false",
            "LATEST_VERSION_CHECK": "false",
        }
        command = [str(bin_dir / "label-studio"), "start", "--no-browser", "--internal-host", "127.0.0.1"]
        command += ["--port", str(self.port), "--data-dir", str(data), "--username", USER, "--password", PASSWORD]
        command += ["--user-token", LEGACY_TOKEN, "--enable-legacy-api-token"]
        self.log = data / "label-studio.log"
        started = time.monotonic()
        self.process = subprocess.Popen(command, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        wait_for(f"{self.url}/health", self.process, self.log, timeout=300)
        print(f"Label Studio answered /health {time.monotonic() - started:.0f} s after start")

    def call(self, method: str, path: str, body: Any = None, **options: Any) -> Any:
        """Label Studio's REST API as the user (legacy token)."""
        data = options.get("raw") if "raw" in options else (None if body is None else json.dumps(body).encode())
        headers = {"Authorization": f"Token {LEGACY_TOKEN}", "Content-Type": options.get("type", "application/json")}
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{method} {path}: HTTP {error.code} {error.read()[:2000]!r}") from error

    def upload(self, project: int, files: list[Path]) -> Any:
        """Import image files as tasks, as the Import dialog does (multipart)."""
        boundary = uuid.uuid4().hex
        body = b""
        for path in files:
            disposition = f'form-data; name="{path.name}"; filename="{path.name}"'  # one field per file
            body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
            body += b"Content-Type: application/octet-stream\r\n\r\n" + path.read_bytes() + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        return self.call(
            "POST", f"/api/projects/{project}/import", raw=body, type=f"multipart/form-data; boundary={boundary}"
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"{url}: the process exited:\n{log.read_text()[-4000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            assert time.monotonic() < deadline, f"{url} did not answer in {timeout:.0f} s:\n{log.read_text()[-4000:]}"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def sam3() -> Iterator[Stack]:
    """The tiny concept model on a Redis of its own: each image stores ~130 MB of click and concept features,
    and the test keeps two images stored (the session's 256 MB server would evict one)."""
    with ExitStack() as stack:
        url = os.environ.get("REDIS_URL") or stack.enter_context(start_embedded_redis(maxmemory="1gb")).url
        yield stack.enter_context(running(url, f"label-studio-{uuid.uuid4().hex[:8]}", model=unified_model()))


@pytest.fixture(scope="module")
def label_studio(venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    server = LabelStudioServer(venv, tmp_path_factory.mktemp("label-studio-data"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def backend(venv: Path, sam3: Stack, label_studio: LabelStudioServer, tmp_path_factory) -> Iterator[str]:
    """The README's serve command, pointed at this sam3, reading images with a personal access token."""
    token = label_studio.call("POST", "/api/token")["token"]  # a personal access token (a JWT)
    port = free_port()
    serve = shlex.split(readme_commands()[1].replace("localhost:50051", sam3.target))
    env = {**os.environ, "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": token}
    log = tmp_path_factory.mktemp("backend") / "backend.log"
    process = subprocess.Popen(
        [str(venv / serve[0]), *serve[1:], "--port", str(port), "--threshold", THRESHOLD],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", process, log, timeout=60)
        yield url
    finally:
        process.terminate()
        process.wait(20)
        print(log.read_text()[-20000:])


def decoded(venv: Path, regions: list[dict[str, Any]]) -> list[np.ndarray]:
    """The masks Label Studio's own decoder reads from `regions` (checked to re-encode to the same bytes)."""
    ran = subprocess.run(
        [str(venv / "python"), "-c", DECODE], input=json.dumps(regions), capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stderr
    masks = []
    for region, answer in zip(regions, json.loads(ran.stdout), strict=True):
        assert answer["channels_equal"] and answer["same_as_mask2rle"]
        bits = np.frombuffer(base64.b64decode(answer["bits"]), np.uint8)
        count = region["original_height"] * region["original_width"]
        masks.append(np.unpackbits(bits, count=count).reshape(region["original_height"], -1).astype(bool))
    return masks


def keypoint(x: float, y: float, label: str = "Dog", positive: bool = True) -> dict[str, Any]:
    """A smart keypoint as Label Studio's editor sends it, at pixel (x, y) of the 640 x 480 image."""
    return {
        "id": uuid.uuid4().hex[:10],
        "from_name": "click",
        "to_name": "image",
        "type": "keypointlabels",
        "original_width": 640,
        "original_height": 480,
        "image_rotation": 0,
        "value": {"x": x / 6.4, "y": y / 4.8, "width": 0.5, "keypointlabels": [label]},
        "is_positive": positive,
        "origin": "manual",
    }


def test_label_studio_stores_the_masks_the_sdk_computes(
    venv: Path, sam3: Stack, label_studio: LabelStudioServer, backend: str
) -> None:
    started = time.monotonic()
    project = label_studio.call("POST", "/api/projects", {"title": "sam3", "label_config": CONFIG})["id"]
    model = label_studio.call(
        "POST", "/api/ml", {"project": project, "url": backend, "title": "sam3", "is_interactive": True}
    )
    assert model["state"] == "CO", model  # /health and /setup answered: connected
    assert model["model_version"].startswith("sam3-")

    # Import: Label Studio tells the backend (webhook TASKS_CREATED), which encodes both images ahead.
    assert label_studio.upload(project, IMAGES)["task_count"] == 2
    tasks = label_studio.call("GET", f"/api/tasks?project={project}&fields=all")["tasks"]
    task = next(t["id"] for t in tasks if t["data"]["image"].endswith("landscape.jpg"))
    deadline = time.monotonic() + 240
    while (progress := json.load(urllib.request.urlopen(f"{backend}/health"))["pre_encode"])["waiting"] or (
        progress["encoded"] + progress["cached"] + progress["failed"] < 2
    ):
        assert time.monotonic() < deadline, progress
        time.sleep(0.5)
    assert progress["failed"] == 0, progress
    with Client(sam3.target) as client:
        for path in IMAGES:  # by id alone: only an image stored before anyone clicked answers
            image_id = client.encode(path.read_bytes()).image_id
            assert client.segment(image_id, points=[[10, 10]]).mask is not None

        # Auto-annotation: a click and an Alt-click, through Label Studio's interactive endpoint.
        clicks = [keypoint(300, 200, "Dog"), keypoint(20, 20, "Dog", positive=False)]
        answer = label_studio.call(
            "POST", f"/api/ml/{model['id']}/interactive-annotating", {"task": task, "context": {"result": clicks}}
        )
        assert "errors" not in answer, answer
        (region,) = answer["data"]["result"]
        expected = client.segment(IMAGES[0], points=[[300, 200], [20, 20]], labels=[1, 0]).mask
        assert np.array_equal(decoded(venv, [region])[0], expected)

        # The annotator accepts it and submits: what Label Studio stored decodes to the same mask.
        created = label_studio.call("POST", f"/api/tasks/{task}/annotations", {"result": [region]})
        stored = label_studio.call("GET", f"/api/annotations/{created['id']}")["result"]
        assert stored[0]["value"]["brushlabels"] == ["Dog"]
        assert np.array_equal(decoded(venv, stored)[0], expected)

        # "Retrieve predictions" on every task: every "Dog" (the label as a concept phrase) on each.
        label_studio.call(
            "POST",
            f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
            {"selectedItems": {"all": True, "excluded": []}},
        )
        (prediction,) = label_studio.call("GET", f"/api/predictions?task={task}")
        concepts = client.segment_concept(IMAGES[0], ["Cat", "Dog"], threshold=float(THRESHOLD)).concepts
    expected = [
        (label, i.mask) for label, c in zip(("Cat", "Dog"), concepts, strict=True) for i in c.instances if i.area
    ]
    assert prediction["model_version"] == model["model_version"]
    assert [r["value"]["brushlabels"] for r in prediction["result"]] == [[label] for label, _ in expected]
    assert len(expected) >= 2
    for mask, (_, instance) in zip(decoded(venv, prediction["result"]), expected, strict=True):
        assert np.array_equal(mask, instance)

    # A prompt sam3 cannot take is said in Label Studio's words, on the labelling screen.
    rotated = dict(keypoint(300, 200), image_rotation=90)
    refused = label_studio.call(
        "POST", f"/api/ml/{model['id']}/interactive-annotating", {"task": task, "context": {"result": [rotated]}}
    )
    assert "rotate it back to 0 degrees" in refused["errors"][0], refused
    print(f"project, import, pre-encode, click, annotation, predictions: {time.monotonic() - started:.0f} s")

    # The README's command for a project imported before the model was connected: every image is stored.
    exported, command = readme_commands(1)
    assert exported.startswith("export LABEL_STUDIO_URL=") and "LABEL_STUDIO_API_KEY=" in exported
    command = command.replace("--project 3", f"--project {project}").replace("localhost:50051", sam3.target)
    arguments = [*shlex.split(command), "--log-level", "DEBUG"]
    print("pre-encoded by the webhook:", json.load(urllib.request.urlopen(f"{backend}/health"))["pre_encode"])
    environment = {**os.environ, "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": LEGACY_TOKEN}
    ran = subprocess.run(
        [str(venv / arguments[0]), *arguments[1:]], env=environment, capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().endswith("2/2 images: 0 encoded, 2 cached, 0 failed"), ran.stdout + ran.stderr
