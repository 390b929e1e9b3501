"""Where the store's values, locks and announcements live in Redis: the key layout, in one place.

    <prefix>:[tenant:<name>:]<kind>:v<format>:{<model>:<subject>}   a value ("emb", "det", "txt"...)
    <prefix>:[tenant:<name>:]lock:{<model>:<subject>}               the subject's encode lock
    <prefix>:replaced:{<model>}                                     the channel announcing rewritten values

The `{<model>:<subject>}` hash tag puts a subject's values and its lock in one Redis Cluster slot, so the
MULTI/EXEC and scripts that read them together stay legal there. A tenant's keys share nothing with
another's, not even the fact that an image was ever encoded. The value format's version is in the key
(`sam3_core.embeddings.FORMAT_VERSION`): during a rolling upgrade old and new workers miss each other's
values (and re-encode) instead of deleting them as unreadable, back and forth.

Values that belong to a larger subject (a video session's per-object memory banks and per-frame
results) should keep that subject alone in the hash tag and name their part after it, so that one
session's values and lock share a slot as an image's do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from sam3_core.embeddings import FORMAT_VERSION

__all__ = ["KIND_NAME", "TENANT_NAME", "Keys"]

TENANT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
KIND_NAME = re.compile(r"[a-z]{1,8}")


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

    @property
    def channel(self) -> str:
        """Every tenant's rewrites under this prefix and model: one subscription per decoder."""
        return f"{self.prefix}:replaced:{{{self.model_id}}}"

    def _namespace(self) -> str:
        tenant = f"tenant:{self.tenant}:" if self.tenant is not None else ""
        return f"{self.prefix}:{tenant}"

    def _tag(self, subject: str) -> str:
        return f"{{{self.model_id}:{_no_braces('a subject (image id)', subject)}}}"
