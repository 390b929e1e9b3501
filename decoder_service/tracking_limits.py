"""What one caller may make a tracker worker hold or do, and the refusal naming the limit it hit."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from decoder_service.budget import ResponseLimits
from sam3_serving.errors import Reason, ServiceError

__all__ = ["TrackerSettings", "limit_exceeded"]


@dataclass(frozen=True)
class TrackerSettings:
    """What one caller may make a tracker worker hold or do (each limit is named in its refusal)."""

    max_objects_per_session: int = 16
    max_frames_per_session: int = 20_000
    max_prompted_frames: int = 16  # per object: each prompted frame keeps a memory for the session's life
    max_sessions_per_worker: int = 16  # held in memory by one replica
    max_concurrent_tracking: int = 2  # prompts and propagations running the model at once
    responses: ResponseLimits = ResponseLimits()

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, int) and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


def limit_exceeded(message: str, limit: str) -> ServiceError:
    """RESOURCE_EXHAUSTED / SESSION_LIMIT naming `limit`, the setting a caller can ask an operator about."""
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, message, Reason.SESSION_LIMIT, limit=limit)
