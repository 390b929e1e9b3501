"""Failures as Label Studio shows them.

Label Studio reports a backend's failure by the HTTP status line alone: its connector calls
`raise_for_status()` and shows "<code> Server Error: <reason phrase> for url: ..." in the model's
card (/setup) or the labelling screen (interactive predictions); the body is never read. So every
failure here travels as a status whose reason phrase is the message a person can act on, and the
JSON body repeats it as {"error": ...} (what label-studio-ml backends send) for logs and scripts.
"""

from __future__ import annotations

from sam3_client import Reason, Sam3Error

__all__ = ["BackendError", "from_sam3", "reason_phrase"]

_PHRASE_LIMIT = 400  # characters of a status line's reason phrase; the JSON body has the whole message


class BackendError(Exception):
    """A request the backend cannot answer: the HTTP status and what the person should do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def reason_phrase(message: str) -> str:
    """`message` fit for an HTTP status line: one line, Latin-1 (what HTTP/1.1 carries), bounded."""
    line = " ".join(message.split())
    if len(line) > _PHRASE_LIMIT:
        line = line[: _PHRASE_LIMIT - 3] + "..."
    return line.encode("latin-1", "replace").decode("latin-1")


def from_sam3(error: Sam3Error, target: str) -> BackendError:
    """A failed sam3 call, said for the person looking at Label Studio (`target`: where sam3 is called; the
    error's own target, when it has one, names the worker that failed: the encoder's or the decoder's)."""
    code, reason, message, target = error.code.name, error.reason, error.message, error.target or target
    if reason is Reason.CONCEPTS_NOT_SUPPORTED:
        return BackendError(
            400,
            "the sam3 service's model answers clicks and boxes only: text prompts and predictions without "
            "prompts need a model folder exported with concepts (sam3 models export)",
        )
    if reason is Reason.UNAUTHENTICATED or code == "UNAUTHENTICATED":
        return BackendError(502, f"the sam3 service at {target} refused the token: set SAM3_TOKEN to its --auth-token")
    if code == "UNAVAILABLE" and reason is None:
        return BackendError(
            502, f"the sam3 service at {target} is unreachable ({message}): start it, or set SAM3_SERVER"
        )
    if code == "DEADLINE_EXCEEDED":
        return BackendError(504, f"the sam3 service at {target} took too long: {message}")
    status = _STATUSES.get(reason, 502) if reason else 502
    return BackendError(status, f"sam3: {message} ({reason or code})")


# Reasons a person can act on, as HTTP statuses Label Studio shows: bad input 400, too large 413, busy 503.
_STATUSES = {
    Reason.INVALID_IMAGE: 400,
    Reason.INVALID_PROMPT: 400,
    Reason.IMAGE_TOO_LARGE: 413,
    Reason.RESPONSE_TOO_LARGE: 413,
    Reason.OVERLOADED: 503,
    Reason.STORE_UNAVAILABLE: 503,
    Reason.SHUTTING_DOWN: 503,
}
