"""Task images, read the way Label Studio serves them to its ML backends.

A task's image field may hold an upload or local-storage path on Label Studio itself
("/data/upload/3/cat.jpg"), a URL on Label Studio or elsewhere, a cloud storage URI
("s3://bucket/cat.jpg", resolved by Label Studio's /tasks/<id>/resolve/ endpoint, which redirects to
a presigned URL), or a data: URI. Label Studio's own URLs need a user's token: a personal access
token (a JWT, exchanged at /api/token/refresh for short-lived access tokens) or a legacy token. The
token is sent to Label Studio's origin only, never to a host a URL or a redirect points at.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from sam3_label_studio.errors import BackendError

__all__ = ["LabelStudio"]

_KEY_HELP = (
    "set LABEL_STUDIO_API_KEY to the access token of a user who can see the project "
    "(Label Studio: Account & Settings > Personal Access Token)"
)


@dataclass
class LabelStudio:
    """One Label Studio (`url`, e.g. http://localhost:8080) as a user of `api_key` sees it: task images, API."""

    url: str | None
    api_key: str | None
    max_bytes: int = 64 * 1024 * 1024
    timeout: float = 30.0
    _access: tuple[str, float] | None = field(default=None, repr=False)  # access token, expiry (epoch s)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def completed_by(self, url: str, api_key: str) -> LabelStudio:
        """This one, with `url` / `api_key` where it has none (what /setup says; the environment wins)."""
        return LabelStudio(self.url or url or None, self.api_key or api_key or None, self.max_bytes, self.timeout)

    def get_json(self, path: str) -> Any:
        """A Label Studio API answer (path like /api/projects/3), as this user."""
        try:
            return json.loads(self._get(self._on_label_studio(path), authorised=True))
        except ValueError as error:
            raise BackendError(502, f"Label Studio's answer to {path} is not JSON") from error

    def image(self, reference: str, task_id: int | None) -> bytes:
        """The bytes of the image a task's data field names; BackendError with what to do when it fails."""
        if reference.startswith("data:"):
            return _data_uri(reference)
        parsed = urllib.parse.urlsplit(reference)
        if parsed.scheme in ("http", "https"):
            return self._get(reference, authorised=self._same_origin(reference))
        if parsed.scheme:  # s3://, gs://, azure-blob://...: only Label Studio can resolve them
            if task_id is None:
                raise BackendError(400, f"{reference}: a storage URI needs its task to be resolved")
            fileuri = base64.urlsafe_b64encode(reference.encode()).decode()
            return self._get(self._on_label_studio(f"/tasks/{task_id}/resolve/?fileuri={fileuri}"), authorised=True)
        return self._get(self._on_label_studio(reference), authorised=True)

    def _on_label_studio(self, path: str) -> str:
        if not self.url:
            raise BackendError(
                400,
                f"the task's image {path} is on Label Studio, whose address is unknown: set LABEL_STUDIO_URL "
                "(e.g. http://localhost:8080)",
            )
        return urllib.parse.urljoin(self.url.rstrip("/") + "/", path.lstrip("/"))

    def _same_origin(self, url: str) -> bool:
        if not self.url:
            return False
        ours, theirs = urllib.parse.urlsplit(self.url), urllib.parse.urlsplit(url)
        return (ours.scheme, ours.netloc) == (theirs.scheme, theirs.netloc)

    def _get(self, url: str, *, authorised: bool) -> bytes:
        for attempt in range(2):
            headers = {"Authorization": self._authorization(renew=attempt > 0)} if authorised and self.api_key else {}
            try:
                with _OPENER.open(urllib.request.Request(url, headers=headers), timeout=self.timeout) as response:
                    data: bytes = response.read(self.max_bytes + 1)
            except urllib.error.HTTPError as error:
                if error.code == 401 and attempt == 0 and self._is_personal_token():
                    continue  # the access token expired early: renew it once
                raise self._refused(url, error) from error
            except (urllib.error.URLError, TimeoutError, OSError) as error:
                reason = getattr(error, "reason", error)
                raise BackendError(502, f"cannot read the task's image {url}: {reason}") from error
            if len(data) > self.max_bytes:
                raise BackendError(413, f"the task's image {url} is over {self.max_bytes // 2**20} MiB")
            return data
        raise AssertionError("unreachable")

    def _refused(self, url: str, error: urllib.error.HTTPError) -> BackendError:
        if error.code in (401, 403):
            if not self.api_key:
                return BackendError(
                    502, f"Label Studio refused the task's image {url} (HTTP {error.code}): {_KEY_HELP}"
                )
            return BackendError(
                502,
                f"Label Studio refused the task's image {url} with the configured token (HTTP {error.code}): "
                + _KEY_HELP,
            )
        return BackendError(502, f"the task's image {url} could not be read: HTTP {error.code} {error.reason}")

    def _is_personal_token(self) -> bool:
        return self.api_key is not None and self.api_key.count(".") == 2

    def _authorization(self, *, renew: bool) -> str:
        assert self.api_key
        if not self._is_personal_token():
            return f"Token {self.api_key}"
        with self._lock:
            if renew or self._access is None or self._access[1] < time.time() + 30:
                self._access = self._refresh()
            return f"Bearer {self._access[0]}"

    def _refresh(self) -> tuple[str, float]:
        """A personal access token is a refresh token: trade it for an access token (minutes long)."""
        url = self._on_label_studio("/api/token/refresh")
        body = json.dumps({"refresh": self.api_key}).encode()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                access = str(json.loads(response.read(1 << 16))["access"])
        except urllib.error.HTTPError as error:
            raise BackendError(
                502, f"Label Studio did not accept LABEL_STUDIO_API_KEY as a personal access token (HTTP {error.code})"
            ) from error
        except (urllib.error.URLError, OSError, ValueError, KeyError) as error:
            raise BackendError(502, f"cannot renew the access token at {url}: {error}") from error
        return access, _expiry(access)


def _expiry(token: str) -> float:
    """A JWT's `exp` claim (seconds since the epoch); a minute from now when it cannot be read."""
    try:
        payload = token.split(".")[1]
        claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError, binascii.Error):
        return time.time() + 60


def _data_uri(reference: str) -> bytes:
    header, comma, payload = reference.partition(",")
    if not comma or not header.endswith(";base64"):
        raise BackendError(400, "a data: image must be base64 (data:image/png;base64,...)")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as error:
        raise BackendError(400, f"the task's data: image is not valid base64: {error}") from error


class _OriginBoundRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but drop the Authorization header when one leaves the origin it was meant for
    (urllib forwards it everywhere; a presigned S3 URL would refuse it, and it must not leak)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        old, target = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(newurl)
        if new is not None and (old.scheme, old.netloc) != (target.scheme, target.netloc):
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_OriginBoundRedirects)
