"""Shared fixtures: a real Redis-protocol server for every test that needs one (never a mock).

Set REDIS_URL to run against your own server instead of an embedded one. Tests then never flush
it: each test gets its own key namespace (`redis_namespace`) and deletes only those keys.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import pytest

from sam3_serving.redis_server import EmbeddedRedis, start_embedded_redis

# Tests that install into a venv of their own first (minutes of pip): each runs when asked for by its marker
# (`make test-labelstudio` is `-m labelstudio`, `make test-export-extra` is `-m export_extra`), not in every run.
OPT_IN_MARKERS = ("labelstudio", "export_extra")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    asked = config.getoption("markexpr") or ""
    left_out = [marker for marker in OPT_IN_MARKERS if marker not in asked]
    skipped = [item for item in items if any(item.get_closest_marker(marker) for marker in left_out)]
    if skipped:
        config.hook.pytest_deselected(items=skipped)
        items[:] = [item for item in items if item not in skipped]


@pytest.fixture(autouse=True)
def _root_logger_as_found() -> Iterator[None]:
    """A command run in-process (`main(["serve", ...])`) configures the root logger for a worker process:
    its handler writes to that test's captured stderr, closed once the test ends. Put the root logger back
    so one test's logging setup cannot reach the next test's log lines."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis shared by the session: $REDIS_URL if set, else an embedded server."""
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    with start_embedded_redis(maxmemory="256mb") as server:
        yield server.url


@pytest.fixture(scope="session")
def session_redis_url() -> Iterator[str]:
    """URL of a Redis that never evicts, for video sessions: $SESSION_REDIS_URL if set, else an embedded server."""
    external = os.environ.get("SESSION_REDIS_URL")
    if external:
        yield external
        return
    with start_embedded_redis(maxmemory="256mb", policy="noeviction") as server:
        yield server.url


@pytest.fixture
def redis_namespace(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this test; its keys are deleted afterwards (the server is never flushed)."""
    import redis

    prefix = f"sam3test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


@pytest.fixture
def redis_server() -> Iterator[EmbeddedRedis]:
    """A private embedded server this test may stop, kill and restart."""
    with start_embedded_redis(maxmemory="256mb") as server:
        yield server
