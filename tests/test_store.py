"""sam3_serving.store against a real Redis-protocol server: round trips, corruption, the encode lock, outages.

Every test talks to a real server (the session one, or a private one it may stop, freeze or lock with a
password). Keys live under the test's own namespace so an external $REDIS_URL is never polluted.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import redis
import redis.crc

from sam3_core.embeddings import ImageEmbeddings, serialize
from sam3_serving.redis_server import EmbeddedRedis
from sam3_serving.store import EmbeddingStore, StoreConfig, StoreUnavailableError, redact_url

MODEL_ID = "test-model-0123abcd"
SMALL_SHAPES = [(1, 4, 16, 16), (1, 8, 8, 8), (1, 16, 4, 4)]
REAL_SHAPES = [(1, 32, 288, 288), (1, 64, 144, 144), (1, 256, 72, 72)]  # what the SAM3 encoder emits
SIZE = (480, 640)


def make(shapes=SMALL_SHAPES, model_id: str = MODEL_ID, seed: int = 0) -> ImageEmbeddings:
    rng = np.random.default_rng(seed)
    return ImageEmbeddings(tuple(rng.standard_normal(s, dtype=np.float32) for s in shapes), SIZE, model_id)


def config(url: str, namespace: str = "sam3test:", **overrides) -> StoreConfig:
    return StoreConfig(url, key_prefix=namespace.rstrip(":"), **overrides)


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def make_store(redis_url: str, redis_namespace: str) -> Iterator[Callable[..., EmbeddingStore]]:
    """Factory for stores on the session server, in this test's namespace (two of them = two workers)."""
    stores: list[EmbeddingStore] = []

    def factory(model_id: str = MODEL_ID, shapes=SMALL_SHAPES, **overrides) -> EmbeddingStore:
        store = EmbeddingStore(config(redis_url, redis_namespace, **overrides), model_id, shapes)
        stores.append(store)
        return store

    yield factory
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store) -> EmbeddingStore:
    return make_store()


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


# ------------------------------------------------------------------------------------------------
# Values
# ------------------------------------------------------------------------------------------------


def test_round_trip_float16(make_store, raw):
    original = make()
    store16 = make_store(dtype="float16")
    written = store16.put("img", original)
    assert raw.strlen(store16.key("img")) == written
    lookup = store16.get("img")
    assert lookup.outcome == "hit" and lookup.nbytes == written and lookup.seconds > 0
    got = lookup.embeddings
    assert got is not None and got.original_size == SIZE and got.model_id == MODEL_ID
    for stored, source in zip(got.tensors, original.tensors, strict=True):
        assert stored.dtype == np.float16 and stored.shape == source.shape
        np.testing.assert_array_equal(stored, source.astype(np.float16))
    # Half the bytes of float32 (plus the same small header).
    assert written < 0.55 * len(serialize(original, "img"))


def test_round_trip_float32_by_default(make_store):
    original = make()
    store = make_store()
    assert store.config.dtype == "float32"
    written = store.put("img", original)
    assert written == len(serialize(original, "img"))
    got = store.get("img").embeddings
    assert got is not None
    for stored, source in zip(got.tensors, original.tensors, strict=True):
        assert stored.dtype == np.float32
        np.testing.assert_array_equal(stored, source)


def test_miss(store):
    lookup = store.get("never-stored")
    assert (lookup.embeddings, lookup.outcome, lookup.nbytes) == (None, "miss", 0)


def test_ttl_on_every_key(make_store, raw):
    store = make_store(ttl_seconds=600, lock_ttl_seconds=30)
    store.put("img", make())
    assert 0 < raw.ttl(store.key("img")) <= 600
    store.put("img", make(seed=1))  # a rewrite keeps a TTL too
    assert 0 < raw.ttl(store.key("img")) <= 600
    assert store.try_lock("img") is not None
    assert 0 < raw.pttl(store.lock_key("img")) <= 30_000


def test_key_format_and_cluster_slot(store, raw, redis_namespace):
    prefix = redis_namespace.rstrip(":")
    assert store.key("abc") == f"{prefix}:emb:v2:{{{MODEL_ID}:abc}}"
    assert store.lock_key("abc") == f"{prefix}:lock:{{{MODEL_ID}:abc}}"
    # The hash tag puts the value and its lock in one Redis Cluster slot.
    assert redis.crc.key_slot(store.key("abc").encode()) == redis.crc.key_slot(store.lock_key("abc").encode())
    store.put("abc", make())
    assert raw.exists(store.key("abc")) == 1
    for bad in ("", "a}b", "{a"):
        with pytest.raises(ValueError):
            store.key(bad)
    with pytest.raises(ValueError, match="brace"):
        EmbeddingStore(StoreConfig("redis://localhost"), "model}x", SMALL_SHAPES)


def test_put_rejects_embeddings_of_another_model(store):
    with pytest.raises(ValueError, match="other-model"):
        store.put("img", make(model_id="other-model"))


def _flip_middle_byte(raw: redis.Redis, key: str) -> None:
    middle = raw.strlen(key) // 2
    byte = raw.getrange(key, middle, middle)
    raw.setrange(key, middle, bytes([byte[0] ^ 0xFF]))


CORRUPTIONS: dict[str, Callable[[redis.Redis, str], None]] = {
    "flipped byte": _flip_middle_byte,
    "truncated": lambda raw, key: raw.set(key, raw.get(key)[:-1000]),
    "garbage": lambda raw, key: raw.set(key, np.random.default_rng(3).bytes(5000)),
    "empty": lambda raw, key: raw.set(key, b""),
    "other model": lambda raw, key: raw.set(key, serialize(make(model_id="other-model"), "img")),
    "another image": lambda raw, key: raw.set(key, serialize(make(seed=7), "other-img")),
    "wrong shapes": lambda raw, key: raw.set(key, serialize(make(shapes=SMALL_SHAPES[:2]), "img")),
    "wrong width": lambda raw, key: raw.setrange(key, 12, b"\xff\xff\x00\x00"),
    "not a string": lambda raw, key: (raw.delete(key), raw.hset(key, "f", "v")),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_value_is_reported_and_deleted(store, raw, corrupt):
    store.put("img", make())
    key = store.key("img")
    corrupt(raw, key)
    lookup = store.get("img")
    assert lookup.embeddings is None and lookup.outcome == "corrupt"
    assert raw.exists(key) == 0  # gone: the next encode can replace it
    assert store.get("img").outcome == "miss"
    store.put("img", make())
    assert store.get("img").outcome == "hit"


# ------------------------------------------------------------------------------------------------
# peek_size
# ------------------------------------------------------------------------------------------------


def test_peek_size_reads_only_the_header(redis_server: EmbeddedRedis):
    store = EmbeddingStore(config(redis_server.url), MODEL_ID, [(1, 64, 64, 64)])
    raw = redis.Redis.from_url(redis_server.url)
    assert store.peek_size("img") is None
    assert store.put("img", make(shapes=[(1, 64, 64, 64)])) > 1_000_000  # float32: 1 MB

    def sent_by_server() -> int:
        return int(raw.info("stats")["total_net_output_bytes"])

    info_reply = -sent_by_server() + sent_by_server()
    before = sent_by_server()
    assert store.peek_size("img") == SIZE
    sent = sent_by_server() - before - info_reply
    assert sent < 200  # the header + model id (41 bytes here) and RESP framing, not 0.5 MB
    # A payload corruption is invisible to peek (it never reads the payload); get catches it.
    _flip_middle_byte(raw, store.key("img"))
    assert store.peek_size("img") == SIZE
    assert store.get("img").outcome == "corrupt"
    raw.close()
    store.close()


# ("empty" reads like an absent key through GETRANGE: peek says None, `get` deletes it.)
HEAD_CORRUPTIONS = ["garbage", "other model", "another image", "wrong shapes", "wrong width", "not a string"]


@pytest.mark.parametrize("corrupt", HEAD_CORRUPTIONS)
def test_peek_size_refuses_and_deletes_foreign_heads(store, raw, corrupt):
    """What the head says is checked against the key and the model before Encode may answer `cached`."""
    store.put("img", make())
    CORRUPTIONS[corrupt](raw, store.key("img"))
    assert store.peek_size("img") is None
    assert raw.exists(store.key("img")) == 0
    assert store.wait_for("img", timeout=0).size is None  # never reported as ready either


def test_tenants_share_nothing(make_store, raw):
    shared = make_store()
    alice, bob = shared.for_tenant("alice"), shared.for_tenant("bob")
    alice.put("img", make())
    assert alice.get("img").outcome == "hit" and alice.peek_size("img") == SIZE
    for other in (bob, shared):
        assert other.get("img").outcome == "miss" and other.peek_size("img") is None
    assert len({shared.key("img"), alice.key("img"), bob.key("img")}) == 3
    assert redis.crc.key_slot(alice.key("img").encode()) == redis.crc.key_slot(alice.lock_key("img").encode())
    assert alice.try_lock("img") is not None and bob.try_lock("img") is not None  # separate locks too
    with pytest.raises(ValueError, match="tenant"):
        shared.for_tenant("a:b")


# ------------------------------------------------------------------------------------------------
# The encode lock
# ------------------------------------------------------------------------------------------------


def test_lock_is_exclusive_across_workers(make_store, raw):
    worker_a, worker_b = make_store(), make_store()
    token = worker_a.try_lock("img")
    assert token is not None
    assert worker_b.try_lock("img") is None
    assert worker_a.try_lock("img") is None  # not reentrant either: one encode per image
    worker_b.release("img", "not-the-token")
    assert raw.get(worker_a.lock_key("img")) == token.encode()  # a wrong token never frees it
    worker_a.release("img", token)
    token_b = worker_b.try_lock("img")
    assert token_b is not None and token_b != token
    worker_a.release("img", token)  # a late release by the old holder does not steal b's lock
    assert raw.get(worker_b.lock_key("img")) == token_b.encode()


def test_lock_expires_after_its_ttl(make_store):
    worker_a, worker_b = make_store(lock_ttl_seconds=0.2), make_store(lock_ttl_seconds=0.2)
    assert worker_a.try_lock("img") is not None  # and a crashes without releasing
    assert worker_b.try_lock("img") is None
    time.sleep(0.3)
    assert worker_b.try_lock("img") is not None


def test_held_lock_is_renewed_while_held_then_released(make_store, raw):
    holder, other = make_store(lock_ttl_seconds=0.3), make_store(lock_ttl_seconds=0.3)
    lock = holder.lock("img")
    assert lock is not None
    time.sleep(1.0)  # more than three TTLs: only the heartbeat keeps it
    assert other.try_lock("img") is None
    assert 0 < raw.pttl(holder.lock_key("img")) <= 300
    lock.release()
    assert raw.exists(holder.lock_key("img")) == 0
    assert other.lock("img") is not None


def test_failed_release_is_retried_until_it_succeeds(redis_server: EmbeddedRedis):
    store = EmbeddingStore(config(redis_server.url, socket_timeout=0.3, lock_ttl_seconds=5.0), MODEL_ID, SMALL_SHAPES)
    lock = store.lock("img")
    assert lock is not None
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        _, elapsed = timed(lock.release)  # fails (timeout) and hands the retries to a thread
        assert elapsed < 1.5
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
    deadline = time.monotonic() + 4  # well before the 5 s TTL would free it
    while store.ping() and store._client.exists(store.lock_key("img")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store._client.exists(store.lock_key("img")) == 0
    store.close()


# ------------------------------------------------------------------------------------------------
# wait_for
# ------------------------------------------------------------------------------------------------


def _later(delay: float, action: Callable[[], object]) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_wait_for_returns_when_the_holder_writes(make_store):
    holder, waiter = make_store(), make_store()
    token = holder.try_lock("img")
    assert token is not None

    def encode_and_release() -> None:
        holder.put("img", make())
        holder.release("img", token)

    thread = _later(0.2, encode_and_release)
    waited, elapsed = timed(lambda: waiter.wait_for("img", timeout=5))
    thread.join()
    assert waited == (SIZE, "ready")
    assert 0.15 < elapsed < 1.0  # woke within a poll interval (<= 100 ms) of the write


def test_wait_for_returns_none_early_when_the_holder_fails(make_store):
    holder, waiter = make_store(), make_store()
    token = holder.try_lock("img")
    assert token is not None
    thread = _later(0.2, lambda: holder.release("img", token))  # released without a value
    waited, elapsed = timed(lambda: waiter.wait_for("img", timeout=5))
    thread.join()
    assert waited == (None, "holder_failed") and elapsed < 1.0


def test_wait_for_without_lock_or_value_returns_at_once(store):
    waited, elapsed = timed(lambda: store.wait_for("img", timeout=5))
    assert waited == (None, "holder_failed") and elapsed < 0.5


def test_wait_for_value_already_there(store):
    store.put("img", make())
    assert store.wait_for("img", timeout=0) == (SIZE, "ready")


def test_wait_for_respects_timeout(make_store):
    holder, waiter = make_store(), make_store()
    assert holder.try_lock("img") is not None
    waited, elapsed = timed(lambda: waiter.wait_for("img", timeout=0.3))
    assert waited == (None, "timeout") and 0.29 < elapsed < 0.8


def test_wait_for_respects_cancellation(make_store):
    holder, waiter = make_store(), make_store()
    assert holder.try_lock("img") is not None
    cancelled = threading.Event()
    thread = _later(0.2, cancelled.set)
    waited, elapsed = timed(lambda: waiter.wait_for("img", timeout=5, cancelled=cancelled.is_set))
    thread.join()
    assert waited == (None, "cancelled") and 0.15 < elapsed < 1.0


# ------------------------------------------------------------------------------------------------
# Realistic values: no needless copies, thread-safety
# ------------------------------------------------------------------------------------------------


def _owner(array: np.ndarray) -> object:
    base: object = array
    while isinstance(base, np.ndarray):
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_realistic_value_is_not_copied(make_store, dtype):
    store = make_store(dtype=dtype, shapes=REAL_SHAPES)
    original = make(shapes=REAL_SHAPES)
    tracemalloc.start()
    try:
        written = store.put("img", original)
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        lookup = store.get("img")
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lookup.outcome == "hit" and lookup.embeddings is not None
    # get: the reply bytes are the only big allocation; every tensor is a view of them.
    assert get_peak < 1.2 * written
    for tensor in lookup.embeddings.tensors:
        owner = _owner(tensor)
        assert isinstance(owner, bytes) and len(owner) == written
    # put: the serialized blob (+ the float16 conversion), and no copy of it while sending.
    conversion = written if dtype == "float16" else 0
    assert put_peak < 1.2 * written + conversion


def test_concurrent_gets_and_puts(store):
    for i in range(4):
        store.put(f"img{i}", make(seed=i))
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for j in range(20):
                image = f"img{(n + j) % 4}"
                if j % 5 == 0:
                    store.put(image, make(seed=(n + j) % 4))
                lookup = store.get(image)
                assert lookup.outcome == "hit"
                np.testing.assert_array_equal(lookup.embeddings.tensors[0], make(seed=(n + j) % 4).tensors[0])
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors


# ------------------------------------------------------------------------------------------------
# Outages: bounded, one exception type, self-healing
# ------------------------------------------------------------------------------------------------


def _all_calls(store: EmbeddingStore) -> dict[str, Callable[[], object]]:
    return {
        "get": lambda: store.get("img"),
        "peek_size": lambda: store.peek_size("img"),
        "put": lambda: store.put("img", make()),
        "delete": lambda: store.delete("img"),
        "try_lock": lambda: store.try_lock("img"),
        "release": lambda: store.release("img", "token"),
        "wait_for": lambda: store.wait_for("img", timeout=10),
    }


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_redis_down_then_back(redis_server: EmbeddedRedis, how: str):
    store = EmbeddingStore(config(redis_server.url, socket_timeout=1.0), MODEL_ID, SMALL_SHAPES)
    store.put("img", make())  # the pool now holds a connection that is about to go stale
    assert store.ping()
    getattr(redis_server, how)()
    for name, call in _all_calls(store).items():
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as caught:
            call()
        assert time.monotonic() - started < 3, name
        assert f"127.0.0.1:{redis_server.port}" in str(caught.value), name
    assert store.ping() is False
    redis_server.restart()  # empty, same port; the same store object recovers by itself
    assert store.ping()
    assert store.get("img").outcome == "miss"
    store.put("img", make())
    assert store.get("img").outcome == "hit"
    store.close()


def test_frozen_redis_times_out_instead_of_hanging(redis_server: EmbeddedRedis):
    """A Redis that accepts connections but never answers (SIGSTOP): every call ends after socket_timeout."""
    store = EmbeddingStore(config(redis_server.url, socket_timeout=0.3), MODEL_ID, SMALL_SHAPES)
    store.put("img", make())
    pid = redis_server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        for name in ("get", "put", "wait_for"):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="Timeout"):
                _all_calls(store)[name]()
            assert time.monotonic() - started < 1.0, name  # one timeout, no retries on top
        _, elapsed = timed(store.ping)
        assert elapsed < 1.0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert store.get("img").outcome == "hit"  # a timed-out connection is dropped, not reused mid-reply
    store.close()


# ------------------------------------------------------------------------------------------------
# Credentials and URLs
# ------------------------------------------------------------------------------------------------


def test_password_and_acl_user(redis_server: EmbeddedRedis):
    admin = redis.Redis.from_url(redis_server.url)
    # The least a worker needs: its keys, and the channel announcing rewritten values.
    admin.acl_setuser(
        "alice",
        enabled=True,
        passwords=["+alice-secret-pw"],
        keys=["sam3:*"],
        channels=["sam3:replaced:*"],
        commands=["+@all"],
    )
    admin.config_set("requirepass", "s3cret-pass-word")
    admin.close()
    host = f"127.0.0.1:{redis_server.port}"

    for url in (f"redis://:s3cret-pass-word@{host}/0", f"redis://alice:alice-secret-pw@{host}/0"):
        store = EmbeddingStore(StoreConfig(url), MODEL_ID, SMALL_SHAPES)
        assert store.ping()
        store.put("img", make())
        assert store.get("img").outcome == "hit"
        store.close()

    for url, secret in (
        (f"redis://:wrong-pass-word@{host}/0", "wrong-pass-word"),
        (f"redis://alice:not-alices-pw@{host}/0", "not-alices-pw"),
        (f"redis://{host}/0", None),  # no password at all: NOAUTH
    ):
        store = EmbeddingStore(StoreConfig(url), MODEL_ID, SMALL_SHAPES)
        assert store.ping() is False
        with pytest.raises(StoreUnavailableError, match="the password or user is wrong"):
            store.check()  # what readiness reports: the cause is named, not just "unavailable"
        with pytest.raises(StoreUnavailableError) as caught:
            store.get("img")
        message = str(caught.value) + repr(caught.value.__cause__)
        assert host in message
        if secret:
            assert secret not in message and secret not in repr(store) and secret not in repr(store.config)
            assert "***" in message
        store.close()


def test_urls_accepted_without_connecting():
    for url in (
        "rediss://:tls-secret@redis.example.invalid:6380/0",
        "rediss://user:tls-secret@redis.example.invalid:6380/0?ssl_cert_reqs=required",
        "unix:///run/redis/redis.sock?db=0&password=tls-secret",
        "redis://redis.example.invalid:6379/2",
    ):
        store = EmbeddingStore(StoreConfig(url), MODEL_ID, SMALL_SHAPES)  # lazy: no connection attempt here
        assert "tls-secret" not in repr(store) and "tls-secret" not in repr(store.config)
        store.close()
    with pytest.raises(ValueError, match="redis://"):
        StoreConfig("http://localhost:6379")
    with pytest.raises(ValueError, match="dtype"):
        StoreConfig("redis://localhost", dtype="int8")
    with pytest.raises(ValueError):
        StoreConfig("redis://localhost", ttl_seconds=0)


def test_redact_url():
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("rediss://user:pw@h:1/0") == "rediss://user:***@h:1/0"
    assert redact_url("redis://user@h:1/0") == "redis://user@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
    assert redact_url("unix:///s.sock?db=1&password=pw") == "unix:///s.sock?db=1&password=***"


def test_replacements_are_announced_and_a_lost_subscription_means_forget_everything(redis_server: EmbeddedRedis):
    writer = EmbeddingStore(config(redis_server.url, socket_timeout=0.5), MODEL_ID, SMALL_SHAPES)
    listener = EmbeddingStore(config(redis_server.url, socket_timeout=0.5), MODEL_ID, SMALL_SHAPES)
    replaced: list[str] = []
    reconnects = threading.Semaphore(0)
    stop = threading.Event()
    thread = threading.Thread(
        target=listener.listen_for_replacements, args=(replaced.append, reconnects.release, stop), daemon=True
    )
    thread.start()
    assert reconnects.acquire(timeout=5)  # subscribed
    writer.for_tenant("alice").put("img", make())
    writer.put("img", make())
    deadline = time.monotonic() + 5
    while len(replaced) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert replaced == [writer.for_tenant("alice").key("img"), writer.key("img")]
    redis_server.restart()  # announcements made while it was away are lost: the listener must say so
    assert reconnects.acquire(timeout=10)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    writer.close()
    listener.close()
