"""Retrying "busy" answers: RESOURCE_EXHAUSTED with reason OVERLOADED, within the call's own deadline.

gRPC's retry policy (see _channel) can only match status codes, and RESOURCE_EXHAUSTED also means
"too large", which fails the same way every time. OVERLOADED alone says "the worker is full right
now": the call is repeated after an exponential, jittered pause, as long as its deadline leaves
time, then the last answer is raised. Shared by the sync and async clients (they only sleep).
"""

from __future__ import annotations

import dataclasses
import random
import time

import grpc

from sam3_client._rpcs import Call
from sam3_client.errors import Reason, Sam3Error

FIRST_PAUSE = 0.1  # seconds; doubles per attempt
MAX_PAUSE = 2.0
MIN_ATTEMPT_SECONDS = 0.05  # a retry with less deadline left than this is not worth sending


def is_busy(error: Sam3Error) -> bool:
    """The worker refused for load, not for anything about the request itself."""
    return error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason == Reason.OVERLOADED


class BusyRetry:
    """The retries of one call: `after(error)` gives the pause and the repeated call, or None to give up."""

    def __init__(self, call: Call) -> None:
        self._call = call
        self._deadline = time.monotonic() + call.timeout
        self._attempts = 0

    def after(self, error: Sam3Error) -> tuple[float, Call] | None:
        if not is_busy(error):
            return None
        pause = min(MAX_PAUSE, FIRST_PAUSE * 2**self._attempts) * random.uniform(0.5, 1.0)
        left = self._deadline - time.monotonic() - pause
        if left < MIN_ATTEMPT_SECONDS:
            return None
        self._attempts += 1
        return pause, dataclasses.replace(self._call, timeout=left)
