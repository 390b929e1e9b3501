"""Which targets a client accepts: HOST:PORT, or one of gRPC's own target syntaxes, always with a port.

gRPC dials port 443 when a target names none, so `Client("localhost")` would wait on a port no sam3
worker listens on and fail seconds later with gRPC's raw message. A target without a port is refused
instead, with the fix in the message, rather than given a default: a default of 50051 would make the
same string mean one port here and another in every other gRPC client (grpcurl, Node), and a TLS
endpoint on 443 costs four characters to say. The clients and every `sam3` command that takes a
target apply this one rule (the command line as a usage error naming its flag).

Accepted: `host:port`, `[v6 address]:port`, `dns:[//authority/]host:port`, `ipv4:a:port,b:port`,
`ipv6:[a]:port,...`, and targets whose syntax has no port (`unix:path`, `unix-abstract:name`,
`vsock:cid:port`) or is another resolver's (`xds:///name`), which are passed on unchecked.
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_PORT", "TargetError", "check_target"]

DEFAULT_PORT = 50051  # what `sam3 serve` listens on: suggested in messages, never assumed
_UNCHECKED = ("unix:", "unix-abstract:", "vsock:")
_URL_SCHEMES = {"http": False, "https": True, "grpc": False, "grpcs": True}  # -> means TLS
_DIALS_443 = " (gRPC would dial 443)"
_RESOLVER_URI = re.compile(r"^[a-z][a-z0-9+.-]*:///")  # xds:///name, google-c2p:///name, ...


class TargetError(ValueError):
    """A target gRPC would dial somewhere else than meant: what is wrong, and a target that would work."""

    def __init__(self, target: str, problem: str, example: str, *, tls: bool = False) -> None:
        self.target = target
        self.problem = problem  # reads after the target: "has no port (...)"
        self.example = example  # a corrected target, e.g. "localhost:50051"
        self.tls = tls  # the target was an https:// or grpcs:// URL: the fix also needs TLS
        with_tls = " with ChannelSettings(tls=True)" if tls else ""
        super().__init__(f"target {target!r} {problem}: give HOST:PORT, e.g. {example!r}{with_tls}")


def check_target(target: str) -> None:
    """Raise TargetError when gRPC would read `target` differently from HOST:PORT as meant."""
    if not target or target != "".join(target.split()):
        problem = "contains spaces" if target.strip() else "is empty"
        raise TargetError(target, problem, "".join(target.split()) or f"localhost:{DEFAULT_PORT}")
    if target.startswith(_UNCHECKED):
        return
    scheme, separator, rest = target.partition("://")
    if separator and scheme.lower() in _URL_SCHEMES:
        tls = _URL_SCHEMES[scheme.lower()]
        address = rest.split("/", 1)[0]
        example = _corrected(address, 443 if tls else DEFAULT_PORT)
        raise TargetError(target, "is a URL, and a gRPC target has no scheme", example, tls=tls)
    if target.startswith("dns:"):
        prefix, addresses = _split_dns(target)
    elif target.startswith(("ipv4:", "ipv6:")):
        prefix, addresses = target[:5], target[5:].split(",")
    elif _RESOLVER_URI.match(target):
        return
    else:
        prefix, addresses = "", [target]
    for address in addresses:
        wrong = _problem(address)
        if wrong is not None:
            raise TargetError(target, wrong, prefix + ",".join(_corrected(a, DEFAULT_PORT) for a in addresses))


def _split_dns(target: str) -> tuple[str, list[str]]:
    """'dns:///name:1' -> ('dns:///', ['name:1']); 'dns://8.8.8.8/name:1' -> ('dns://8.8.8.8/', ['name:1'])."""
    rest = target[len("dns:") :]
    if rest.startswith("//"):
        authority, _, address = rest[2:].partition("/")
        return f"dns://{authority}/", [address]
    return "dns:", [rest]


def _split(address: str) -> tuple[str, str | None]:
    """'host:port' -> ('host', 'port'); '[v6]:port' -> ('[v6]', 'port'); no port -> (host, None).
    A bare IPv6 address ('::1') gets its brackets: gRPC reads it as a host without a port."""
    if address.startswith("["):
        host, closing, port = address.partition("]")
        return host + closing, port[1:] if port.startswith(":") else None
    if address.count(":") > 1:
        return f"[{address}]", None
    host, separator, port = address.partition(":")
    return host, port if separator else None


def _problem(address: str) -> str | None:
    """What makes gRPC dial elsewhere than `address` means, or None."""
    host, port = _split(address)
    if host.startswith("[") and not host.endswith("]"):
        return "has an unclosed '[' (an IPv6 address is written [address]:port)"
    if not host.strip("[]"):
        return "has no host"
    if port is None:
        bare_ipv6 = address.count(":") > 1 and not address.startswith("[")
        return ("is an IPv6 address without brackets and port" if bare_ipv6 else "has no port") + _DIALS_443
    if not port:
        return "has no port after the ':'" + _DIALS_443
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"has the port {port!r}, not a number from 1 to 65535"
    return None


def _corrected(address: str, default_port: int) -> str:
    """`address` with a host and a valid port: its own when it has them, else localhost / `default_port`."""
    host, port = _split(address)
    host = host if host.strip("[]") and (host.endswith("]") or not host.startswith("[")) else "localhost"
    valid = port is not None and port.isdigit() and 1 <= int(port) <= 65535
    return f"{host}:{port if valid else default_port}"
