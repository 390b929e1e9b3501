"""Milliseconds per named stage of one request: what responses report, metrics record and benchmarks read."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["StageTimer"]


@dataclass
class StageTimer:
    """`with timer.stage("model"): ...` adds the block's wall time to `milliseconds["model"]`.

    A stage entered twice (one decoder run per group of objects) accumulates.
    """

    milliseconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            self.milliseconds[name] = self.milliseconds.get(name, 0.0) + elapsed
