"""What the value store and the session store share: one model's keys as one tenant sees them.

Both keep everything of a tenant under its own namespace (`Keys.for_tenant`), renewed locks keyed the same
way (encode locks, session leases), and one connection pool for every tenant's view.
"""

from __future__ import annotations

import copy
from typing import Self

from sam3_serving.store.encode_lock import EncodeLocks
from sam3_serving.store.keys import Keys

__all__ = ["TenantScoped"]


class TenantScoped:
    """A store's `keys` and `locks` for one tenant; `for_tenant` is the same store seen by another."""

    keys: Keys
    locks: EncodeLocks

    @property
    def model_id(self) -> str:
        return self.keys.model_id

    @property
    def tenant(self) -> str | None:
        return self.keys.tenant

    def for_tenant(self, tenant: str | None) -> Self:
        """This store seen by one tenant: its own keys, sharing the connection pool (None: the shared space)."""
        if tenant == self.tenant:
            return self
        scoped = copy.copy(self)
        scoped.keys = self.keys.for_tenant(tenant)
        scoped.locks = self.locks.with_keys(scoped.keys)
        return scoped
