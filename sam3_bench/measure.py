"""Timing statistics and child processes: every number in the report comes through here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Stats:
    """Latency distribution of repeated calls, in milliseconds."""

    n: int
    p50: float
    p95: float
    p99: float
    mean: float
    min: float

    @classmethod
    def of(cls, milliseconds: list[float]) -> Stats:
        values = np.asarray(milliseconds, dtype=np.float64)
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        return cls(len(values), float(p50), float(p95), float(p99), float(values.mean()), float(values.min()))

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def time_calls(call: Callable[[], Any], repeats: int, warmup: int = 2) -> Stats:
    """Runs `call` warmup + repeats times; statistics over the timed repeats only."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return Stats.of(samples)


def peak_rss_gb() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def run_child(task: str, arguments: dict[str, Any], *, python: str | None = None, timeout: float = 3600) -> dict:
    """Runs `python -m sam3_bench.child TASK JSON` in a fresh process (clean peak memory, no shared
    sessions) and returns the JSON it prints last; a failure becomes {"skipped": reason}."""
    command = [python or sys.executable, "-m", "sam3_bench.child", task, json.dumps(arguments)]
    # Only the project's own folders: another interpreter (--transformers-python) keeps its own packages.
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "client")])}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"skipped": f"{task} took longer than {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"skipped": f"{task} failed: {tail[0]}"}
    return json.loads(lines[-1])
