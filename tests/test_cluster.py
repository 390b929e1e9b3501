"""The store against a real Redis Cluster on loopback (3 masters + 3 replicas, started here, never mocked).

What a cluster changes: keys live on different shards (MOVED would break a plain client), the lock and
the value must share a slot, and a master can die and be replaced by its replica while traffic runs.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from decoder_service.servicer import DecoderSettings
from sam3_cli.workers import DECODER, ENCODER
from sam3_client import ChannelSettings, Client, Sam3Error
from sam3_core.embeddings import ImageEmbeddings
from sam3_serving.outcome import Outcome
from sam3_serving.redis_client import connect, is_cluster_url
from sam3_serving.redis_cluster import EmbeddedRedisCluster, start_embedded_cluster
from sam3_serving.redis_server import free_port
from sam3_serving.store import (
    EMBEDDINGS,
    SessionStore,
    SessionStoreConfig,
    SessionsWouldBeEvictedError,
    Step,
    StoreConfig,
    StoreUnavailableError,
    ValueStore,
)
from service_stack import running
from test_service_behaviour import new_image

MODEL = "cluster-test-model"
SHAPES = ((1, 4, 8, 8), (1, 2, 4, 4))
EMB = EMBEDDINGS.expecting(SHAPES)


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedRedisCluster]:
    with start_embedded_cluster(masters=3, replicas=1) as started:
        yield started


@pytest.fixture
def fresh_cluster() -> Iterator[EmbeddedRedisCluster]:
    """A private cluster this test may kill masters of."""
    with start_embedded_cluster(masters=3, replicas=1) as started:
        yield started


def embeddings(seed: int) -> ImageEmbeddings:
    rng = np.random.default_rng(seed)
    tensors = tuple(rng.standard_normal(shape, dtype=np.float32) for shape in SHAPES)
    return ImageEmbeddings(tensors, (30 + seed, 40), MODEL)


def image_ids(count: int) -> list[str]:
    return [uuid.uuid4().hex * 2 for _ in range(count)]


def one_image_per_shard(cluster: EmbeddedRedisCluster, store: ValueStore) -> dict[int, bytes]:
    """New images whose keys land on each master in turn, by master port (a key's slot is its image's hash)."""
    found: dict[int, bytes] = {}
    seed = 1000
    while len(found) < len(cluster.masters):
        data = new_image(seed)
        port = cluster.primary_for(store.key(EMB, hashlib.sha256(data).hexdigest())).port
        found.setdefault(port, data)
        seed += 1
    return found


def keys_per_master(cluster: EmbeddedRedisCluster, prefix: str) -> list[int]:
    counts = []
    for node in cluster.primaries():
        client = redis.Redis(host=node.host, port=node.port)
        counts.append(sum(1 for _ in client.scan_iter(match=f"{prefix}:*")))
        client.close()
    return counts


def test_cluster_urls_choose_the_cluster_client(cluster: EmbeddedRedisCluster) -> None:
    assert is_cluster_url(cluster.url) and not is_cluster_url("redis://127.0.0.1:6379/0")
    # Several startup nodes, any of which may be down at start-up: the client needs only one.
    seeds = ",".join(f"127.0.0.1:{node.port}" for node in cluster.masters)
    client = connect(f"redis+cluster://{seeds}", socket_timeout=1.0)
    assert len(client.get_primaries()) == 3
    client.close()
    with pytest.raises(ValueError, match="host:port"):
        connect("redis+cluster://127.0.0.1:1,nonsense", socket_timeout=1.0)


def test_values_spread_over_every_shard_and_each_lock_shares_its_value_slot(cluster: EmbeddedRedisCluster) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    store = ValueStore(StoreConfig(url=cluster.url, key_prefix=prefix, socket_timeout=1.0), MODEL)
    ids = image_ids(24)
    for seed, image_id in enumerate(ids):
        assert store.put(EMB, image_id, embeddings(seed)) > 0
    counts = keys_per_master(cluster, prefix)
    assert sum(counts) == 24 and min(counts) > 0, counts  # no MOVED errors, and every shard holds some
    probe = redis.Redis(host="127.0.0.1", port=cluster.masters[0].port)
    for seed, image_id in enumerate(ids):
        lookup = store.get(EMB, image_id)
        assert lookup.outcome == Outcome.REDIS
        for got, want in zip(lookup.value.tensors, embeddings(seed).tensors, strict=True):
            np.testing.assert_array_equal(got, want)
        assert store.peek(EMB, image_id).size == (30 + seed, 40)
        slot = probe.cluster("KEYSLOT", store.key(EMB, image_id))
        assert probe.cluster("KEYSLOT", store.locks.key(image_id)) == slot
    probe.close()
    store.close()


def test_lock_wait_and_release_run_as_one_slot_transactions(cluster: EmbeddedRedisCluster) -> None:
    store = ValueStore(StoreConfig(url=cluster.url, key_prefix=f"t{uuid.uuid4().hex[:8]}"), MODEL)
    image_id = image_ids(1)[0]
    token = store.locks.try_take(image_id)
    assert token is not None and store.locks.try_take(image_id) is None
    assert store.wait_for(EMB, image_id, timeout=0.05).outcome == "timeout"  # MULTI/EXEC: locked, no value yet
    store.put(EMB, image_id, embeddings(3))
    waited = store.wait_for(EMB, image_id, timeout=1.0)
    assert waited.outcome == "ready" and waited.head.size == (33, 40)
    store.locks.release(image_id, "not-the-token")  # the compare-and-delete script, in the key's slot
    assert store.locks.try_take(image_id) is None
    store.locks.release(image_id, token)
    assert store.locks.try_take(image_id) is not None
    assert store.ping()
    store.close()


def test_rewrites_are_announced_on_a_cluster(cluster: EmbeddedRedisCluster) -> None:
    """A cluster pipeline refuses PUBLISH, so there the SET and then the PUBLISH go separately: a decoder's
    listener still hears every rewritten key, from whichever shard holds it."""
    config = StoreConfig(url=cluster.url, key_prefix=f"t{uuid.uuid4().hex[:8]}", socket_timeout=1.0)
    writer, listener = ValueStore(config, MODEL), ValueStore(config, MODEL)
    heard: list[str] = []
    subscribed, stop = threading.Semaphore(0), threading.Event()
    thread = threading.Thread(
        target=listener.announcements.listen, args=(heard.append, subscribed.release, stop), daemon=True
    )
    thread.start()
    try:
        assert subscribed.acquire(timeout=10)
        ids = image_ids(6)
        for seed, image_id in enumerate(ids):
            writer.put(EMB, image_id, embeddings(seed))
        deadline = time.monotonic() + 5
        while len(heard) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert heard == [writer.key(EMB, image_id) for image_id in ids]
        assert len({cluster.primary_for(key).port for key in heard}) > 1  # from more than one shard
    finally:
        stop.set()
        thread.join(5)
        writer.close()
        listener.close()
    assert not thread.is_alive()


def test_encode_and_segment_through_the_workers_on_a_cluster(cluster: EmbeddedRedisCluster) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    with running(cluster.url, prefix, decoder=DecoderSettings(cache_bytes=0)) as stack, Client(stack.target) as client:
        for image in one_image_per_shard(cluster, stack.store).values():
            result = client.segment(image, points=[[20, 20]])
            assert result.encoded and result.mask.shape == (48, 64)
            again = client.segment(result.image_id, points=[[20, 20]])  # from Redis again: no local cache
            np.testing.assert_array_equal(again.mask, result.mask)
    assert keys_per_master(cluster, prefix) == [1, 1, 1]


def test_a_master_killed_mid_traffic_costs_its_shard_unavailable_then_fails_over(
    fresh_cluster: EmbeddedRedisCluster,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings = ChannelSettings(retry_attempts=1)  # see the raw code: the SDK would otherwise retry it
    with (
        running(fresh_cluster.url, prefix, {ENCODER, DECODER}, decoder=DecoderSettings(cache_bytes=0)) as stack,
        Client(stack.target, settings=settings) as client,
    ):
        images = one_image_per_shard(fresh_cluster, stack.store)
        ids = {port: client.encode(image).image_id for port, image in images.items()}
        victim = fresh_cluster.masters[0]
        on_victim = [ids[victim.port]]
        elsewhere = [image_id for port, image_id in ids.items() if port != victim.port]
        time.sleep(0.2)  # replication is asynchronous: let the replicas catch up before the crash
        victim.kill()

        with pytest.raises(Sam3Error) as failed:
            client.segment(on_victim[0], points=[[10, 10]])
        assert failed.value.code.name == "UNAVAILABLE"
        assert "store unavailable" in str(failed.value)
        # The other shards keep serving while this one has no master.
        assert client.segment(elsewhere[0], points=[[10, 10]]).objects

        deadline = time.monotonic() + 20
        while True:  # the replica takes over (node timeout 1 s + election), and the client re-reads the slot map
            try:
                result = client.segment(on_victim[0], points=[[10, 10]])
                break
            except Sam3Error as error:
                assert error.code.name == "UNAVAILABLE", error
                assert time.monotonic() < deadline, "no failover within 20 s"
                time.sleep(0.2)
        assert result.objects  # the replica had the value: no re-encode needed
        assert fresh_cluster.primary_for(stack.store.key(EMB, on_victim[0])).port != victim.port
        for image_id in ids.values():
            assert client.segment(image_id, points=[[10, 10]]).objects


def test_a_store_on_a_cluster_that_is_down_starts_and_reports_unavailable_without_the_password() -> None:
    url = f"redis+cluster://:s3cret@127.0.0.1:{free_port()}"
    store = ValueStore(StoreConfig(url=url, socket_timeout=0.5), MODEL)  # a worker starts while it is down
    assert not store.ping()
    with pytest.raises(StoreUnavailableError) as error:
        store.get(EMB, image_ids(1)[0])
    assert "s3cret" not in str(error.value) and "***" in str(error.value)


def test_video_sessions_commit_in_one_slot_each_and_refuse_an_evicting_cluster(cluster: EmbeddedRedisCluster) -> None:
    """Each session's journal, frames, lease, bank and results share its slot, so the commit script (which
    touches them all) runs on a cluster; sessions spread over the shards; every primary's policy is checked."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    store = SessionStore(SessionStoreConfig(cluster.url, key_prefix=prefix, socket_timeout=1.0), MODEL)
    with pytest.raises(SessionsWouldBeEvictedError, match="allkeys-lru"):  # this cluster is a cache
        store.check_never_evicts()
    frames = [hashlib.sha256(bytes([i])).hexdigest() for i in range(3)]
    masters = set()
    for _ in range(8):
        session_id = store.create(frames, b"")
        with store.lease(session_id) as lease:
            step = Step(objects=[1, 2], bank={1: {"m": b"a"}, 2: {"m": b"b"}}, results={1: {"0": b"r"}})
            assert store.commit(lease, 1, step, [1, 2]) == 2
        assert store.bank(session_id, [1, 2]) == {1: {"m": b"a"}, 2: {"m": b"b"}}
        assert store.results(session_id, {1: ["0"]}) == {1: [b"r"]}
        assert store.frame_ids(session_id) == frames
        masters.add(cluster.primary_for(store.key(session_id, "journal")).port)
        assert store.delete(session_id) == 2
    assert len(masters) > 1
    store.close_connection()
