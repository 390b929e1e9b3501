"""Real workers on loopback for the end-to-end tests: tiny model, real gRPC, real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import references
from sam3_cli.workers import DECODER, ENCODER, start_worker
from sam3_core.model import Sam3Model
from sam3_serving.health_check import wait_until_serving as wait_for_health
from sam3_serving.redis_server import free_port
from sam3_serving.server import ServerConfig, Worker
from sam3_serving.store import EmbeddingStore, StoreConfig


@cache
def shared_model() -> Sam3Model:
    """One tiny model for every in-process worker of the session (sessions are thread-safe)."""
    return Sam3Model(references.MODEL_DIR)


@dataclass
class Stack:
    worker: Worker
    store: EmbeddingStore

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.worker.port}"


@contextmanager
def running(
    redis_url: str, prefix: str, roles: set[str] = frozenset({ENCODER, DECODER}), **settings: Any
) -> Iterator[Stack]:
    """A worker serving `roles` on a free port, stopped afterwards (`server=` / `store=`: config overrides)."""
    model = shared_model()
    store = EmbeddingStore(
        StoreConfig(url=redis_url, key_prefix=prefix, socket_timeout=1.0, **settings.pop("store", {})),
        model.model_id,
        model.embedding_shapes(),
    )
    config = ServerConfig(host="127.0.0.1", port=0, grace_seconds=5.0, **settings.pop("server", {}))
    worker = start_worker(model, store, set(roles), config, **settings)
    try:
        yield Stack(worker, store)
    finally:
        worker.stop(0)
        store.close()


@contextmanager
def serve_subprocess(
    *extra: str, env: dict[str, str] | None = None, command: str = "serve"
) -> Iterator[tuple[subprocess.Popen, str]]:
    """`sam3 serve` (or `sam3 encoder` / `sam3 decoder`) as a real process, on the tiny model.

    Its output goes to a pipe nobody drains while it runs: chatty tests pass `--log-level WARNING`.
    """
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sam3_cli",
            command,
            "--model-dir",
            str(references.MODEL_DIR),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-format",
            "text",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    target = f"127.0.0.1:{port}"
    try:
        wait_until_serving(target, process)
        yield process, target
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until_serving(target: str, process: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    """The SDK's wait, with the process's output in the error when it died during start-up."""
    try:
        wait_for_health(target, timeout=timeout, alive=lambda: process is None or process.poll() is None)
    except RuntimeError as error:
        output = process.stdout.read() if process is not None and process.stdout else ""
        raise RuntimeError(f"{error}: exit code {process.returncode if process else '?'}\n{output}") from error


def reference_mask(data: bytes, points: list[list[float]]) -> Any:
    """The best mask an in-process Predictor computes for the image and the clicks: what a right answer is."""
    from sam3_core.predictor import Predictor

    predictor = Predictor(shared_model())
    predictor.set_image(data)
    return predictor.predict(points).mask()


def image_bytes(name: str) -> bytes:
    return (references.IMAGES_DIR / name).read_bytes()
