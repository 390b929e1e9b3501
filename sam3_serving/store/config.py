"""Where and how the store keeps its values, and URLs fit for logs (the password replaced by `***`)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

import numpy as np

from sam3_serving.redis_client import SCHEMES

__all__ = ["DTYPES", "StoreConfig", "redact_url"]

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
