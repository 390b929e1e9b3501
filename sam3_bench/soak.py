"""`sam3 bench --soak MINUTES`: a long mixed load on one real `sam3 serve`, watching what callers see.

16 clients (each its own SDK client) loop for the whole run: mostly `segment` with one to three
clicks on images of a fixed, pre-encoded pool, some forced re-encodes (the model runs; Redis does
not grow) and some encodes that find the image stored. Encodes get ENCODE_TIMEOUT seconds, so a
saturated encoder shows up as codes rather than as clients stuck in retries. Every call's final
outcome (after the SDK's own retries) is counted by status code, latencies give p50/p99 per
operation, and the worker's resident memory is sampled every few seconds: a healthy worker's RSS
levels off after warm-up. Not part of CI (it takes minutes by design); figures in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import threading
import time
from collections import Counter
from typing import Any

from PIL import Image

from sam3_bench.images import synthetic_rgb
from sam3_bench.measure import Stats
from sam3_bench.run import TINY_FIXTURE
from sam3_serving.worker_process import WorkerProcess

CLIENTS = 16
POOL = 12  # distinct images: bounded Redis and local-cache use however long the run
SIZE = (640, 480)
SAMPLE_SECONDS = 5.0
SHARES = (("segment", 0.90), ("encode_forced", 0.05), ("encode", 0.05))
ENCODE_TIMEOUT = 30.0


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_rgb(*SIZE, seed=seed)).save(buffer, format="PNG")
    return buffer.getvalue()


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))


class _Load:
    """The clients' shared tallies."""

    def __init__(self, target: str, images: list[bytes], stop_at: float) -> None:
        self.target = target
        self.images = images
        self.stop_at = stop_at
        self.codes: Counter[tuple[str, str]] = Counter()
        self.latencies: dict[str, list[float]] = {name: [] for name, _ in SHARES}
        self._lock = threading.Lock()

    def client(self, seed: int) -> None:
        from sam3_client import Client, ObjectPrompt, Sam3Error

        rng = random.Random(seed)
        names, weights = zip(*SHARES, strict=True)
        with Client(self.target) as client:
            while time.perf_counter() < self.stop_at:
                operation = rng.choices(names, weights)[0]
                image = rng.choice(self.images)
                started = time.perf_counter()
                try:
                    if operation == "segment":
                        objects = [
                            ObjectPrompt([[rng.uniform(0, SIZE[0] - 1), rng.uniform(0, SIZE[1] - 1)]])
                            for _ in range(rng.randint(1, 3))
                        ]
                        client.segment_objects(image, objects, mask_format=rng.choice(["rle", "png"]))
                    else:
                        client.encode(image, force=operation == "encode_forced", timeout=ENCODE_TIMEOUT)
                    code = "OK"
                except Sam3Error as error:
                    code = error.code.name
                with self._lock:
                    self.codes[operation, code] += 1
                    if code == "OK":
                        self.latencies[operation].append((time.perf_counter() - started) * 1000)


def soak(args: argparse.Namespace) -> int:
    """Run the soak and print (and write, with --json) its figures."""
    from sam3_serving.redis_server import start_embedded_redis

    model_dir = args.model_dir or TINY_FIXTURE
    seconds = args.soak * 60
    images = [_png(seed) for seed in range(POOL)]
    with start_embedded_redis(maxmemory="2gb") as redis_server:
        flags = ["--model-dir", str(model_dir), "--redis-url", redis_server.url, "--log-level", "WARNING"]
        worker = WorkerProcess("serve", *flags, start_timeout=300)
        try:
            from sam3_client import Client

            with Client(worker.target) as client:
                for image in images:  # the pool is stored before the clock starts
                    client.encode(image)
            load = _Load(worker.target, images, time.perf_counter() + seconds)
            threads = [threading.Thread(target=load.client, args=(n,), daemon=True) for n in range(CLIENTS)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            samples: list[tuple[float, float]] = []
            while any(thread.is_alive() for thread in threads):
                elapsed, rss = round(time.perf_counter() - started, 1), round(_rss_mb(worker.process.pid), 1)
                samples.append((elapsed, rss))
                print(f"soak {elapsed:6.0f} s: RSS {rss:7.1f} MB, {load.codes.total()} calls", file=sys.stderr)
                time.sleep(SAMPLE_SECONDS)
            for thread in threads:
                thread.join()
            alive = worker.process.poll() is None
        finally:
            worker.stop()
        tracebacks = worker.output().count("Traceback")
    report = _report(load, samples, seconds, alive, tracebacks, str(model_dir))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if alive and tracebacks == 0 else 1


def _report(
    load: _Load, samples: list[tuple[float, float]], seconds: float, alive: bool, tracebacks: int, model: str
) -> dict[str, Any]:
    rss = [mb for _, mb in samples]
    tenth = max(1, len(rss) // 10)
    return {
        "model": model,
        "clients": CLIENTS,
        "seconds": seconds,
        "codes": {f"{operation} {code}": count for (operation, code), count in sorted(load.codes.items())},
        "latency_ms": {name: Stats.of(values).as_dict() for name, values in load.latencies.items() if values},
        "rss_mb": {
            "start": rss[0] if rss else None,
            "after_warmup": rss[tenth] if rss else None,
            "end": rss[-1] if rss else None,
            "peak": max(rss, default=None),
            # Levelled off: the last tenth grows little over the second tenth.
            "growth_after_warmup": round(rss[-1] - rss[tenth], 1) if rss else None,
        },
        "rss_samples": samples,
        "worker_alive_at_end": alive,
        "tracebacks_in_worker_log": tracebacks,
    }
