"""Real workers on loopback for the end-to-end tests: tiny model, real gRPC, real Redis."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import references
from sam3_cli.workers import DECODER, ENCODER, start_worker
from sam3_core.model import Sam3Model
from sam3_serving.server import ServerConfig, Worker
from sam3_serving.store import EmbeddingStore, StoreConfig
from sam3_serving.worker_process import WorkerProcess


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
    """A worker serving `roles` on a free port, stopped afterwards."""
    model = shared_model()
    store = EmbeddingStore(StoreConfig(url=redis_url, key_prefix=prefix, socket_timeout=1.0), model.model_id)
    config = ServerConfig(host="127.0.0.1", port=0, grace_seconds=5.0, **settings.pop("server", {}))
    worker = start_worker(model, store, set(roles), config, **settings)
    try:
        yield Stack(worker, store)
    finally:
        worker.stop(0)
        store.close()


@contextmanager
def serve_subprocess(*extra: str, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """`sam3 serve` as a real process (SIGTERM tests, CLI tests), on the tiny model."""
    worker = WorkerProcess(
        "serve", "--model-dir", str(references.MODEL_DIR), "--log-format", "text", *extra, env=env, start_timeout=60
    )
    try:
        yield worker.process, worker.target
    finally:
        worker.stop(timeout=20)


def image_bytes(name: str) -> bytes:
    return (references.IMAGES_DIR / name).read_bytes()
