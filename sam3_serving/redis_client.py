"""A store URL -> a redis-py client: one server, or a Redis Cluster. The store's only topology-aware code.

- `redis://`, `rediss://` (TLS), `unix://`: one server. Managed Redis with a primary endpoint that
  follows failover (ElastiCache, Memorystore, Azure Cache without cluster mode) and a Sentinel-aware
  proxy (e.g. HAProxy checking `role:master`) fit here: the store reconnects on the next call.
- `redis+cluster://host:port[,host:port...]` (`rediss+cluster://` for TLS): Redis Cluster through
  redis-py's `RedisCluster`, which follows MOVED/ASK redirects and re-reads the slot map after a
  failover. Every key the store touches for one image carries the same `{model:image}` hash tag, so
  the value, its lock and the MULTI/EXEC and script that read them both stay in one slot. There is
  no pub/sub, and no command spans images, so nothing needs cross-slot support.

Both kinds share the store's failure policy: every socket call bounded by `socket_timeout`, one
immediate retry on a connection error (a pooled connection the server closed; in a cluster also the
first call after a master died, which re-reads the slot map), none on a timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode
from redis.commands.core import Script
from redis.connection import Encoder
from redis.exceptions import RedisClusterException
from redis.retry import Retry

__all__ = ["SCHEMES", "RedisClient", "connect", "is_cluster_url"]

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
SCHEMES = ("redis", "rediss", "unix", *_CLUSTER_SCHEMES)
RedisClient = redis.Redis | redis.RedisCluster

# Stateless (a size cutoff and an encode function), so one instance serves every pooled connection.
# With hiredis installed, redis-py packs commands with hiredis.pack_command, which copies a 10 MB
# value into a new buffer (measured 23 ms for 10 MB, half of a SET). The pure-Python packer sends
# large arguments as separate chunks, without copying them.
_ENCODER = Encoder("utf-8", "strict", decode_responses=False)
_ZERO_COPY_PACKER = redis.connection.PythonRespSerializer(6000, _ENCODER.encode)


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in _CLUSTER_SCHEMES


def _cluster_nodes(url: str) -> tuple[str, list[ClusterNode]]:
    """`redis+cluster://[user:pw@]h1:p1,h2:p2/...` -> (a redis-py URL naming h1:p1, the other startup nodes)."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    first, *others = hosts.split(",")
    nodes = []
    for address in others:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"cluster startup node must be host:port, got {address!r}")
        nodes.append(ClusterNode(host.strip("[]"), int(port)))
    netloc = f"{userinfo}{at}{first}"
    return parts._replace(scheme=_CLUSTER_SCHEMES[parts.scheme], netloc=netloc).geturl(), nodes


def connect(url: str, *, socket_timeout: float) -> RedisClient:
    """A client for `url` (see the module docstring), with the store's timeouts and retry policy."""
    options = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "health_check_interval": 30,
        "retry_on_timeout": False,
        "decode_responses": False,
        "command_packer": _ZERO_COPY_PACKER,
    }
    # Explicit rather than the library's default (Redis() retries 10 times with backoff, timeouts
    # included; RedisCluster 3 times): one immediate retry on a connection error, none on a timeout,
    # so a frozen Redis costs one socket_timeout, not ten.
    retry = Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, retry=retry, **options)
    first, others = _cluster_nodes(url)
    # The cluster client retries ConnectionError, TimeoutError and CLUSTERDOWN itself, re-reading the
    # slot map in between: its retry object sets only the count, so a timeout is retried once too.
    return cast(
        redis.RedisCluster,
        _LazyCluster(lambda: redis.RedisCluster.from_url(first, startup_nodes=others, retry=retry, **options)),
    )


class _LazyCluster:
    """A RedisCluster built on first use. Its constructor reads the slot map, so building it eagerly
    would make a worker crash at start-up while the cluster is down; with one server a worker starts,
    reports not-ready and recovers by itself, and this keeps the cluster the same. A failed build is a
    `ConnectionError` (what the store turns into UNAVAILABLE) and is tried again on the next call."""

    def __init__(self, build: Callable[[], redis.RedisCluster]) -> None:
        self._build = build
        self._client: redis.RedisCluster | None = None
        self._lock = threading.Lock()

    def _get(self) -> redis.RedisCluster:
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._build()
                except RedisClusterException as error:
                    raise redis.exceptions.ConnectionError(f"Redis Cluster unreachable: {error}") from error
            return self._client

    def register_script(self, script: str) -> Script:
        return Script(self, script)  # resolves the client at call time, through __getattr__

    def get_encoder(self) -> Encoder:
        return _ENCODER  # what Script needs before the first call

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)
