"""sam3_serving.store.sessions against a real Redis-protocol server: the journal, one writer, compare-and-set,
limits, expiry, eviction policy, corruption and outages. Never a mock: the session fixture's server never
evicts (as production's session store must not), private servers are started where a test needs another
policy or to stop one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
import redis
import redis.crc

from sam3_serving.errors import Reason, ServiceError
from sam3_serving.redis_server import start_embedded_redis
from sam3_serving.store import SessionStore, SessionStoreConfig, SessionsWouldBeEvictedError, Step
from sam3_serving.store.sessions import is_session_id

MODEL_ID = "test-model-0123abcd"
FRAMES = [f"{i:064x}" for i in range(5)]


@pytest.fixture
def make_sessions(session_redis_url: str, redis_namespace: str) -> Iterator[Callable[..., SessionStore]]:
    """Stores on the never-evicting server, in this test's namespace (two of them = two replicas)."""
    stores: list[SessionStore] = []

    def factory(url: str = session_redis_url, **overrides) -> SessionStore:
        overrides.setdefault("lease_ttl_seconds", 1.0)
        config = SessionStoreConfig(url, key_prefix=redis_namespace.rstrip(":"), socket_timeout=1.0, **overrides)
        stores.append(SessionStore(config, MODEL_ID))
        return stores[-1]

    yield factory
    for store in stores:
        store.close_connection()


@pytest.fixture
def raw(session_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(session_redis_url)
    yield client
    client.close()


def refused(reason: Reason, call: Callable[[], object]) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        call()
    assert caught.value.reason == reason, caught.value
    return caught.value


def test_a_session_is_a_journal_frames_and_per_object_hashes_in_one_slot(make_sessions, raw) -> None:
    store = make_sessions()
    session_id = store.create(FRAMES, b"state-1")
    assert is_session_id(session_id)
    journal = store.journal(session_id)
    assert (journal.revision, journal.objects, journal.state, journal.frame_count) == (1, (), b"state-1", 5)
    assert store.frame_ids(session_id) == FRAMES and store.frame_ids(session_id, 1, 3) == FRAMES[1:3]
    assert store.frame_ids(session_id, 3, 3) == []
    with store.lease(session_id) as lease:
        step = Step(
            state=b"state-2",
            objects=[7, 3],
            frames=[f"{9:064x}"],
            bank={7: {"m:0": b"memory", "p:0": b"pointer"}, 3: {"c:0": b"prompted"}},
            results={7: {"0": b"mask-7"}, 3: {"0": b"mask-3"}},
        )
        assert store.commit(lease, 1, step, [7, 3]) == 2
        assert step.nbytes == len(b"state-2memorypointerpromptedmask-7mask-3") + 32
    journal = store.journal(session_id)
    assert (journal.revision, journal.objects, journal.state, journal.frame_count) == (2, (7, 3), b"state-2", 6)
    assert store.frame_ids(session_id, 5) == [f"{9:064x}"]
    assert store.bank(session_id, [7, 3]) == {7: {"m:0": b"memory", "p:0": b"pointer"}, 3: {"c:0": b"prompted"}}
    assert store.results(session_id, {7: ["0", "1"], 3: ["0"]}) == {7: [b"mask-7", None], 3: [b"mask-3"]}
    parts = ["journal", "frames", "lease", "bank:7", "results:7", "bank:3", "results:3"]
    keys = [store.key(session_id, part) for part in parts]
    assert len({redis.crc.key_slot(key.encode()) for key in keys}) == 1  # one Redis Cluster slot
    assert keys[0] == f"{store.keys.prefix}:sess:v1:{{{MODEL_ID}:{session_id}}}:journal"
    for key in keys[:2] + keys[3:]:
        assert 0 < raw.pttl(key) <= 3600_000, key  # every key carries the session's time to live


def test_a_step_deletes_fields_and_dropped_objects_whole(make_sessions, raw) -> None:
    store = make_sessions()
    session_id = store.create(FRAMES, b"")
    with store.lease(session_id) as lease:
        store.commit(lease, 1, Step(objects=[1, 2], bank={1: {"a": b"1", "b": b"2"}, 2: {"a": b"3"}}), [1, 2])
        store.commit(lease, 2, Step(objects=[1], bank={1: {"a": None}}, dropped=[2]), [1])
    assert store.bank(session_id, [1, 2]) == {1: {"b": b"2"}, 2: {}}
    assert not raw.exists(store.key(session_id, "bank:2"))
    assert store.delete(session_id) == 3
    assert not any(raw.exists(store.key(session_id, p)) for p in ("journal", "frames", "bank:1", "lease"))
    refused(Reason.SESSION_NOT_FOUND, lambda: store.journal(session_id))
    assert store.delete(session_id) is None  # closing twice is not an error of the store


def test_compare_and_set_refuses_a_stale_revision_and_writes_nothing(make_sessions) -> None:
    store = make_sessions()
    session_id = store.create(FRAMES, b"first")
    with store.lease(session_id) as lease:
        store.commit(lease, 1, Step(state=b"second"), [])
        error = refused(Reason.REVISION_MISMATCH, lambda: store.commit(lease, 1, Step(state=b"stale"), []))
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.metadata == {"session_id": session_id, "revision": "2", "expected_revision": "1"}
    assert "revision 2" in error.message
    assert store.journal(session_id).state == b"second"


def test_one_writer_at_a_time_and_a_dead_writer_is_taken_over_within_a_lease(make_sessions) -> None:
    replica_a, replica_b = make_sessions(), make_sessions()
    session_id = replica_a.create(FRAMES, b"")
    lease = replica_a.lease(session_id)
    busy = refused(Reason.SESSION_BUSY, lambda: replica_b.lease(session_id, wait_seconds=0.3))
    assert busy.code == grpc.StatusCode.ABORTED
    time.sleep(1.5)  # longer than the 1 s lease: a live holder renews it
    refused(Reason.SESSION_BUSY, lambda: replica_b.lease(session_id, wait_seconds=0.1))
    lease.release()
    replica_b.lease(session_id, wait_seconds=0.1).release()
    # A holder that dies (here: a token taken and never renewed) lets go within one lease TTL.
    assert replica_a.locks.try_take(session_id) is not None
    started = time.monotonic()
    with replica_b.lease(session_id) as taken_over:
        assert time.monotonic() - started < 1.5
        assert replica_b.commit(taken_over, 1, Step(state=b"b"), []) == 2


def test_a_writer_that_lost_its_lease_stores_nothing(make_sessions, raw) -> None:
    store = make_sessions()
    session_id = store.create(FRAMES, b"kept")
    stalled = store.lease(session_id)
    stalled.held._released.set()  # its heartbeat stops, as in a process frozen past the lease TTL
    time.sleep(1.2)
    with store.lease(session_id, wait_seconds=0.1) as other:
        error = refused(Reason.SESSION_BUSY, lambda: store.commit(stalled, 1, Step(state=b"lost"), []))
        assert "nothing of this step was stored" in error.message
        assert store.commit(other, 1, Step(state=b"other"), []) == 2
    assert store.journal(session_id).state == b"other"


def test_closing_a_session_stops_its_writer_at_the_next_commit(make_sessions) -> None:
    store = make_sessions()
    session_id = store.create(FRAMES, b"")
    with store.lease(session_id) as lease:
        store.delete(session_id)
        error = refused(Reason.SESSION_NOT_FOUND, lambda: store.commit(lease, 1, Step(state=b"x"), []))
    assert error.code == grpc.StatusCode.NOT_FOUND and error.metadata == {"session_id": session_id}


def test_open_sessions_are_limited_per_tenant_and_expired_ones_do_not_count(make_sessions) -> None:
    store = make_sessions(max_sessions=2, ttl_seconds=1)
    first = store.create(FRAMES, b"")
    store.create(FRAMES, b"")
    error = refused(Reason.SESSION_LIMIT, lambda: store.create(FRAMES, b""))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.metadata == {"limit": "max_sessions"}
    other_tenant = store.for_tenant("bob")
    other_tenant.create(FRAMES, b"")  # counted apart
    store.delete(first)
    store.create(FRAMES, b"")
    time.sleep(1.2)  # both expire (Redis deletes them), and stop counting
    refused(Reason.SESSION_NOT_FOUND, lambda: store.journal(first))
    store.create(FRAMES, b"")
    store.create(FRAMES, b"")


def test_tenants_never_see_each_others_sessions(make_sessions) -> None:
    store = make_sessions()
    alice, bob = store.for_tenant("alice"), store.for_tenant("bob")
    session_id = alice.create(FRAMES, b"secret")
    not_found = refused(Reason.SESSION_NOT_FOUND, lambda: bob.journal(session_id))
    assert "never opened" in not_found.message  # the same words as for an id nobody opened
    assert ":tenant:alice:sess:" in alice.key(session_id, "journal")
    with bob.lease(session_id) as lease:  # bob's lease is his own key: it cannot touch alice's session
        refused(Reason.SESSION_NOT_FOUND, lambda: bob.commit(lease, 1, Step(state=b"x"), []))
    assert alice.journal(session_id).state == b"secret"


def test_a_session_key_of_another_type_is_deleted_and_answered_not_found(make_sessions, raw) -> None:
    store = make_sessions()
    for broken in ("frames", "journal", "bank:1"):
        session_id = store.create(FRAMES, b"")
        with store.lease(session_id) as lease:
            store.commit(lease, 1, Step(objects=[1], bank={1: {"a": b"1"}}), [1])
        raw.delete(store.key(session_id, broken))
        raw.rpush(store.key(session_id, broken), b"not ours")
        error = refused(
            Reason.SESSION_NOT_FOUND,
            lambda: (store.journal(session_id), store.bank(session_id, [1])),  # noqa: B023
        )
        assert "unreadable" in error.message
        assert not raw.exists(store.key(session_id, "journal")), broken


def test_the_store_refuses_to_serve_sessions_on_a_redis_that_evicts(make_sessions, redis_url) -> None:
    make_sessions().check_never_evicts()  # noeviction
    with pytest.raises(SessionsWouldBeEvictedError, match="maxmemory-policy allkeys-lru") as caught:
        make_sessions(url=redis_url).check_never_evicts()  # the embedding cache's LRU server
    assert "--session-redis-url" in str(caught.value)
    with start_embedded_redis(maxmemory="0", policy="allkeys-lru") as unlimited:  # no maxmemory: nothing is evicted
        make_sessions(url=unlimited.url).check_never_evicts()


def test_a_full_store_refuses_the_whole_step(make_sessions) -> None:
    with start_embedded_redis(maxmemory="8mb", policy="noeviction") as small:
        store = make_sessions(url=small.url)
        session_id = store.create(FRAMES, b"")
        with store.lease(session_id) as lease:
            revision = 1
            with pytest.raises(ServiceError) as caught:
                for frame in range(100):  # ~1 MB a step
                    step = Step(state=f"{frame}".encode(), objects=[1], bank={1: {f"m:{frame}": bytes(1 << 20)}})
                    revision = store.commit(lease, revision, step, [1])
        assert caught.value.reason == Reason.SESSION_LIMIT
        assert caught.value.metadata == {"limit": "session_store_memory"}
        journal = store.journal(session_id)
        assert journal.revision == revision > 2 and journal.state == f"{revision - 2}".encode()  # the last whole step
        assert len(store.bank(session_id, [1])[1]) == revision - 1  # the refused step wrote none of its fields


def test_a_stopped_store_is_unavailable_and_recovers(make_sessions) -> None:
    with start_embedded_redis(maxmemory="16mb", policy="noeviction") as server:
        store = make_sessions(url=server.url)
        session_id = store.create(FRAMES, b"")
        server.stop()
        error = refused(Reason.STORE_UNAVAILABLE, lambda: store.journal(session_id))
        assert error.code == grpc.StatusCode.UNAVAILABLE
        server.start()  # an empty server: the session is gone, and the store works again
        refused(Reason.SESSION_NOT_FOUND, lambda: store.journal(session_id))
        assert store.journal(store.create(FRAMES, b"")).revision == 1


def test_concurrent_writers_serialise_on_the_lease(make_sessions) -> None:
    """Eight threads each commit ten steps through the lease: no step is lost, none applied twice."""
    store = make_sessions(lease_ttl_seconds=5.0)
    session_id = store.create(FRAMES, b"0")

    def writer() -> None:
        for _ in range(10):
            with store.lease(session_id, wait_seconds=30) as lease:
                journal = store.journal(session_id)
                store.commit(lease, journal.revision, Step(state=str(int(journal.state) + 1).encode()), [])

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    journal = store.journal(session_id)
    assert (journal.revision, journal.state) == (81, b"80")
