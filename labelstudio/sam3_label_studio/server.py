"""The HTTP side of the ML backend protocol, as a WSGI app served by waitress.

Label Studio calls GET /health (and GET /), POST /setup, POST /predict and POST /webhook with JSON
bodies. Every failure answers with a status whose reason phrase is the message (errors.py says
why), and {"error": message}. With `basic_auth`, every call must carry it: Label Studio's model
settings have "Basic auth" fields for exactly this.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from sam3_label_studio.backend import Backend
from sam3_label_studio.errors import BackendError, reason_phrase

__all__ = ["application", "create_server"]

log = logging.getLogger("sam3_label_studio")
MAX_BODY_BYTES = 256 * 1024 * 1024  # a task sent for prediction carries its annotations and drafts (brush RLEs)
StartResponse = Callable[..., Any]


def application(backend: Backend, basic_auth: tuple[str, str] | None = None) -> Callable[..., Iterable[bytes]]:
    """The WSGI app answering Label Studio for `backend`."""
    routes: dict[tuple[str, str], Callable[[dict[str, Any]], dict[str, Any]]] = {
        ("GET", "/"): lambda _: backend.health(),
        ("GET", "/health"): lambda _: backend.health(),
        ("POST", "/setup"): backend.setup,
        ("POST", "/predict"): backend.predict,
        ("POST", "/webhook"): backend.webhook,
    }

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/").rstrip("/") or "/"
        try:
            if basic_auth and not _authorised(environ, basic_auth):
                raise BackendError(401, "this sam3 backend needs the Basic auth user and password set in its model")
            handler = routes.get((method, path))
            if handler is None:
                allowed = [m for m, p in routes if p == path]
                raise BackendError(405 if allowed else 404, f"no {method} {path} here")
            started = time.perf_counter()
            answer = handler(_body(environ) if method == "POST" else {})
            log.info("%s %s -> 200 in %.0f ms", method, path, (time.perf_counter() - started) * 1000)
            return _respond(start_response, 200, "OK", answer)
        except BackendError as error:
            log.info("%s %s -> %d %s", method, path, error.status, error.message)
            return _respond(start_response, error.status, reason_phrase(error.message), {"error": error.message})
        except Exception as error:  # a bug: logged with its traceback, said in Label Studio's screen
            log.exception("%s %s failed", method, path)
            message = f"the sam3 backend failed ({type(error).__name__}: {error}); its log has the details"
            return _respond(start_response, 500, reason_phrase(message), {"error": message})

    return app


def create_server(backend: Backend, host: str, port: int, *, threads: int = 8, **options: Any) -> Any:
    """A waitress server for the backend (port 0: a free one, `.effective_port`); `.run()` serves, `.close()` stops."""
    import waitress.server

    basic_auth = options.pop("basic_auth", None)
    return waitress.server.create_server(
        application(backend, basic_auth),
        host=host,
        port=port,
        threads=threads,
        ident="sam3-label-studio",
        max_request_body_size=MAX_BODY_BYTES,
        **options,
    )


def _authorised(environ: dict[str, Any], expected: tuple[str, str]) -> bool:
    scheme, _, encoded = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, f"{expected[0]}:{expected[1]}".encode())


def _body(environ: dict[str, Any]) -> dict[str, Any]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    try:
        body = json.loads(environ["wsgi.input"].read(length) or b"{}")
    except ValueError as error:
        raise BackendError(400, f"the request body is not JSON: {error}") from error
    if not isinstance(body, dict):
        raise BackendError(400, "the request body must be a JSON object")
    return body


def _respond(start_response: StartResponse, status: int, phrase: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    phrase = phrase or HTTPStatus(status).phrase
    start_response(f"{status} {phrase}", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
