"""What the `sam3` command says when something fails: one sentence of what happened and one of what to do.

Failed service calls arrive as `Sam3Error` (status code, server message, machine-readable reason and
metadata such as the offending field); `explain` turns them into that sentence for the target they
were sent to.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from grpc import StatusCode

from sam3_client import Reason, Sam3Error

START_HINT = "start one with: sam3 serve --model-dir DIR"


class CliError(Exception):
    """A failure the user can fix; printed as one line without a traceback (exit code 1)."""


class UsageError(CliError):
    """A command line that cannot work as given (a bad value, a missing flag): exit code 2, like argparse's."""


def _connection_problem(message: str) -> str:
    """gRPC's transport detail in a few words ('connection refused', 'the host name does not resolve')."""
    lowered = message.lower()
    if "connection refused" in lowered:
        return "connection refused"
    if "dns" in lowered or "resolv" in lowered or "name or service not known" in lowered:
        return "the host name does not resolve"
    if "ssl" in lowered or "tls" in lowered or "handshake" in lowered:
        return f"the TLS handshake failed ({message}); check --tls and the server's certificate"
    if "timeout" in lowered or "timed out" in lowered:
        return "the connection timed out"
    last = re.split(r"last error: ", message)[-1]
    return last.strip() or "unavailable"


def unreachable(target: str, message: str) -> str:
    return f"cannot reach {target}: {_connection_problem(message)}. Is `sam3 serve` running there? ({START_HINT})"


def explain(
    error: Sam3Error,
    target: str,
    *,
    flag_for: Callable[[str], str] | None = None,
    timeout: float | None = None,
) -> str:
    """A Sam3Error (from the SDK) as one helpful sentence; `flag_for` maps a request field to its flag."""
    code, reason, message, metadata = error.code, error.reason, error.message or "", error.metadata
    if code == StatusCode.UNAVAILABLE:
        if reason == Reason.STORE_UNAVAILABLE:
            return (
                f"{target} cannot reach its embedding store ({message}). Check the workers' --redis-url and that "
                "Redis is up; the service recovers by itself once it is back."
            )
        if reason == Reason.SHUTTING_DOWN:
            return f"{target} is shutting down ({message}). Retry in a moment, or point at another replica."
        return unreachable(target, message)
    if code == StatusCode.DEADLINE_EXCEEDED:
        within = f" within {timeout:g} s" if timeout else " within the deadline"
        return (
            f"{target} did not answer{within}. The server may be busy or the image large: retry, raise --timeout, "
            "or add replicas."
        )
    if code == StatusCode.UNAUTHENTICATED:
        return (
            f"{target} refused the call: {message or 'missing or wrong token'}. Pass the token the workers were "
            "started with (--auth-token) as --token TOKEN or SAM3_TOKEN."
        )
    if code == StatusCode.PERMISSION_DENIED:
        return f"{target} refused the call: {message}. Check --token."
    if code == StatusCode.INVALID_ARGUMENT:
        field = metadata.get("field", "")
        if reason == Reason.INVALID_IMAGE or field == "image":
            return f"the server cannot use the image: {_strip_field(message, 'image')}"
        if field:
            shown = flag_for(field) if flag_for else field
            return f"the server rejected {shown}: {_strip_field(message, field)}"
        return f"the server rejected the request: {message}"
    if code == StatusCode.RESOURCE_EXHAUSTED:
        if reason == Reason.OVERLOADED:
            return f"{target} is busy ({message}). Retry in a moment, or run more encoder replicas."
        if reason == Reason.IMAGE_TOO_LARGE:
            limit = f" ({metadata['limit']})" if metadata.get("limit") else ""
            return (
                f"the image is larger than {target} accepts{limit}: {_strip_field(message, 'image')}. "
                "Downscale it, or raise the encoder's --max-image-pixels."
            )
        if "message" in message.lower() and "larger than" in message.lower():
            return (
                f"the request or answer is over the gRPC message limit ({message}). Raise the workers' "
                "--max-message-mb, or send a smaller image."
            )
        return f"{target} is out of resources: {message}. Retry later."
    if code == StatusCode.NOT_FOUND:
        return f"{target}: {message}. Encode the image first (sam3 encode IMAGE --server {target})."
    if code == StatusCode.UNIMPLEMENTED:
        return f"{target} does not serve this call ({message}). Is it a sam3 worker of a matching version?"
    return f"{target}: {code.name}: {message}"


def _strip_field(message: str, field: str) -> str:
    """'image: not an image' -> 'not an image' (the sentence already names the field)."""
    prefix = f"{field}: "
    return message[len(prefix) :] if message.startswith(prefix) else message
