"""What a worker serves: the encoder, the decoder, or both (`sam3 serve`).

A role's value labels the worker's metrics (`sam3_in_flight_requests{worker="encoder"}`, what the
encoder autoscaler selects) and its log lines. Kept free of heavy imports: the CLI names roles before
it knows whether a worker will start.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

__all__ = ["Role", "worker_label"]


class Role(StrEnum):
    ENCODER = "encoder"
    DECODER = "decoder"


def worker_label(roles: Iterable[Role]) -> str:
    """The metric and log label of a worker serving `roles`: "encoder", "decoder" or "decoder+encoder"."""
    names = sorted(Role(role).value for role in roles)
    if not names:
        raise ValueError("a worker serves at least one role")
    return "+".join(names)
