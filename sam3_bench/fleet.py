"""`sam3 bench --fleet`: the fleet-level cache hit rate of clicks, with N decoder replicas behind each routing.

One encoder and N decoder worker processes share one Redis. Simulated annotators open new images and
click on each several times; the same workload runs three times, on fresh images each time:

- round_robin: what gRPC does for a `dns:///` target without affinity (every replica fetches every image);
- affinity: the SDK routes an image's clicks to one replica (rendezvous hashing on the image id);
- affinity+prefetch: as above, and `Client.encode` warms that replica before the first click.

The hit rate comes from the decoders' own counters (`sam3_embedding_lookups_total`, scraped from each
replica's /metrics): fresh images are never local when prefetched, so every "local" lookup is a click
that hit, and hit rate = local lookups / clicks. Latency is split into each image's first click and the
rest, as the client sees them.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sam3_bench.images import synthetic_rgb
from sam3_bench.measure import Stats
from sam3_serving.redis_server import free_port

ROUTINGS = {"round_robin": (False, False), "affinity": (True, False), "affinity+prefetch": (True, True)}
LOOKUPS = "sam3_embedding_lookups_total"


def local_lookups(metrics_ports: list[int]) -> float:
    """Sum over replicas of lookups answered from the local cache (Prometheus text format)."""
    total = 0.0
    for port in metrics_ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(f'{LOOKUPS}{{result="local"}}'):
                    total += float(line.split()[-1])
    return total


def write_images(folder: Path, count: int, first_seed: int, size: tuple[int, int]) -> list[Path]:
    from PIL import Image

    paths = []
    for seed in range(first_seed, first_seed + count):
        path = folder / f"fleet_{seed}.jpg"
        Image.fromarray(synthetic_rgb(*size, seed=seed)).save(path, quality=90)
        paths.append(path)
    return paths


def annotate(
    client: Any, paths: list[Path], clicks: int, click: list[list[float]], *, prefetch: bool, annotators: int
) -> tuple[list[float], list[float]]:
    """`annotators` threads each open images (Encode) and click `clicks` times on each; returns the
    latencies in ms of each image's first click and of the others."""
    first: list[float] = []
    later: list[float] = []
    lock = threading.Lock()

    def one_image(path: Path) -> None:
        image_id = client.encode(path, prefetch=prefetch).image_id
        for n in range(clicks):
            started = time.perf_counter()
            client.segment(image_id, points=click, mask_format="none")
            with lock:
                (later if n else first).append((time.perf_counter() - started) * 1000)

    with ThreadPoolExecutor(annotators) as pool:
        list(pool.map(one_image, paths))
    return first, later


def run_fleet(
    spawn: Callable[..., Any],
    variant: str,
    workdir: Path,
    *,
    decoders: int = 3,
    images: int = 8,
    clicks: int = 10,
    annotators: int = 4,
    size: tuple[int, int] = (1920, 1080),
) -> dict[str, Any]:
    """Spawn the fleet (`spawn(command, variant, redis_url, *flags)` -> a worker with .target and .stop()),
    run each routing on fresh images, return hit rates and latencies per routing."""
    from sam3_client import ChannelSettings, Client
    from sam3_serving.redis_server import start_embedded_redis

    width, height = size
    click = [[width * 0.5, height * 0.5]]
    results: dict[str, Any] = {"decoders": decoders, "images": images, "clicks_per_image": clicks}
    with start_embedded_redis(maxmemory="2gb") as redis_server:
        ports = [free_port() for _ in range(decoders)]
        workers = [spawn("encoder", variant, redis_server.url, "--max-concurrent-encodes", str(annotators))]
        try:
            workers += [spawn("decoder", variant, redis_server.url, "--metrics-port", str(p)) for p in ports]
            fleet = "ipv4:" + ",".join(w.target for w in workers[1:])
            for offset, (routing, (affinity, prefetch)) in enumerate(ROUTINGS.items()):
                paths = write_images(workdir, images, 9000 + offset * images, size)
                settings = ChannelSettings(affinity=affinity)
                with Client(encoder_target=workers[0].target, decoder_target=fleet, settings=settings) as client:
                    before = local_lookups(ports)
                    first, later = annotate(client, paths, clicks, click, prefetch=prefetch, annotators=annotators)
                    hits = local_lookups(ports) - before
                results[routing] = {
                    "click_hit_rate": round(hits / (images * clicks), 4),
                    "first_click_ms": Stats.of(first).as_dict(),
                    "later_clicks_ms": Stats.of(later).as_dict(),
                }
        finally:
            for worker in workers:
                worker.stop()
    return results
