"""Where the store's values, locks and announcements live in Redis: the key layout, in one place.

    <prefix>:[tenant:<name>:]<kind>:v<format>:{<model>:<subject>}   a value ("emb", "det", "txt"...)
    <prefix>:[tenant:<name>:]lock:{<model>:<subject>}               the subject's encode lock
    <prefix>:replaced:{<model>}                                     the channel announcing rewritten values
    <prefix>:[tenant:<name>:]sess:v<layout>:{<model>:<session>}:<part>   a video session's parts: "journal",
                                                                    "frames", "lease", "bank:<object>",
                                                                    "results:<object>"
    <prefix>:[tenant:<name>:]sessions:v<layout>:{<model>}           the tenant's open sessions (max_sessions)

The `{<model>:<subject>}` hash tag puts a subject's values and its lock in one Redis Cluster slot, so the
MULTI/EXEC and scripts that read them together stay legal there. A tenant's keys share nothing with
another's, not even the fact that an image was ever encoded. The value format's version is in the key
(`sam3_core.embeddings.FORMAT_VERSION`): during a rolling upgrade old and new workers miss each other's
values (and re-encode) instead of deleting them as unreadable, back and forth.

A video session keeps its id alone in the hash tag and names its parts after it, so that all of one
session's keys share a slot as an image's do, and the script that commits a step to several of them stays
legal on a Redis Cluster. Its keys live apart from the cached values (`sess:`): they must never be
evicted, and may live on another Redis (`sam3_serving.store.sessions`). `SESSION_LAYOUT` versions how a
session is laid out over its keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from sam3_core.embeddings import FORMAT_VERSION

__all__ = ["KIND_NAME", "SESSION_LAYOUT", "TENANT_NAME", "Keys"]

TENANT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
KIND_NAME = re.compile(r"[a-z]{1,8}")
SESSION_LAYOUT = 1


def _no_braces(what: str, name: str) -> str:
    if not name or "{" in name or "}" in name:
        raise ValueError(f"{what} must be non-empty without braces (they delimit the hash tag): {name!r}")
    return name


@dataclass(frozen=True)
class Keys:
    """The names of one model's keys under one prefix, as one tenant (None: the shared space) sees them."""

    prefix: str
    model_id: str
    tenant: str | None = None

    def __post_init__(self) -> None:
        _no_braces("model id", self.model_id)
        if self.tenant is not None and not TENANT_NAME.fullmatch(self.tenant):
            raise ValueError(f"tenant names are 1-64 of A-Z a-z 0-9 . _ -, got {self.tenant!r}")

    def for_tenant(self, tenant: str | None) -> Keys:
        return replace(self, tenant=tenant)

    def value(self, kind: str, subject: str) -> str:
        return f"{self._namespace()}{kind}:v{FORMAT_VERSION}:{self._tag(subject)}"

    def lock(self, subject: str) -> str:
        return f"{self._namespace()}lock:{self._tag(subject)}"

    def session(self, session_id: str, part: str) -> str:
        """One part of a video session: "journal", "frames", "lease", "bank:<object>", "results:<object>"."""
        return f"{self._namespace()}sess:v{SESSION_LAYOUT}:{self._tag(session_id)}:{part}"

    @property
    def sessions(self) -> str:
        """The sorted set of this tenant's open sessions, scored by when each expires."""
        return f"{self._namespace()}sessions:v{SESSION_LAYOUT}:{{{self.model_id}}}"

    @property
    def channel(self) -> str:
        """Every tenant's rewrites under this prefix and model: one subscription per decoder."""
        return f"{self.prefix}:replaced:{{{self.model_id}}}"

    def _namespace(self) -> str:
        tenant = f"tenant:{self.tenant}:" if self.tenant is not None else ""
        return f"{self.prefix}:{tenant}"

    def _tag(self, subject: str) -> str:
        return f"{{{self.model_id}:{_no_braces('a subject (image id)', subject)}}}"
