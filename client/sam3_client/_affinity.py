"""Affinity by image id: every call about one image goes to the same decoder, so its local cache hits.

With round robin, the clicks on one image reach every decoder replica and each one pays the store
fetch (21 MB at float32) once; with R replicas, R cold clicks per image instead of one. For a
`dns:///name:port` target (or a literal `ipv4:a:p,b:p` list) the client resolves the addresses,
keeps one channel per address, and sends the calls about an image (the rpcs the table `_rpcs.Rpc`
marks `routed`) to the address that wins rendezvous hashing of (address, image id): every client
picks the same owner without talking to the others, and adding or removing a replica moves only
~1/R of the images.

Failure: an address whose call fails with UNAVAILABLE is skipped for `down_seconds` (its images go
to their next address by the same hash); when every address fails, the call goes over the ordinary
round_robin channel with gRPC's retries. Addresses are re-resolved every `refresh_seconds` (a
blocking getaddrinfo, also under asyncio: sub-millisecond against a cluster's DNS cache).

Routed calls also carry the id in the `sam3-image-id` header, so an L7 proxy in front of the
decoders can hash on it instead (Envoy RING_HASH/MAGLEV, Istio consistentHash: docs/deploy.md).
A video session's calls are routed the same way by its session id (`sam3-session-id`): the replica
that served its last call still holds it in memory, and any other one can take it over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["IMAGE_ID_HEADER", "SESSION_ID_HEADER", "AffinityPool", "rendezvous_order"]

IMAGE_ID_HEADER = "sam3-image-id"
SESSION_ID_HEADER = "sam3-session-id"
HEADERS = {"image_id": IMAGE_ID_HEADER, "session_id": SESSION_ID_HEADER}  # by the request field routing a call
Resolver = Callable[[str, int], list[str]]
T = TypeVar("T")


def rendezvous_order(addresses: Sequence[str], image_id: str) -> list[str]:
    """`addresses` from the image's owner to its last fallback (highest-random-weight hashing)."""

    def weight(address: str) -> bytes:
        return hashlib.blake2b(f"{address}\0{image_id}".encode(), digest_size=8).digest()

    return sorted(addresses, key=weight, reverse=True)


def resolve(host: str, port: int) -> list[str]:
    """Every TCP address of host:port, as gRPC targets ("10.0.0.7:50051", "[fd00::7]:50051"), sorted."""
    found = set()
    for family, _, _, _, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        address = str(sockaddr[0])
        found.add(f"[{address}]:{port}" if family == socket.AF_INET6 else f"{address}:{port}")
    return sorted(found)


def _parse(target: str) -> tuple[str, int] | list[str] | None:
    """`dns:///host:port` -> (host, port); `ipv4:a:p,b:p` -> the addresses; anything else -> None."""
    if target.startswith("dns:///"):
        host, _, port = target[len("dns:///") :].rpartition(":")
        return (host.strip("[]"), int(port)) if host and port.isdigit() else None
    if target.startswith("ipv4:"):
        return sorted(target[len("ipv4:") :].split(","))
    return None


class AffinityPool:
    """One decoder channel per address of a multi-address target; `candidates(key, stub)` in hash order."""

    @classmethod
    def for_target(cls, module: Any, target: str, settings: Any, **options: Any) -> AffinityPool | None:
        """A pool when `target` names several addresses by DNS or literally; None for a plain host:port."""
        parsed = _parse(target)
        return None if parsed is None else cls(module, parsed, settings, **options)

    def __init__(
        self,
        module: Any,
        addresses: tuple[str, int] | list[str],
        settings: Any,
        *,
        resolver: Resolver = resolve,
        refresh_seconds: float = 30.0,
        down_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._module = module
        self._name: tuple[str, int] | None = addresses if isinstance(addresses, tuple) else None
        self._literal: list[str] | None = None if isinstance(addresses, tuple) else addresses
        # The pool does its own failover between addresses: one attempt each, no waiting for a dead one.
        self._settings = dataclasses.replace(
            settings,
            retry_attempts=1,
            wait_for_ready=False,
            tls_server_name=settings.tls_server_name or (self._name[0] if settings.tls and self._name else None),
        )
        self._resolver = resolver
        self._refresh_seconds = refresh_seconds
        self._down_seconds = down_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._channels: dict[str, Any] = {}
        self._down_until: dict[str, float] = {}
        self._resolved_at = -float("inf")

    @property
    def addresses(self) -> list[str]:
        with self._lock:
            self._refresh()
            return sorted(self._channels)

    def _refresh(self) -> None:
        """Caller holds the lock. Re-resolve when due; open channels for new addresses, close gone ones."""
        now = self._clock()
        if now - self._resolved_at < self._refresh_seconds:
            return
        self._resolved_at = now
        if self._literal is not None:
            current = self._literal
        else:
            assert self._name is not None
            try:
                current = self._resolver(*self._name)
            except OSError:
                return  # DNS hiccup: keep the addresses we have (none yet: calls use the fallback channel)
        for gone in set(self._channels) - set(current):
            self._channels.pop(gone).close()
        for address in current:
            if address not in self._channels:
                self._channels[address] = self._open(address)

    def _open(self, address: str) -> Any:
        from sam3_client._channel import open_channel  # _channel builds the pool: import at use

        return open_channel(self._module, address, self._settings)

    def candidates(self, key: str, stub: Callable[[Any], T]) -> list[tuple[str, T]]:
        """(address, `stub` on its channel) to try for this image or session: its owner first, skipping
        addresses recently down."""
        with self._lock:
            self._refresh()
            now = self._clock()
            order = rendezvous_order(list(self._channels), key)
            return [(a, stub(self._channels[a])) for a in order if self._down_until.get(a, 0.0) <= now]

    def failed(self, address: str) -> None:
        """A call to `address` failed with UNAVAILABLE: route its images to their next address for a while."""
        with self._lock:
            self._down_until[address] = self._clock() + self._down_seconds

    def close(self) -> Any:
        """Close every channel; returns what the last close returned (a coroutine under grpc.aio)."""
        with self._lock:
            closing = [channel.close() for channel in self._channels.values()]
            self._channels.clear()
        return closing
