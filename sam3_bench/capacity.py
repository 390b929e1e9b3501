"""Capacity model: how many encoders, decoders and Redis shards a load needs, and what clicks then cost.

Two halves that check each other:
- `plan()`: closed-form sizing from per-replica service times (utilisation targets, the hit rate of
  each routing, M/D/1 waiting time per decoder replica, Redis bytes and bandwidth).
- `simulate()`: a discrete-event simulation of annotators opening images and clicking, routed to
  decoder replicas (round robin or by image id, optionally prefetched), each replica a FIFO server
  with a byte-bounded LRU: hit rate, latency percentiles and utilisation come out of the events.

    python -m sam3_bench.capacity --annotators 10000 --clicks-per-second 1 --images-per-minute 1

The defaults are this project's CPU measurements (docs/capacity.md says where each comes from).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from typing import Any

MB = 1_000_000
ROUTINGS = ("round_robin", "affinity", "affinity+prefetch")


@dataclass(frozen=True)
class Replica:
    """Service times of one replica (2 CPU cores by default: this project's measurements)."""

    encode_seconds: float = 14.0  # int8 encoder, 1920x1080 (fp32: ~33 s)
    click_ms: float = 35.0  # Segment on a local hit: the split decoder graph (~30 ms) plus ~5 ms of service
    # The extra of a click that fetches from Redis: the float32 value (21 MB; float16 ~5 ms less than
    # half) and the split decoder's once-per-image side (~14 ms).
    fetch_ms: float = 32.0
    cache_images: int = 35  # SAM3_CACHE_MB 1024: 29.2 MB an image prepared for the split decoder
    encoder_utilisation: float = 0.7  # the HPA targets
    decoder_utilisation: float = 0.6
    hottest_decoder_utilisation: float = 0.9  # with affinity, the busiest replica's (p99 of the hash spread)


@dataclass(frozen=True)
class Load:
    annotators: int = 10_000
    clicks_per_second: float = 1.0  # per annotator
    images_per_minute: float = 1.0  # new images per annotator
    value_bytes: int = 21_233_758  # one stored image at float32 (float16: 10,616,926)
    redis_bytes_per_image: int = 25_800_000  # measured allocator footprint per value (float16: 12.7 MB)
    request_bytes: int = 300  # a Segment request with one click
    response_bytes: int = 4_000  # one best mask as RLE for a real object (random weights: ~1 MB)
    retention_minutes: float = 10.0  # how long after its last click an image should stay in Redis

    @property
    def clicks_per_image(self) -> float:
        return self.clicks_per_second * 60.0 / self.images_per_minute


@dataclass(frozen=True)
class Shard:
    """What one Redis master can give: memory for values, and network for GET/SET of big values."""

    memory_bytes: int = 25 * 1024**3
    bandwidth_bytes_per_second: float = 1.0e9  # ~10 Gbit/s NIC; a 21 MB GET is bandwidth-bound


def hit_rate(routing: str, replicas: int, clicks_per_image: float) -> float:
    """Share of clicks served from a replica's local cache, for an image clicked c times.

    round_robin spreads an image's clicks over every replica: each one it reaches fetches once
    (expected distinct replicas among c uniform choices); affinity fetches once per image; with
    prefetch the fetch happens before the first click. Assumes caches hold the active images.
    """
    c = clicks_per_image
    if routing == "affinity+prefetch":
        return 1.0
    if routing == "affinity":
        return 1.0 - 1.0 / c
    reached = replicas * (1.0 - (1.0 - 1.0 / replicas) ** c)
    return 1.0 - reached / c


def _hot_spot(active_images_per_replica: float) -> float:
    """Load of the p99 replica over the mean when images are hashed: 1 + 2.33 / sqrt(images per replica)."""
    return 1.0 + 2.33 / math.sqrt(max(active_images_per_replica, 1e-9))


def plan(
    load: Load, replica: Replica = Replica(), shard: Shard = Shard(), routing: str = "affinity+prefetch"
) -> dict[str, Any]:
    """Replicas and shards for `load`, and the click latency they give (M/D/1 per decoder replica)."""
    clicks = load.annotators * load.clicks_per_second
    images = load.annotators * load.images_per_minute / 60.0
    encoders = math.ceil(images * replica.encode_seconds / replica.encoder_utilisation)
    mean_hit = hit_rate(routing, 1, load.clicks_per_image)  # first guess; refined with the replica count
    decoders = 1
    for _ in range(5):  # the round-robin hit rate depends on the replica count: iterate to a fixed point
        mean_hit = hit_rate(routing, decoders, load.clicks_per_image)
        service_ms = replica.click_ms + (1.0 - mean_hit) * replica.fetch_ms
        decoders = max(1, math.ceil(clicks * service_ms / 1000.0 / replica.decoder_utilisation))
    if routing != "round_robin":
        # Hashing gives each replica a binomial share of the active images: the busiest one (p99,
        # mean + 2.33 standard deviations) must stay below the hot-spot limit, not just the mean.
        while clicks * service_ms / 1000.0 / decoders * _hot_spot(load.annotators / decoders) > (
            replica.hottest_decoder_utilisation
        ):
            decoders += 1
    service_s = (replica.click_ms + (1.0 - mean_hit) * replica.fetch_ms) / 1000.0
    rho = clicks / decoders * service_s
    wait_s = rho * service_s / (2.0 * (1.0 - rho))  # Pollaczek-Khinchine, deterministic service
    prefetch_reads = images if routing == "affinity+prefetch" else 0.0
    fetches = clicks * (1.0 - mean_hit) + prefetch_reads
    read_bps = fetches * load.value_bytes
    write_bps = images * load.value_bytes
    live_images = images * (60.0 / load.images_per_minute + load.retention_minutes * 60.0)  # in use + retained
    memory = live_images * load.redis_bytes_per_image
    shards = max(
        math.ceil(memory / shard.memory_bytes),
        math.ceil((read_bps + write_bps) / (0.5 * shard.bandwidth_bytes_per_second)),  # at most half busy
        1,
    )
    active = load.annotators / decoders
    return {
        "routing": routing,
        "clicks_per_second": clicks,
        "new_images_per_second": round(images, 2),
        "clicks_per_image": load.clicks_per_image,
        "encoders": encoders,
        "decoders": decoders,
        "click_hit_rate": round(mean_hit, 4),
        "decoder_utilisation": round(rho, 3),
        "hottest_decoder_utilisation": round(rho * (_hot_spot(active) if routing != "round_robin" else 1.0), 3),
        "click_ms_mean": round((service_s + wait_s) * 1000.0, 1),
        "active_images_per_decoder": round(active, 1),
        "decoder_cache_holds_them": active + 2.33 * math.sqrt(active) <= replica.cache_images,
        "redis_fetches_per_second": round(fetches, 1),
        "redis_read_gbit_s": round(read_bps * 8 / 1e9, 2),
        "redis_write_gbit_s": round(write_bps * 8 / 1e9, 2),
        "redis_memory_gb": round(memory / 1e9, 1),
        "redis_shards": shards,
        "network_per_click_bytes": load.request_bytes + load.response_bytes,
        "client_gbit_s": round(clicks * (load.request_bytes + load.response_bytes) * 8 / 1e9, 3),
    }


def simulate(
    load: Load,
    decoders: int,
    routing: str,
    replica: Replica = Replica(),
    *,
    seconds: float = 600.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Discrete-event run: each annotator opens an image every 60/images_per_minute s (after its encode)
    and clicks at Poisson times on it; clicks queue FIFO at their replica. Returns hit rate, latency
    percentiles and utilisation over the run."""
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}")
    rng = random.Random(seed)
    caches: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(decoders)]
    free_at = [0.0] * decoders
    busy = [0.0] * decoders
    round_robin = [0]
    events: list[tuple[float, int, int, int]] = []  # (time, kind 0=open 1=click, annotator, image)
    image_seconds = 60.0 / load.images_per_minute
    next_image = [0]

    def owner(image: int) -> int:
        return random.Random(image).randrange(decoders) if routing != "round_robin" else -1

    def warm(replica_index: int, image: int) -> bool:
        cache = caches[replica_index]
        if image in cache:
            cache.move_to_end(image)
            return True
        cache[image] = None
        if len(cache) > replica.cache_images:
            cache.popitem(last=False)
        return False

    for annotator in range(load.annotators):
        heapq.heappush(events, (rng.uniform(0, image_seconds), 0, annotator, -1))
    latencies: list[float] = []
    hits = clicks = 0
    while events:
        now, kind, annotator, image = heapq.heappop(events)
        if now > seconds:
            break
        if kind == 0:  # a new image: encoded (the encoder is sized separately), maybe prefetched
            image = next_image[0]
            next_image[0] += 1
            if routing == "affinity+prefetch":
                warm(owner(image), image)
            end = now + image_seconds
            heapq.heappush(events, (end, 0, annotator, -1))
            t = now + rng.expovariate(load.clicks_per_second)
            while t < end:
                heapq.heappush(events, (t, 1, annotator, image))
                t += rng.expovariate(load.clicks_per_second)
            continue
        if routing == "round_robin":
            target = round_robin[0] % decoders
            round_robin[0] += 1
        else:
            target = owner(image)
        hit = warm(target, image)
        service = (replica.click_ms + (0.0 if hit else replica.fetch_ms)) / 1000.0
        start = max(now, free_at[target])
        free_at[target] = start + service
        busy[target] += service
        latencies.append((free_at[target] - now) * 1000.0)
        clicks += 1
        hits += hit
    latencies.sort()

    def percentile(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else 0.0

    return {
        "routing": routing,
        "decoders": decoders,
        "clicks": clicks,
        "click_hit_rate": round(hits / clicks, 4) if clicks else 0.0,
        "click_ms_mean": round(sum(latencies) / len(latencies), 1) if latencies else 0.0,
        "click_ms_p50": percentile(0.5),
        "click_ms_p99": percentile(0.99),
        "decoder_utilisation": round(sum(busy) / (decoders * seconds), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sam3_bench.capacity", description=__doc__.split("\n")[0])
    parser.add_argument("--annotators", type=int, default=Load.annotators)
    parser.add_argument("--clicks-per-second", type=float, default=Load.clicks_per_second)
    parser.add_argument("--images-per-minute", type=float, default=Load.images_per_minute)
    parser.add_argument("--float16", action="store_true", help="float16 store: half the bytes, ~19 ms fetch")
    parser.add_argument("--simulate-seconds", type=float, default=120.0, help="simulated time (0: plan only)")
    args = parser.parse_args(argv)
    load = Load(args.annotators, args.clicks_per_second, args.images_per_minute)
    replica = Replica()
    if args.float16:
        load = replace(load, value_bytes=10_616_926, redis_bytes_per_image=12_700_000)
        # ~5 ms for the value plus the split decoder's image side; the decoder caches float32 either way.
        replica = replace(replica, fetch_ms=19.0)
    report: dict[str, Any] = {"load": asdict(load), "replica": asdict(replica), "plans": {}, "simulated": {}}
    for routing in ROUTINGS:
        sized = plan(load, replica, routing=routing)
        report["plans"][routing] = sized
        if args.simulate_seconds > 0:
            report["simulated"][routing] = simulate(
                load, sized["decoders"], routing, replica, seconds=args.simulate_seconds
            )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
