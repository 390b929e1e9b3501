"""A worker as a child process on a free loopback port, started and waited for until it serves.

What tests and `sam3 bench` use to exercise a real worker process: the same command line a user runs
(`python -m sam3_cli serve|encoder|decoder ...`), named here by module, not imported. The output goes
to a temporary file (a pipe nobody reads would fill and block the worker) and is shown when the
worker fails to start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from types import TracebackType

from sam3_serving.health_check import wait_until_serving
from sam3_serving.redis_server import free_port

__all__ = ["WorkerProcess"]


class WorkerProcess:
    """`WorkerProcess("serve", "--model-dir", DIR)`: started at once; `target` answers once it returns."""

    def __init__(
        self, command: str, *arguments: str, env: dict[str, str] | None = None, start_timeout: float = 120.0
    ) -> None:
        port = free_port()
        self.target = f"127.0.0.1:{port}"
        self._output = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the worker
        argv = [sys.executable, "-m", "sam3_cli", command, "--host", "127.0.0.1", "--port", str(port), *arguments]
        self.process = subprocess.Popen(
            argv, stdout=self._output, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
        )
        try:
            wait_until_serving(self.target, timeout=start_timeout, alive=lambda: self.process.poll() is None)
        except (RuntimeError, TimeoutError) as error:
            self.stop()
            raise RuntimeError(f"{error}: exit code {self.process.returncode}\n{self.output()}") from error

    def output(self) -> str:
        """Everything the worker printed so far."""
        self._output.seek(0)
        return self._output.read()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a graceful drain), then SIGKILL after `timeout`; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
