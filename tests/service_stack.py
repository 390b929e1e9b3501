"""Real workers on loopback for the end-to-end tests: tiny model, real gRPC, real Redis."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import references
from sam3_cli.workers import DECODER, ENCODER, start_worker
from sam3_core.embeddings import ImageEmbeddings
from sam3_core.model import Sam3Model
from sam3_serving.config import ServerConfig
from sam3_serving.server import Worker
from sam3_serving.store import EMBEDDINGS, Kind, StoreConfig, ValueStore
from sam3_serving.worker_process import WorkerProcess


@cache
def shared_model() -> Sam3Model:
    """One tiny model for every in-process worker of the session (sessions are thread-safe)."""
    return Sam3Model(references.MODEL_DIR)


@dataclass
class Stack:
    worker: Worker
    store: ValueStore
    embeddings: Kind[ImageEmbeddings]  # the model's embeddings, as its workers store them

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.worker.port}"


@contextmanager
def running(
    redis_url: str,
    prefix: str,
    roles: set[str] = frozenset({ENCODER, DECODER}),
    *,
    model: Sam3Model | None = None,
    **settings: Any,
) -> Iterator[Stack]:
    """A worker serving `roles` on a free port, stopped afterwards (`server=` / `store=`: config overrides;
    `model`: another model than the tiny tracker-only one)."""
    model = model or shared_model()
    store = ValueStore(
        StoreConfig(url=redis_url, key_prefix=prefix, socket_timeout=1.0, **settings.pop("store", {})), model.model_id
    )
    config = ServerConfig(host="127.0.0.1", port=0, grace_seconds=5.0, **settings.pop("server", {}))
    worker = start_worker(model, store, set(roles), config, **settings)
    try:
        yield Stack(worker, store, EMBEDDINGS.expecting(model.embedding_shapes()))
    finally:
        worker.stop(0)
        store.close()


@contextmanager
def serve_subprocess(
    *extra: str, env: dict[str, str] | None = None, command: str = "serve", model_dir: Path = references.MODEL_DIR
) -> Iterator[tuple[subprocess.Popen, str]]:
    """`sam3 serve` (or `sam3 encoder` / `sam3 decoder`) as a real process, on the tiny model (or `model_dir`)."""
    worker = WorkerProcess(
        command, "--model-dir", str(model_dir), "--log-format", "text", *extra, env=env, start_timeout=60
    )
    try:
        yield worker.process, worker.target
    finally:
        worker.stop(timeout=20)


def reference_mask(data: bytes, points: list[list[float]]) -> Any:
    """The best mask an in-process Predictor computes for the image and the clicks: what a right answer is."""
    from sam3_core.predictor import Predictor

    predictor = Predictor(shared_model())
    predictor.set_image(data)
    return predictor.predict(points).mask()


def image_bytes(name: str) -> bytes:
    return (references.IMAGES_DIR / name).read_bytes()
