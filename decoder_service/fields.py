"""Checks of request fields that Segment and SegmentConcept share: no enum is read as a default, and a
bad field is INVALID_ARGUMENT naming it."""

from __future__ import annotations

from typing import Any

import grpc

from sam3_client import wire
from sam3_core.polygons import DEFAULT_TOLERANCE
from sam3_core.prompts import PromptError
from sam3_serving.errors import Reason, ServiceError

__all__ = ["check_image_id", "enum_problem", "invalid_prompt", "polygon_tolerance", "require_enum"]

MAX_POLYGON_TOLERANCE = 100.0  # pixels


def invalid_prompt(error: PromptError) -> ServiceError:
    """A request field's problem as the caller sees it: INVALID_ARGUMENT / INVALID_PROMPT naming the field."""
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, str(error), Reason.INVALID_PROMPT, field=error.field)


def enum_problem(enum: Any, value: int) -> str:
    """Why an enum value is refused: never set (the zero value), or unknown to this server."""
    choices = ", ".join(name for name, number in enum.items() if number != 0)
    if value == 0:
        return f"not set (an enum name your library did not know also arrives as 0); send one of {choices}"
    return f"unknown value {value}; send one of {choices}"


def require_enum(field: str, enum: Any, value: int) -> int:
    """`value` if it names one of `enum`'s values other than the zero one, else PromptError for `field`."""
    if value == 0 or value not in enum.values():  # unset, or from a newer (or broken) client: never a default
        raise PromptError(field, enum_problem(enum, value))
    return value


def check_image_id(image_id: str) -> None:
    """The form of an image id (it may still not be stored); PromptError for "image_id" otherwise."""
    if not wire.is_image_id(image_id):
        raise PromptError("image_id", "expected the 64 lowercase hex digits of the image's sha256")


def polygon_tolerance(request: Any) -> float:
    """The request's `polygon_tolerance` (unset: the default), a number of pixels in [0, 100]."""
    if not request.HasField("polygon_tolerance"):
        return DEFAULT_TOLERANCE
    tolerance = float(request.polygon_tolerance)
    if not 0.0 <= tolerance <= MAX_POLYGON_TOLERANCE:  # NaN fails too
        raise PromptError("polygon_tolerance", f"{tolerance} is not within [0, {MAX_POLYGON_TOLERANCE:g}] pixels")
    return tolerance
