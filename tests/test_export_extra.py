"""The export extra as a user installs it: the README's offline command in a fresh venv, then an export.

Nothing else is in that venv (not the torch environment the fixtures were made with), so an export
dependency the extra forgets (torchvision, for transformers' SAM3 geometry encoder) fails here the way
it fails for a user. Minutes of pip (torch, torchvision, transformers): measured 6.4 min on the shared
2-core machine (pip 285 s, the tiny export 89 s). `make test-export-extra` runs it, `make test` does not
(tests/conftest.py).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.export_extra, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parent.parent
README = " ".join((ROOT / "README.md").read_text().split())
# What a clone holds that `pip install -e` reads: the two distributions' sources and metadata.
SOURCES = ("pyproject.toml", "README.md", "client", *sorted(p.name for p in ROOT.glob("sam3_*")))
SOURCES += ("encoder_service", "decoder_service")


def offline_commands() -> tuple[list[str], list[str]]:
    """The README's offline path: its install command and its export command."""
    found = re.search(r"\*\*Offline:\*\* `(pip install [^`]+)` then `(sam3 models export [^`]+)`", README)
    assert found, "the README's offline export path moved: update this test with it"
    return shlex.split(found.group(1)), shlex.split(found.group(2))


def test_the_readme_offline_path_exports_from_a_fresh_venv(tmp_path: Path) -> None:
    install, export = offline_commands()
    clone = tmp_path / "clone"
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, clone / name, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
        else:
            clone.mkdir(exist_ok=True)
            shutil.copy(source, clone / name)
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True, timeout=600)
    bin_dir = tmp_path / "venv" / "bin"

    started = time.monotonic()
    pip = [str(bin_dir / "python"), "-m", "pip", *install[1:], "--quiet", "--disable-pip-version-check"]
    ran = subprocess.run(pip, cwd=clone, capture_output=True, text=True, timeout=1800)
    assert ran.returncode == 0, f"{' '.join(install)} failed:\n{ran.stdout}{ran.stderr}"
    print(f"\n{' '.join(install)}: {time.monotonic() - started:.0f} s")

    # The README's export at the tiny size (the full one takes minutes and ~12 GB): the same code path.
    config = export.index("--config") + 1
    out = tmp_path / "model"
    export[config], export[export.index("--out") + 1] = "tiny", str(out)
    started = time.monotonic()
    ran = subprocess.run(
        [str(bin_dir / export[0]), *export[1:]], cwd=clone, capture_output=True, text=True, timeout=1200
    )
    assert ran.returncode == 0, f"{' '.join(export)} failed:\n{ran.stdout}{ran.stderr}"
    print(f"{' '.join(export)}: {time.monotonic() - started:.0f} s")

    listing = [str(bin_dir / "sam3"), "models", "list", "--no-cache", "--dir", str(out), "--json"]
    listed = subprocess.run(listing, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    (folder,) = json.loads(listed.stdout)
    assert folder["usable"] and folder["concepts"]
    assert {(g["role"], g["variant"]) for g in folder["graphs"]} >= {("encoder", "fp32"), ("encoder", "int8")}
