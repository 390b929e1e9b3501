"""Where and how the store keeps its values, and URLs fit for logs (the password replaced by `***`)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

import numpy as np

from sam3_serving.redis_client import SCHEMES

__all__ = ["DTYPES", "SessionStoreConfig", "StoreConfig", "redact_url"]

DTYPES = {"float16": np.float16, "float32": np.float32}


def redact_url(url: str) -> str:
    """The URL with any password (userinfo or `?password=` query) replaced by `***`: safe for logs and errors."""
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            userinfo, _, hostinfo = parts.netloc.rpartition("@")
            netloc = f"{userinfo.split(':', 1)[0]}:***@{hostinfo}"
            url = url.replace(f"//{parts.netloc}", f"//{netloc}", 1)
        if parts.query:
            pairs = parse_qsl(parts.query, keep_blank_values=True)
            if any(k.lower() == "password" for k, _ in pairs):
                query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs], safe="*")
                url = url.replace(f"?{parts.query}", f"?{query}", 1)
        return url
    except ValueError:
        return "<unparseable Redis URL>"


@dataclass(frozen=True)
class StoreConfig:
    """Where and how values are stored. `url` may carry credentials; `repr()` never shows them."""

    url: str  # redis://, rediss:// (TLS), unix://, redis+cluster://; user/password in the URL
    ttl_seconds: int = 7 * 24 * 3600
    dtype: str = "float32"  # exact parity; float16 halves memory and transfer (see docs/model-contract.md)
    key_prefix: str = "sam3"
    socket_timeout: float = 2.0  # bounds every call: a dead Redis never hangs a request
    lock_ttl_seconds: float = 10.0  # renewed while the holder encodes; a dead holder's lock frees after this

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"store dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.ttl_seconds <= 0 or self.socket_timeout <= 0 or self.lock_ttl_seconds <= 0:
            raise ValueError("ttl_seconds, socket_timeout and lock_ttl_seconds must be positive")
        if urlsplit(self.url).scheme not in SCHEMES:
            expected = ", ".join(f"{scheme}://" for scheme in SCHEMES)
            raise ValueError(f"store URL must start with one of {expected}; got {redact_url(self.url)!r}")

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        return (
            f"StoreConfig(url={self.redacted_url!r}, ttl_seconds={self.ttl_seconds}, dtype={self.dtype!r}, "
            f"key_prefix={self.key_prefix!r}, socket_timeout={self.socket_timeout}, "
            f"lock_ttl_seconds={self.lock_ttl_seconds})"
        )


@dataclass(frozen=True)
class SessionStoreConfig:
    """Where video sessions live and for how long. A Redis that never evicts (docs/video.md); `url` may carry
    credentials and `repr()` never shows them."""

    url: str
    key_prefix: str = "sam3"
    ttl_seconds: int = 3600  # a session nobody changes for this long is deleted by Redis itself
    lease_ttl_seconds: float = 10.0  # renewed while a call writes the session: a dead writer's lease frees after this
    max_sessions: int = 64  # open sessions per tenant, across the fleet
    socket_timeout: float = 2.0

    def __post_init__(self) -> None:
        if self.ttl_seconds <= 0 or self.lease_ttl_seconds <= 0 or self.socket_timeout <= 0:
            raise ValueError("ttl_seconds, lease_ttl_seconds and socket_timeout must be positive")
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {self.max_sessions}")
        self.connection()  # the URL's scheme, checked as the value store checks its own

    def connection(self) -> StoreConfig:
        """The connection settings, in the form the store's connection takes."""
        return StoreConfig(self.url, key_prefix=self.key_prefix, socket_timeout=self.socket_timeout)

    def __repr__(self) -> str:
        return (
            f"SessionStoreConfig(url={redact_url(self.url)!r}, key_prefix={self.key_prefix!r}, "
            f"ttl_seconds={self.ttl_seconds}, lease_ttl_seconds={self.lease_ttl_seconds}, "
            f"max_sessions={self.max_sessions}, socket_timeout={self.socket_timeout})"
        )
