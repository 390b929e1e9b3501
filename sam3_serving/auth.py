"""Who is calling: bearer tokens, client certificates (mTLS), and the tenant a caller belongs to.

Rules (docs/security.md):
- `authorization: Bearer <token>`: the scheme is case-insensitive (RFC 7235 §2.1), separated from the
  token by one or more spaces, nothing else around it; the token is compared exactly and in constant
  time, and must be an RFC 6750 b64token (letters, digits, `-._~+/`, trailing `=`).
- With a tenants file, each token maps to a tenant; a caller's embeddings live under its tenant's
  keys, so no tenant can read, or learn of, another tenant's images.
- With mTLS (`--tls-client-ca`), a client must present a certificate signed by that CA before any
  call is made; `--tenant-from-cert` then takes the tenant from the certificate's common name.

`Authentication` is the worker's interceptor for it: every application rpc (health and reflection
are exempt) is authenticated before it is admitted, and servicers read the caller's tenant with
`tenant_of(context)`.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from sam3_serving.errors import Reason, ServiceError
from sam3_serving.interception import Rpc, RpcInterceptor
from sam3_serving.store import TENANT_NAME

__all__ = ["Authentication", "Authenticator", "Caller", "load_tenant_tokens", "tenant_of", "valid_token"]

_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_CREDENTIALS = re.compile(r"(?i:bearer) +(\S+)")
_HOW = "send metadata 'authorization: Bearer <token>'"


def valid_token(token: str) -> bool:
    """Whether `token` can travel as an RFC 6750 bearer token."""
    return _B64TOKEN.fullmatch(token) is not None


@dataclass(frozen=True)
class Caller:
    """An authenticated caller; `tenant` None means the shared namespace."""

    tenant: str | None = None


def load_tenant_tokens(path: str) -> dict[str, str]:
    """`<tenant> <token>` per line (`#` comments, blank lines ignored) -> {token: tenant}.

    Errors name the file and line, never the token.
    """
    tokens: dict[str, str] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) != 2:
            raise ValueError(f"{where}: expected '<tenant> <token>'")
        tenant, token = fields
        if not TENANT_NAME.fullmatch(tenant):
            raise ValueError(f"{where}: tenant names are 1-64 of A-Z a-z 0-9 . _ -, got {tenant!r}")
        if not valid_token(token):
            raise ValueError(f"{where}: the token is not an RFC 6750 bearer token (A-Z a-z 0-9 -._~+/ then =)")
        if token in tokens:
            raise ValueError(f"{where}: this token is already given to tenant {tokens[token]!r}")
        tokens[token] = tenant
    if not tokens:
        raise ValueError(f"{path}: no '<tenant> <token>' lines")
    return tokens


class Authenticator:
    """Turns a call's credentials into a `Caller`, or a ServiceError(UNAUTHENTICATED) saying what is wrong."""

    def __init__(
        self,
        token: str | None = None,
        tenant_tokens: Mapping[str, str] | None = None,
        tenant_from_cert: bool = False,
    ) -> None:
        if token is not None and tenant_tokens:
            raise ValueError("use either one shared token or a tenants file, not both")
        self._tokens = {token.encode(): None} if token is not None else {}
        self._tokens.update({t.encode(): tenant for t, tenant in (tenant_tokens or {}).items()})
        self._tenant_from_cert = tenant_from_cert

    @property
    def enabled(self) -> bool:
        return bool(self._tokens) or self._tenant_from_cert

    def authenticate(self, context: grpc.ServicerContext) -> Caller:
        tenant = self._certificate_tenant(context) if self._tenant_from_cert else None
        if not self._tokens:
            return Caller(tenant)
        presented = self._bearer_token(context)
        for known, token_tenant in self._tokens.items():  # every comparison in constant time
            if hmac.compare_digest(presented, known):
                return Caller(token_tenant if tenant is None else tenant)
        raise ServiceError(
            grpc.StatusCode.UNAUTHENTICATED,
            "invalid credentials: the 'authorization: Bearer <token>' token is wrong",
            Reason.UNAUTHENTICATED,
        )

    @staticmethod
    def _bearer_token(context: grpc.ServicerContext) -> bytes:
        values = [value for key, value in (context.invocation_metadata() or ()) if key == "authorization"]
        if not values:
            raise ServiceError(grpc.StatusCode.UNAUTHENTICATED, f"missing credentials: {_HOW}", Reason.UNAUTHENTICATED)
        if len(values) > 1:
            raise ServiceError(
                grpc.StatusCode.UNAUTHENTICATED, f"several authorization values: {_HOW} once", Reason.UNAUTHENTICATED
            )
        value = values[0]
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        match = _CREDENTIALS.fullmatch(text)
        if match is None:
            raise ServiceError(
                grpc.StatusCode.UNAUTHENTICATED,
                f"malformed credentials: {_HOW} (scheme 'Bearer', one or more spaces, the token, nothing else)",
                Reason.UNAUTHENTICATED,
            )
        return match.group(1).encode("latin-1")

    @staticmethod
    def _certificate_tenant(context: grpc.ServicerContext) -> str:
        names = context.auth_context().get("x509_common_name") or []
        name = names[0].decode("utf-8", "replace") if names else ""
        if not TENANT_NAME.fullmatch(name):
            raise ServiceError(
                grpc.StatusCode.UNAUTHENTICATED,
                "the client certificate's common name must be a tenant name (1-64 of A-Z a-z 0-9 . _ -)",
                Reason.UNAUTHENTICATED,
            )
        return name


class _CallerContext:
    """The servicer context of one call, plus who made it (`tenant_of` reads it)."""

    def __init__(self, context: grpc.ServicerContext, caller: Caller) -> None:
        self._context = context
        self.caller = caller

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def tenant_of(context: grpc.ServicerContext) -> str | None:
    """The authenticated caller's tenant (None: the shared namespace) of a call the worker admitted."""
    caller = getattr(context, "caller", None)
    return caller.tenant if isinstance(caller, Caller) else None


class Authentication(RpcInterceptor):
    """Authenticates every application rpc; the servicer's context then names the caller."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    @contextmanager
    def around(self, rpc: Rpc) -> Iterator[None]:
        caller = self._authenticator.authenticate(rpc.context)
        rpc.context = _CallerContext(rpc.context, caller)  # type: ignore[assignment]
        yield
