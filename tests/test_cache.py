"""The in-process caches: sam3_core.cache.LruCache (bounded in bytes, thread-safe, single-flight loads) and
the decoder's LocalCache built on it (counted in the metrics, keyed by store keys, read through to Redis)."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pytest
from prometheus_client import REGISTRY

from decoder_service.cache import LocalCache
from sam3_core.cache import LruCache
from sam3_core.embeddings import ImageEmbeddings
from sam3_serving.outcome import Outcome
from sam3_serving.store import EMBEDDINGS, StoreConfig, ValueStore

KB = 1024


def evictions() -> float:
    """sam3_local_cache_evictions_total: cumulative across the process, so tests compare differences."""
    return REGISTRY.get_sample_value("sam3_local_cache_evictions_total") or 0.0


@dataclass(frozen=True)
class Value:
    """Anything with an `nbytes` is cacheable; the tag tells values apart."""

    nbytes: int = 10 * KB
    tag: float = 0.0


def emb(nbytes: int = 10 * KB, tag: float = 0.0) -> Value:
    return Value(nbytes, tag)


def test_lru_order_and_eviction_by_bytes():
    cache = LocalCache(max_bytes=30 * KB)  # the decoder's: its evictions and bytes are in the metrics
    before = evictions()
    for name in "abc":
        cache.put(name, emb())
    assert len(cache) == 3 and cache.nbytes == 30 * KB
    assert cache.get("a") is not None  # a is now the most recent: b is the oldest
    cache.put("d", emb())
    assert "b" not in cache and {"a", "c", "d"} == {n for n in "abcd" if n in cache}
    assert evictions() - before == 1 and cache.nbytes == 30 * KB
    cache.put("big", emb(25 * KB))  # evicts c, a, then d (least recent first) before it fits
    assert [n for n in "acd" if n in cache] == [] and "big" in cache
    assert cache.nbytes == 25 * KB and evictions() - before == 4
    assert REGISTRY.get_sample_value("sam3_local_cache_bytes") == 25 * KB


def test_eviction_stops_as_soon_as_it_fits():
    cache = LruCache(max_bytes=40 * KB)
    for name in "abcd":
        cache.put(name, emb())
    cache.put("e", emb(15 * KB))  # 40 + 15 > 40: evict a (30 + 15 > 40) then b (20 + 15 <= 40)
    assert [n for n in "abcde" if n in cache] == ["c", "d", "e"]
    assert cache.nbytes == 35 * KB


def test_oversize_item_is_not_cached():
    cache = LruCache(max_bytes=20 * KB)
    cache.put("a", emb())
    before = evictions()
    cache.put("huge", emb(21 * KB))
    assert "huge" not in cache and "a" in cache  # nothing was evicted for it
    assert evictions() == before and cache.nbytes == 10 * KB
    cache.put("a", emb(30 * KB))  # an oversize replacement drops the stale old version
    assert "a" not in cache and cache.nbytes == 0
    assert LruCache(max_bytes=0).get("x") is None
    with pytest.raises(ValueError):
        LruCache(max_bytes=-1)


def test_replace_updates_size_and_recency():
    cache = LruCache(max_bytes=30 * KB)
    cache.put("a", emb(10 * KB, tag=1))
    cache.put("b", emb(10 * KB))
    cache.put("a", emb(5 * KB, tag=2))
    assert len(cache) == 2 and cache.nbytes == 15 * KB
    got = cache.get("a")
    assert got is not None and got.tag == 2
    before = evictions()
    cache.put("a", emb(20 * KB, tag=3))
    assert cache.nbytes == 30 * KB and evictions() == before
    cache.put("c", emb(10 * KB))  # a was replaced last, so b is the least recent
    assert "b" not in cache and "a" in cache


def test_clear():
    cache = LocalCache(max_bytes=100 * KB)
    assert cache.get("a") is None
    cache.put("a", emb())
    assert cache.get("a") is not None and REGISTRY.get_sample_value("sam3_local_cache_bytes") == 10 * KB
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0 and cache.get("a") is None
    assert REGISTRY.get_sample_value("sam3_local_cache_bytes") == 0


def test_thread_safety_smoke():
    cache = LruCache(max_bytes=50 * KB)
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def work(n: int) -> None:
        try:
            start.wait()
            for i in range(300):
                image = f"img{(n * 7 + i) % 12}"
                tag = float((n * 7 + i) % 12)
                got = cache.get(image)
                if got is None:
                    cache.put(image, emb(KB * (1 + int(tag) % 3), tag=tag))
                else:
                    assert got.tag == tag  # never someone else's item
                assert cache.nbytes <= 50 * KB
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    # The byte count still matches what is actually held.
    assert cache.nbytes == sum(cache.get(f"img{i}").nbytes for i in range(12) if f"img{i}" in cache)


def _concurrently(count: int, fn) -> tuple[list[object], list[BaseException]]:
    results: list[object] = []
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run() -> None:
        start.wait()
        try:
            results.append(fn())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    return results, errors


def test_get_or_load_single_flight():
    cache = LruCache(max_bytes=100 * KB)
    calls = 0
    value = emb(tag=7)

    def slow_load() -> tuple[Value, str]:
        nonlocal calls
        calls += 1
        time.sleep(0.2)
        return value, "loaded"

    results, errors = _concurrently(8, lambda: cache.get_or_load("img", slow_load, hit="cached"))
    assert not errors and calls == 1
    assert all(got is value and outcome == "loaded" for got, outcome in results)  # the waiters' too
    assert cache.get_or_load("img", slow_load, hit="cached") == (value, "cached") and calls == 1


def test_get_or_load_single_flight_is_per_image():
    cache = LruCache(max_bytes=100 * KB)
    calls: list[str] = []
    lock = threading.Lock()

    def loader():
        def load() -> tuple[Value, str]:
            with lock:
                calls.append(threading.current_thread().name)
            time.sleep(0.1)
            return emb(), "loaded"

        return load

    started = time.monotonic()
    counter = iter(range(8))
    _, errors = _concurrently(8, lambda: cache.get_or_load(f"img{next(counter) % 2}", loader(), hit="cached"))
    assert not errors and len(calls) == 2  # one load per image, and the two ran side by side
    assert time.monotonic() - started < 0.5


def test_get_or_load_error_reaches_every_waiter_and_nothing_is_cached():
    cache = LruCache(max_bytes=100 * KB)
    calls = 0

    def failing_load() -> tuple[Value, str]:
        nonlocal calls
        calls += 1
        time.sleep(0.2)
        raise ConnectionError("redis down")

    results, errors = _concurrently(8, lambda: cache.get_or_load("img", failing_load, hit="cached"))
    assert calls == 1 and not results and len(errors) == 8
    assert all(isinstance(error, ConnectionError) and "redis down" in str(error) for error in errors)
    assert "img" not in cache and len(cache) == 0
    # The failure is not remembered: the next call loads again.
    assert cache.get_or_load("img", lambda: (emb(tag=1), "loaded"), hit="cached") == (emb(tag=1), "loaded")


def test_get_or_load_none_is_not_cached():
    cache = LruCache(max_bytes=100 * KB)
    assert cache.get_or_load("img", lambda: (None, "miss"), hit="cached") == (None, "miss")
    assert "img" not in cache
    loaded = emb()
    assert cache.get_or_load("img", lambda: (loaded, "loaded"), hit="cached") == (loaded, "loaded")
    assert cache.get_or_load("img", lambda: (None, "miss"), hit="cached") == (loaded, "cached")


def test_get_or_load_oversize_result_is_returned_but_not_cached():
    cache = LruCache(max_bytes=5 * KB)
    big = emb(10 * KB)
    assert cache.get_or_load("img", lambda: (big, "loaded"), hit="cached") == (big, "loaded")
    assert len(cache) == 0


def test_discard_drops_one_item_and_a_load_straddling_it_is_not_cached():
    cache = LruCache(100 * KB)
    cache.put("a", emb(tag=1.0))
    cache.put("b", emb(tag=2.0))
    cache.discard("a")
    cache.discard("never-there")
    assert "a" not in cache and "b" in cache and cache.nbytes == 10 * KB

    def load_while_rewritten() -> tuple[Value, str]:
        cache.discard("a")  # the store announces a rewrite while this load is in flight
        return emb(tag=3.0), "loaded"

    result, outcome = cache.get_or_load("a", load_while_rewritten, hit="cached")
    assert result is not None and outcome == "loaded"
    assert "a" not in cache  # possibly the bytes from before the rewrite: used once, not kept
    result, outcome = cache.get_or_load("a", lambda: (emb(tag=4.0), "loaded"), hit="cached")
    assert "a" in cache and outcome == "loaded"


def test_get_or_compute_runs_once_for_concurrent_callers():
    cache = LruCache(max_bytes=100 * KB)
    calls = 0

    def compute() -> Value:
        nonlocal calls
        calls += 1
        time.sleep(0.2)
        return emb(tag=5)

    results, errors = _concurrently(4, lambda: cache.get_or_compute("phrase", compute))
    assert not errors and calls == 1 and results == [emb(tag=5)] * 4
    assert cache.get_or_compute("phrase", compute) == emb(tag=5) and calls == 1


def test_the_decoders_cache_reads_through_to_the_store_keyed_by_the_store_key(redis_url: str) -> None:
    """LOCAL after the first REDIS; MISS and CORRUPT are what the store said, and nothing is kept for them."""
    shapes = [(1, 2, 4, 4)]
    kind = EMBEDDINGS.expecting(shapes)
    store = ValueStore(StoreConfig(redis_url, key_prefix=f"cache-{uuid.uuid4().hex[:8]}"), "m")
    value = ImageEmbeddings((np.ones(shapes[0], np.float32),), (10, 20), "m")
    cache = LocalCache(max_bytes=100 * KB)
    prepared: list[ImageEmbeddings] = []

    def prepare(embeddings: ImageEmbeddings) -> ImageEmbeddings:
        prepared.append(embeddings)
        return embeddings

    try:
        assert cache.fetch(store, kind, "img", prepare) == (None, Outcome.MISS)
        store.put(kind, "img", value)
        got, outcome = cache.fetch(store, kind, "img", prepare)
        assert outcome == Outcome.REDIS and got is not None and got.original_size == (10, 20)
        assert cache.fetch(store, kind, "img", prepare) == (got, Outcome.LOCAL) and len(prepared) == 1
        assert store.key(kind, "img") in cache and "img" not in cache
        tenant = store.for_tenant("alice")  # another key: never the shared space's entry
        assert cache.fetch(tenant, kind, "img", prepare) == (None, Outcome.MISS)
        store.connection.client.set(tenant.key(kind, "img"), b"not a value")
        assert cache.fetch(tenant, kind, "img", prepare) == (None, Outcome.CORRUPT)
    finally:
        store.delete(kind, "img")
        store.close()
