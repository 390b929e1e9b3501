"""The store: the values a model computes, kept in Redis by kind and shared by every encoder and decoder.

Four kinds today (`kinds`): an image's embeddings (what clicks read), its concept detector features, a
phrase's text features, the mask a keyed object was last answered with; each value is self-describing
(`sam3_core.embeddings`). Redis is a cache here (docs/architecture.md): losing it costs re-encodes, never
correctness.

- `values`: `ValueStore`, get / peek / put / delete / wait for another worker's value, per tenant
  (a lookup's `Outcome` is `sam3_serving.outcome`'s, shared with the metrics);
- `kinds`: `Kind`, what a stored value is and how it becomes tensors and comes back;
- `keys`: the key layout (hash tags for Redis Cluster, tenants, the format version);
- `encode_lock`: the short lock that makes concurrent encodes of one image run once;
- `announcements`: the pub/sub notice of every rewritten value, which decoders' local copies follow;
- `connection`: the client and its failure policy (bounded calls, `StoreUnavailableError`);
- `sessions`: `SessionStore`, video sessions: a journal, memory and results per session that must never be
  evicted, one writer at a time (a renewed lease), each step committed whole (docs/video.md);
- `tenancy`: what both stores share, one model's keys as one tenant sees them;
- `config`: `StoreConfig`, `SessionStoreConfig`.
"""

from sam3_serving.store.config import SessionStoreConfig, StoreConfig, redact_url
from sam3_serving.store.connection import StoreUnavailableError
from sam3_serving.store.encode_lock import HeldLock
from sam3_serving.store.keys import TENANT_NAME
from sam3_serving.store.kinds import DETECTOR_FEATURES, EMBEDDINGS, MASKS, TEXT_FEATURES, Kind
from sam3_serving.store.sessions import Journal, SessionLease, SessionStore, SessionsWouldBeEvictedError, Step
from sam3_serving.store.values import Lookup, ValueStore, Waited

__all__ = [
    "DETECTOR_FEATURES",
    "EMBEDDINGS",
    "MASKS",
    "TENANT_NAME",
    "TEXT_FEATURES",
    "HeldLock",
    "Journal",
    "Kind",
    "Lookup",
    "SessionLease",
    "SessionStore",
    "SessionStoreConfig",
    "SessionsWouldBeEvictedError",
    "Step",
    "StoreConfig",
    "StoreUnavailableError",
    "ValueStore",
    "Waited",
    "redact_url",
]
