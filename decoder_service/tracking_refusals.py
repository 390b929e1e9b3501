"""The tracking core's refusals as the caller's field problems: one mapping for every TrackerService rpc."""

from __future__ import annotations

from decoder_service.fields import invalid_prompt
from sam3_core.prompts import PromptError
from sam3_core.tracking import TrackingError
from sam3_core.tracking.errors import FrameIndexError, NoPromptsError, UnknownObjectError
from sam3_serving.errors import ServiceError

__all__ = ["core_refusal", "invalid_field"]


def invalid_field(field: str, message: str) -> ServiceError:
    """INVALID_ARGUMENT / INVALID_PROMPT naming a field of the tracker's request."""
    return invalid_prompt(PromptError(field, message))


def core_refusal(error: TrackingError | PromptError) -> ServiceError:
    """The core's refusal as the caller's field problem (a prompt's fields are named as in AddPromptRequest)."""
    if isinstance(error, PromptError):
        field = error.field.removeprefix("objects[0].")
        return invalid_prompt(PromptError(field, str(error).removeprefix(f"{error.field}: ")))
    fields = {FrameIndexError: "frame_index", UnknownObjectError: "object_id", NoPromptsError: "object_ids"}
    return invalid_field(next((f for kind, f in fields.items() if isinstance(error, kind)), "session_id"), str(error))
