"""sam3_serving.store against a real Redis-protocol server: round trips, kinds, corruption, the encode lock, outages.

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

from sam3_core.concept import DetectorFeatures, TextFeatures
from sam3_core.embeddings import ImageEmbeddings, read_head, serialize
from sam3_serving.outcome import Outcome
from sam3_serving.redis_server import EmbeddedRedis
from sam3_serving.store import (
    DETECTOR_FEATURES,
    EMBEDDINGS,
    TEXT_FEATURES,
    Kind,
    StoreConfig,
    StoreUnavailableError,
    ValueStore,
    redact_url,
)

MODEL_ID = "test-model-0123abcd"
SMALL_SHAPES = [(1, 4, 16, 16), (1, 8, 8, 8), (1, 16, 4, 4)]
REAL_SHAPES = [(1, 32, 288, 288), (1, 64, 144, 144), (1, 256, 72, 72)]  # what the SAM3 encoder emits
SIZE = (480, 640)
EMB = EMBEDDINGS.expecting(SMALL_SHAPES)


def make(shapes=SMALL_SHAPES, model_id: str = MODEL_ID, seed: int = 0) -> ImageEmbeddings:
    rng = np.random.default_rng(seed)
    return ImageEmbeddings(tuple(rng.standard_normal(s, dtype=np.float32) for s in shapes), SIZE, model_id)


def stored(embeddings: ImageEmbeddings, subject: str) -> bytes:
    """The bytes a worker writes for these embeddings of `subject` (float32)."""
    return serialize(EMBEDDINGS.stored(embeddings, embeddings.model_id, subject))


def size(store: ValueStore, subject: str, kind: Kind = EMB) -> tuple[int, int] | None:
    """The original size in the value's checked head; None when absent (or deleted as bad)."""
    head = store.peek(kind, subject)
    return None if head is None else head.size


def config(url: str, namespace: str = "sam3test:", **overrides) -> StoreConfig:
    return StoreConfig(url, key_prefix=namespace.rstrip(":"), **overrides)


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def make_store(redis_url: str, redis_namespace: str) -> Iterator[Callable[..., ValueStore]]:
    """Factory for stores on the session server, in this test's namespace (two of them = two workers)."""
    stores: list[ValueStore] = []

    def factory(model_id: str = MODEL_ID, **overrides) -> ValueStore:
        store = ValueStore(config(redis_url, redis_namespace, **overrides), model_id)
        stores.append(store)
        return store

    yield factory
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store) -> ValueStore:
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
    written = store16.put(EMB, "img", original)
    assert raw.strlen(store16.key(EMB, "img")) == written
    lookup = store16.get(EMB, "img")
    assert lookup.outcome == Outcome.REDIS and lookup.nbytes == written and lookup.seconds > 0
    got = lookup.value
    assert got is not None and got.original_size == SIZE and got.model_id == MODEL_ID
    for tensor, source in zip(got.tensors, original.tensors, strict=True):
        assert tensor.dtype == np.float16 and tensor.shape == source.shape
        np.testing.assert_array_equal(tensor, source.astype(np.float16))
    # Half the bytes of float32 (plus the same small header).
    assert written < 0.55 * len(stored(original, "img"))


def test_round_trip_float32_by_default(make_store):
    original = make()
    store = make_store()
    assert store.config.dtype == "float32"
    written = store.put(EMB, "img", original)
    assert written == len(stored(original, "img"))
    got = store.get(EMB, "img").value
    assert got is not None
    for tensor, source in zip(got.tensors, original.tensors, strict=True):
        assert tensor.dtype == np.float32
        np.testing.assert_array_equal(tensor, source)


def test_miss(store):
    lookup = store.get(EMB, "never-stored")
    assert (lookup.value, lookup.outcome, lookup.nbytes) == (None, "miss", 0)


def test_ttl_on_every_key(make_store, raw):
    store = make_store(ttl_seconds=600, lock_ttl_seconds=30)
    store.put(EMB, "img", make())
    assert 0 < raw.ttl(store.key(EMB, "img")) <= 600
    store.put(EMB, "img", make(seed=1))  # a rewrite keeps a TTL too
    assert 0 < raw.ttl(store.key(EMB, "img")) <= 600
    assert store.locks.try_take("img") is not None
    assert 0 < raw.pttl(store.locks.key("img")) <= 30_000


def test_key_format_and_cluster_slot(store, raw, redis_namespace):
    prefix = redis_namespace.rstrip(":")
    assert store.key(EMB, "abc") == f"{prefix}:emb:v3:{{{MODEL_ID}:abc}}"
    assert store.locks.key("abc") == f"{prefix}:lock:{{{MODEL_ID}:abc}}"
    # The hash tag puts the value and its lock in one Redis Cluster slot.
    assert redis.crc.key_slot(store.key(EMB, "abc").encode()) == redis.crc.key_slot(store.locks.key("abc").encode())
    store.put(EMB, "abc", make())
    assert raw.exists(store.key(EMB, "abc")) == 1
    for bad in ("", "a}b", "{a"):
        with pytest.raises(ValueError):
            store.key(EMB, bad)
    with pytest.raises(ValueError, match="brace"):
        ValueStore(StoreConfig("redis://localhost"), "model}x")


def test_put_rejects_embeddings_of_another_model(store):
    with pytest.raises(ValueError, match="other-model"):
        store.put(EMB, "img", make(model_id="other-model"))


def _flip_middle_byte(raw: redis.Redis, key: str) -> None:
    middle = raw.strlen(key) // 2
    byte = raw.getrange(key, middle, middle)
    raw.setrange(key, middle, bytes([byte[0] ^ 0xFF]))


CORRUPTIONS: dict[str, Callable[[redis.Redis, str], None]] = {
    "flipped byte": _flip_middle_byte,
    "truncated": lambda raw, key: raw.set(key, raw.get(key)[:-1000]),
    "garbage": lambda raw, key: raw.set(key, np.random.default_rng(3).bytes(5000)),
    "empty": lambda raw, key: raw.set(key, b""),
    "other model": lambda raw, key: raw.set(key, stored(make(model_id="other-model"), "img")),
    "another image": lambda raw, key: raw.set(key, stored(make(seed=7), "other-img")),
    "another kind": lambda raw, key: raw.set(key, serialize(DETECTOR_FEATURES.stored(detector(), MODEL_ID, "img"))),
    "wrong shapes": lambda raw, key: raw.set(key, stored(make(shapes=SMALL_SHAPES[:2]), "img")),
    "wrong width": lambda raw, key: raw.setrange(key, 12, b"\xff\xff\x00\x00"),
    "not a string": lambda raw, key: (raw.delete(key), raw.hset(key, "f", "v")),
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_value_is_reported_and_deleted(store, raw, corrupt):
    store.put(EMB, "img", make())
    key = store.key(EMB, "img")
    corrupt(raw, key)
    lookup = store.get(EMB, "img")
    assert lookup.value is None and lookup.outcome == "corrupt"
    assert raw.exists(key) == 0  # gone: the next encode can replace it
    assert store.get(EMB, "img").outcome == "miss"
    store.put(EMB, "img", make())
    assert store.get(EMB, "img").outcome == Outcome.REDIS


# ------------------------------------------------------------------------------------------------
# peek
# ------------------------------------------------------------------------------------------------


def test_peek_reads_only_the_header(redis_server: EmbeddedRedis):
    store = ValueStore(config(redis_server.url), MODEL_ID)
    big = EMBEDDINGS.expecting([(1, 64, 64, 64)])
    raw = redis.Redis.from_url(redis_server.url)
    assert store.peek(big, "img") is None
    assert store.put(big, "img", make(shapes=[(1, 64, 64, 64)])) > 1_000_000  # float32: 1 MB

    def sent_by_server() -> int:
        return int(raw.info("stats")["total_net_output_bytes"])

    info_reply = -sent_by_server() + sent_by_server()
    before = sent_by_server()
    assert size(store, "img", big) == SIZE
    sent = sent_by_server() - before - info_reply
    assert sent < 200  # the header + model id (41 bytes here) and RESP framing, not 0.5 MB
    # A payload corruption is invisible to peek (it never reads the payload); get catches it.
    _flip_middle_byte(raw, store.key(big, "img"))
    assert size(store, "img", big) == SIZE
    assert store.get(big, "img").outcome == Outcome.CORRUPT
    raw.close()
    store.close()


# ("empty" reads like an absent key through GETRANGE: peek says None, `get` deletes it.)
HEAD_CORRUPTIONS = [
    "garbage",
    "other model",
    "another image",
    "another kind",
    "wrong shapes",
    "wrong width",
    "not a string",
]


@pytest.mark.parametrize("corrupt", HEAD_CORRUPTIONS)
def test_peek_refuses_and_deletes_foreign_heads(store, raw, corrupt):
    """What the head says is checked against the key and the model before Encode may answer `cached`."""
    store.put(EMB, "img", make())
    CORRUPTIONS[corrupt](raw, store.key(EMB, "img"))
    assert store.peek(EMB, "img") is None
    assert raw.exists(store.key(EMB, "img")) == 0
    assert store.wait_for(EMB, "img", timeout=0).head is None  # never reported as ready either


def test_tenants_share_nothing(make_store, raw):
    shared = make_store()
    alice, bob = shared.for_tenant("alice"), shared.for_tenant("bob")
    alice.put(EMB, "img", make())
    assert alice.get(EMB, "img").outcome == Outcome.REDIS and size(alice, "img") == SIZE
    for other in (bob, shared):
        assert other.get(EMB, "img").outcome == Outcome.MISS and size(other, "img") is None
    assert len({shared.key(EMB, "img"), alice.key(EMB, "img"), bob.key(EMB, "img")}) == 3
    assert redis.crc.key_slot(alice.key(EMB, "img").encode()) == redis.crc.key_slot(alice.locks.key("img").encode())
    assert alice.locks.try_take("img") is not None and bob.locks.try_take("img") is not None  # separate locks too
    with pytest.raises(ValueError, match="tenant"):
        shared.for_tenant("a:b")


# ------------------------------------------------------------------------------------------------
# The encode lock
# ------------------------------------------------------------------------------------------------


def test_lock_is_exclusive_across_workers(make_store, raw):
    worker_a, worker_b = make_store(), make_store()
    token = worker_a.locks.try_take("img")
    assert token is not None
    assert worker_b.locks.try_take("img") is None
    assert worker_a.locks.try_take("img") is None  # not reentrant either: one encode per image
    worker_b.locks.release("img", "not-the-token")
    assert raw.get(worker_a.locks.key("img")) == token.encode()  # a wrong token never frees it
    worker_a.locks.release("img", token)
    token_b = worker_b.locks.try_take("img")
    assert token_b is not None and token_b != token
    worker_a.locks.release("img", token)  # a late release by the old holder does not steal b's lock
    assert raw.get(worker_b.locks.key("img")) == token_b.encode()


def test_lock_expires_after_its_ttl(make_store):
    worker_a, worker_b = make_store(lock_ttl_seconds=0.2), make_store(lock_ttl_seconds=0.2)
    assert worker_a.locks.try_take("img") is not None  # and a crashes without releasing
    assert worker_b.locks.try_take("img") is None
    time.sleep(0.3)
    assert worker_b.locks.try_take("img") is not None


def test_held_lock_is_renewed_while_held_then_released(make_store, raw):
    holder, other = make_store(lock_ttl_seconds=0.3), make_store(lock_ttl_seconds=0.3)
    lock = holder.locks.take("img")
    assert lock is not None
    time.sleep(1.0)  # more than three TTLs: only the heartbeat keeps it
    assert other.locks.try_take("img") is None
    assert 0 < raw.pttl(holder.locks.key("img")) <= 300
    lock.release()
    assert raw.exists(holder.locks.key("img")) == 0
    assert other.locks.take("img") is not None


def test_failed_release_is_retried_until_it_succeeds(redis_server: EmbeddedRedis):
    store = ValueStore(config(redis_server.url, socket_timeout=0.3, lock_ttl_seconds=5.0), MODEL_ID)
    lock = store.locks.take("img")
    assert lock is not None
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        _, elapsed = timed(lock.release)  # fails (timeout) and hands the retries to a thread
        assert elapsed < 1.5
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
    deadline = time.monotonic() + 4  # well before the 5 s TTL would free it
    while store.ping() and store.connection.client.exists(store.locks.key("img")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.connection.client.exists(store.locks.key("img")) == 0
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
    token = holder.locks.try_take("img")
    assert token is not None

    def encode_and_release() -> None:
        holder.put(EMB, "img", make())
        holder.locks.release("img", token)

    thread = _later(0.2, encode_and_release)
    waited, elapsed = timed(lambda: waiter.wait_for(EMB, "img", timeout=5))
    thread.join()
    assert waited.outcome == "ready" and waited.head is not None and waited.head.size == SIZE
    assert 0.15 < elapsed < 1.0  # woke within a poll interval (<= 100 ms) of the write


def test_wait_for_returns_none_early_when_the_holder_fails(make_store):
    holder, waiter = make_store(), make_store()
    token = holder.locks.try_take("img")
    assert token is not None
    thread = _later(0.2, lambda: holder.locks.release("img", token))  # released without a value
    waited, elapsed = timed(lambda: waiter.wait_for(EMB, "img", timeout=5))
    thread.join()
    assert waited == (None, "holder_failed") and elapsed < 1.0


def test_wait_for_without_lock_or_value_returns_at_once(store):
    waited, elapsed = timed(lambda: store.wait_for(EMB, "img", timeout=5))
    assert waited == (None, "holder_failed") and elapsed < 0.5


def test_wait_for_value_already_there(store):
    store.put(EMB, "img", make())
    waited = store.wait_for(EMB, "img", timeout=0)
    assert waited.outcome == "ready" and waited.head == read_head(store.connection.client.get(store.key(EMB, "img")))


def test_wait_for_respects_timeout(make_store):
    holder, waiter = make_store(), make_store()
    assert holder.locks.try_take("img") is not None
    waited, elapsed = timed(lambda: waiter.wait_for(EMB, "img", timeout=0.3))
    assert waited == (None, "timeout") and 0.29 < elapsed < 0.8


def test_wait_for_respects_cancellation(make_store):
    holder, waiter = make_store(), make_store()
    assert holder.locks.try_take("img") is not None
    cancelled = threading.Event()
    thread = _later(0.2, cancelled.set)
    waited, elapsed = timed(lambda: waiter.wait_for(EMB, "img", timeout=5, cancelled=cancelled.is_set))
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
    store, real = make_store(dtype=dtype), EMBEDDINGS.expecting(REAL_SHAPES)
    original = make(shapes=REAL_SHAPES)
    tracemalloc.start()
    try:
        written = store.put(real, "img", original)
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        lookup = store.get(real, "img")
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lookup.outcome == Outcome.REDIS and lookup.value is not None
    # get: the reply bytes are the only big allocation; every tensor is a view of them.
    assert get_peak < 1.2 * written
    for tensor in lookup.value.tensors:
        owner = _owner(tensor)
        assert isinstance(owner, bytes) and len(owner) == written
    # put: the serialized blob (+ the float16 conversion), and no copy of it while sending.
    conversion = written if dtype == "float16" else 0
    assert put_peak < 1.2 * written + conversion


def test_concurrent_gets_and_puts(store):
    for i in range(4):
        store.put(EMB, f"img{i}", make(seed=i))
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for j in range(20):
                image = f"img{(n + j) % 4}"
                if j % 5 == 0:
                    store.put(EMB, image, make(seed=(n + j) % 4))
                lookup = store.get(EMB, image)
                assert lookup.outcome == Outcome.REDIS
                np.testing.assert_array_equal(lookup.value.tensors[0], make(seed=(n + j) % 4).tensors[0])
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


def _all_calls(store: ValueStore) -> dict[str, Callable[[], object]]:
    return {
        "get": lambda: store.get(EMB, "img"),
        "peek": lambda: store.peek(EMB, "img"),
        "put": lambda: store.put(EMB, "img", make()),
        "delete": lambda: store.delete(EMB, "img"),
        "try_take": lambda: store.locks.try_take("img"),
        "release": lambda: store.locks.release("img", "token"),
        "wait_for": lambda: store.wait_for(EMB, "img", timeout=10),
    }


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_redis_down_then_back(redis_server: EmbeddedRedis, how: str):
    store = ValueStore(config(redis_server.url, socket_timeout=1.0), MODEL_ID)
    store.put(EMB, "img", make())  # the pool now holds a connection that is about to go stale
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
    assert store.get(EMB, "img").outcome == "miss"
    store.put(EMB, "img", make())
    assert store.get(EMB, "img").outcome == Outcome.REDIS
    store.close()


def test_frozen_redis_times_out_instead_of_hanging(redis_server: EmbeddedRedis):
    """A Redis that accepts connections but never answers (SIGSTOP): every call ends after socket_timeout."""
    store = ValueStore(config(redis_server.url, socket_timeout=0.3), MODEL_ID)
    store.put(EMB, "img", make())
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
    assert store.get(EMB, "img").outcome == Outcome.REDIS  # a timed-out connection is dropped, not reused mid-reply
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
        store = ValueStore(StoreConfig(url), MODEL_ID)
        assert store.ping()
        store.put(EMB, "img", make())
        assert store.get(EMB, "img").outcome == Outcome.REDIS
        store.close()

    for url, secret in (
        (f"redis://:wrong-pass-word@{host}/0", "wrong-pass-word"),
        (f"redis://alice:not-alices-pw@{host}/0", "not-alices-pw"),
        (f"redis://{host}/0", None),  # no password at all: NOAUTH
    ):
        store = ValueStore(StoreConfig(url), MODEL_ID)
        assert store.ping() is False
        with pytest.raises(StoreUnavailableError, match="the password or user is wrong"):
            store.check()  # what readiness reports: the cause is named, not just "unavailable"
        with pytest.raises(StoreUnavailableError) as caught:
            store.get(EMB, "img")
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
        store = ValueStore(StoreConfig(url), MODEL_ID)  # lazy: no connection attempt here
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
    writer = ValueStore(config(redis_server.url, socket_timeout=0.5), MODEL_ID)
    listener = ValueStore(config(redis_server.url, socket_timeout=0.5), MODEL_ID)
    replaced: list[str] = []
    reconnects = threading.Semaphore(0)
    stop = threading.Event()
    thread = threading.Thread(
        target=listener.announcements.listen, args=(replaced.append, reconnects.release, stop), daemon=True
    )
    thread.start()
    assert reconnects.acquire(timeout=5)  # subscribed
    writer.for_tenant("alice").put(EMB, "img", make())
    writer.put(EMB, "img", make())
    deadline = time.monotonic() + 5
    while len(replaced) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert replaced == [writer.for_tenant("alice").key(EMB, "img"), writer.key(EMB, "img")]
    redis_server.restart()  # announcements made while it was away are lost: the listener must say so
    assert reconnects.acquire(timeout=10)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    writer.close()
    listener.close()


# ------------------------------------------------------------------------------------------------
# Kinds: one store, every kind of value under its own keys, each read back as what it is
# ------------------------------------------------------------------------------------------------


def detector(seed: int = 0) -> DetectorFeatures:
    rng = np.random.default_rng(seed)
    return DetectorFeatures(tuple(rng.standard_normal(s, dtype=np.float32) for s in SMALL_SHAPES), SIZE)


TEXT_SHAPES = [(1, 32, 8), (1, 32)]


def text(seed: int = 0) -> TextFeatures:
    rng = np.random.default_rng(seed)
    return TextFeatures(rng.standard_normal((1, 32, 8), dtype=np.float32), rng.random((1, 32)) > 0.5)


def test_each_kind_round_trips_as_its_own_type_under_its_own_key(make_store, raw):
    store = make_store(dtype="float16")
    det, txt = DETECTOR_FEATURES.expecting(SMALL_SHAPES), TEXT_FEATURES.expecting(TEXT_SHAPES)
    store.put(EMB, "img", make())
    store.put(det, "img", detector())
    store.put(txt, "0f" * 32, text())
    assert len({store.key(EMB, "img"), store.key(det, "img"), store.key(txt, "img")}) == 3
    assert redis.crc.key_slot(store.key(det, "img").encode()) == redis.crc.key_slot(store.locks.key("img").encode())

    features = store.get(det, "img").value
    assert isinstance(features, DetectorFeatures) and features.original_size == SIZE
    assert all(t.dtype == np.float32 for t in features.tensors)  # what the concept decoder takes
    np.testing.assert_array_equal(features.tensors[0], detector().tensors[0].astype(np.float16))

    phrase = store.get(txt, "0f" * 32).value
    assert isinstance(phrase, TextFeatures)
    np.testing.assert_array_equal(phrase.features, text().features)  # exact: text is stored at float32
    np.testing.assert_array_equal(phrase.mask, text().mask)
    head = store.peek(txt, "0f" * 32)
    assert head is not None and head.size is None and head.kind == "txt"  # a phrase, not a 1 x 1 "image"

    assert store.get(det, "other").outcome == Outcome.MISS  # kinds share the lock, not the values
    assert store.get(EMB, "0f" * 32).outcome == Outcome.MISS


def test_a_value_of_another_kind_under_a_key_is_corrupt_never_served(store, raw):
    """Same shapes, same model, same subject: only the kind the value names tells them apart."""
    det = DETECTOR_FEATURES.expecting(SMALL_SHAPES)
    raw.set(store.key(EMB, "img"), serialize(DETECTOR_FEATURES.stored(detector(), MODEL_ID, "img")))
    assert store.peek(EMB, "img") is None and raw.exists(store.key(EMB, "img")) == 0
    raw.set(store.key(det, "img"), stored(make(), "img"))
    assert store.get(det, "img").outcome == Outcome.CORRUPT


def test_a_value_about_no_image_is_refused_where_an_image_is_expected(store, raw):
    """A crafted value naming the right kind but no image size is a bad value, not a crash later."""
    from sam3_core.embeddings import StoredValue

    sizeless = StoredValue("emb", MODEL_ID, "img", make().tensors, None)
    raw.set(store.key(EMB, "img"), serialize(sizeless))
    assert store.get(EMB, "img").outcome == Outcome.CORRUPT


def test_content_addressed_kinds_are_not_announced_and_announced_ones_are(make_store):
    store = make_store()
    pubsub = store.connection.client.pubsub()
    pubsub.subscribe(store.announcements.channel)
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    store.put(TEXT_FEATURES.expecting(TEXT_SHAPES), "0f" * 32, text())
    store.put(EMB, "img", make())
    message = pubsub.get_message(timeout=2)
    assert message["type"] == "message" and message["data"].decode() == store.key(EMB, "img")
    assert pubsub.get_message(timeout=0.2) is None
    pubsub.close()


def test_a_kind_reads_only_once_bound_to_the_models_shapes(store):
    with pytest.raises(ValueError, match="expecting"):
        store.get(EMBEDDINGS, "img")
    with pytest.raises(ValueError, match="lowercase"):
        Kind("Emb!", tensors=lambda v: v, value=lambda stored: stored)
