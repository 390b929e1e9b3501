"""Encoding task images ahead of the first click, one at a time in the background.

A full-size encode takes tens of seconds on a CPU: done when tasks are imported, the annotator's
first click on each image costs a decoder call instead. One worker thread is enough, because the
encoders are the bottleneck, and it asks for `prewarm` encodes, which a busy encoder serves after
interactive ones. The queue is bounded; what does not fit is counted as dropped (the
`sam3-label-studio pre-encode` command encodes a whole project on demand).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from sam3_label_studio.errors import BackendError

__all__ = ["PreEncoder"]

log = logging.getLogger("sam3_label_studio")
Job = tuple[str, int | None, Any]  # image reference, task id, the LabelStudio to read it from


class PreEncoder:
    """Runs `encode(reference, task_id, label_studio) -> bool (newly encoded)` for queued task images."""

    def __init__(self, encode: Callable[[str, int | None, Any], bool], capacity: int = 100_000) -> None:
        self._encode = encode
        self._jobs: queue.Queue[Job] = queue.Queue(capacity)
        self._counts = {"queued": 0, "encoded": 0, "cached": 0, "failed": 0, "dropped": 0}
        self._last_error = ""
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, jobs: Sequence[Job]) -> int:
        """Queue `jobs`; the number queued (the rest did not fit)."""
        queued = 0
        for job in jobs:
            try:
                self._jobs.put_nowait(job)
                queued += 1
            except queue.Full:
                self._count("dropped")
        with self._lock:
            self._counts["queued"] += queued
            if queued and self._thread is None:
                self._thread = threading.Thread(target=self._work, name="sam3-pre-encode", daemon=True)
                self._thread.start()
        return queued

    def stats(self) -> dict[str, Any]:
        """Counts since start, the images still waiting, and the last failure (for /health)."""
        with self._lock:
            return {**self._counts, "waiting": self._jobs.qsize(), "last_error": self._last_error}

    def _work(self) -> None:
        while True:
            reference, task_id, label_studio = self._jobs.get()
            try:
                self._count("encoded" if self._encode(reference, task_id, label_studio) else "cached")
            except BackendError as error:
                log.warning("pre-encoding task %s failed: %s", task_id, error.message)
                with self._lock:
                    self._last_error = f"task {task_id}: {error.message}"
                self._count("failed")
            except Exception:  # a bug must not end pre-encoding for every later task
                log.exception("pre-encoding task %s failed", task_id)
                self._count("failed")

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1
