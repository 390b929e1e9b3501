"""`sam3 encoder`, `sam3 decoder` and `sam3 serve`: flags (each also a SAM3_* environment variable)
-> a running worker. Heavy imports wait until a worker really starts, so `sam3 --help` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sam3_cli.errors import UsageError
from sam3_cli.options import add_model_options, load_model, option, positive_seconds, whole_number
from sam3_serving.roles import Role

if TYPE_CHECKING:
    from sam3_serving.config import ServerConfig
    from sam3_serving.server import Worker

T = TypeVar("T")
MIB = 1024 * 1024
ENCODER, DECODER = Role.ENCODER, Role.DECODER


def add_worker_options(parser: argparse.ArgumentParser, roles: set[Role], *, embedded_redis: bool) -> None:
    add_model_options(parser)
    server = parser.add_argument_group("server")
    option(server, "--host", default="0.0.0.0", help="address to listen on")
    option(server, "--port", type=whole_number(0), default=50051, help="gRPC port")
    option(server, "--metrics-port", type=whole_number(0), help="Prometheus /metrics HTTP port (off when unset)")
    option(
        server, "--max-message-mb", type=whole_number(1), default=64, help="largest request or response accepted, MiB"
    )
    option(
        server,
        "--grace-seconds",
        type=positive_seconds,
        default=30.0,
        help="on SIGTERM, time in-flight calls get to finish",
    )
    option(server, "--handler-threads", type=whole_number(1), default=16, help="gRPC handler threads")
    option(
        server,
        "--max-streams",
        type=whole_number(1),
        help="streams open at once, below --handler-threads so unary calls always get a thread "
        "(default: half the handler threads); more are refused with RESOURCE_EXHAUSTED",
    )
    option(
        server,
        "--stream-idle-seconds",
        type=positive_seconds,
        default=120.0,
        help="close a stream that sent no request for this long (DEADLINE_EXCEEDED / STREAM_IDLE)",
    )
    option(
        server,
        "--max-connection-age-seconds",
        type=positive_seconds,
        help="close client connections after this long so they re-resolve DNS and reach new replicas",
    )
    option(server, "--auth-token", help="require `authorization: Bearer <token>` on every call")
    option(
        server,
        "--tenants-file",
        help="`<tenant> <token>` per line: each token is a tenant with its own embedding namespace "
        "(instead of --auth-token)",
    )
    option(server, "--tls-cert", help="PEM certificate: serve TLS (with --tls-key)")
    option(server, "--tls-key", help="PEM private key for --tls-cert")
    option(server, "--tls-client-ca", help="PEM CA: require client certificates it signed (mTLS)")
    option(
        server,
        "--tenant-from",
        default="token",
        choices=("token", "cert"),
        help="where a caller's tenant comes from: its token's line in --tenants-file, or its client "
        "certificate's common name (needs --tls-client-ca)",
    )
    option(
        server,
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="DEBUG, INFO, WARNING or ERROR",
    )
    option(server, "--log-format", default="json", choices=("json", "text"), help="structured JSON lines or plain text")

    store = parser.add_argument_group("embedding store (Redis)")
    embedded = " (unset: an embedded Redis-protocol server is started)" if embedded_redis else " (required)"
    option(
        store,
        "--redis-url",
        help="redis://[:password@]host:port/db, rediss:// for TLS, redis+cluster://host:port[,host:port...] "
        "for a Redis Cluster (see docs/deploy.md)" + embedded,
    )
    option(
        store,
        "--store-dtype",
        default="float32",
        choices=("float32", "float16"),
        help="precision of stored embeddings: float16 halves Redis memory and fetch time, but a mask pixel "
        "may flip where its logit is within ~1e-3 of 0 (see docs/model-contract.md)",
    )
    option(store, "--ttl-seconds", type=whole_number(1), default=7 * 24 * 3600, help="expiry of every stored embedding")
    option(store, "--key-prefix", default="sam3", help="namespace of the store's Redis keys")
    option(
        store,
        "--lock-ttl-seconds",
        type=positive_seconds,
        default=10.0,
        help="encode lock lifetime, renewed while the encode runs: a dead encoder's lock frees after this",
    )

    if ENCODER in roles:
        encoder = parser.add_argument_group("encoder")
        option(
            encoder,
            "--max-concurrent-encodes",
            type=whole_number(1),
            default=1,
            help="encodes at once; more wait in the --encode-queue line",
        )
        option(
            encoder,
            "--encode-queue",
            type=whole_number(0),
            default=4,
            help="encodes waiting for a slot within their deadline (interactive first); more get RESOURCE_EXHAUSTED",
        )
        option(
            encoder,
            "--max-image-pixels",
            type=whole_number(1),
            default=50_000_000,
            help="largest decoded image, in pixels",
        )
        option(
            encoder,
            "--single-flight-timeout",
            type=positive_seconds,
            default=120.0,
            help="seconds to wait for another worker already encoding the same image",
        )
        option(
            encoder,
            "--concepts",
            choices=("on", "off"),
            default="on",
            help="with a model folder that serves concepts, also store each image's concept features (about 5x "
            "the click embeddings) so decoders can answer SegmentConcept; off: clicks only, today's bytes",
        )
    if DECODER in roles:
        decoder = parser.add_argument_group("decoder")
        option(decoder, "--cache-mb", type=whole_number(0), default=1024, help="local embedding cache budget, MiB")
        option(decoder, "--max-objects", type=whole_number(1), default=32, help="objects per Segment request")
        option(decoder, "--max-points", type=whole_number(1), default=32, help="points per object")
        option(
            decoder,
            "--max-mask-megapixels",
            type=whole_number(1),
            default=512,
            help="full-size mask pixels one Segment may compute (objects x masks x image); more get RESOURCE_EXHAUSTED",
        )
        option(
            decoder,
            "--max-polygon-corners",
            type=whole_number(1),
            default=2_000_000,
            help="polygon outline corners one answer may trace (MASK_FORMAT_POLYGON); more get RESOURCE_EXHAUSTED",
        )
        option(
            decoder,
            "--mask-memory-seconds",
            type=whole_number(1),
            default=600,
            help="how long the store keeps the last low-res logits of each keyed object (ObjectPrompt.object_key), "
            "for mask_input.previous; 324 KiB each",
        )
        sessions = parser.add_argument_group("video sessions (TrackerService, docs/video.md)")
        option(
            sessions,
            "--session-redis-url",
            help="the session store: a Redis that never evicts (maxmemory-policy noeviction), not the embedding "
            "cache's; unset: "
            + ("an embedded one is started" if embedded_redis else "no video sessions (TRACKING_NOT_SUPPORTED)"),
        )
        option(
            sessions,
            "--session-ttl-seconds",
            type=whole_number(1),
            default=3600,
            help="a session nobody uses for this long is deleted",
        )
        option(
            sessions,
            "--session-lease-seconds",
            type=positive_seconds,
            default=10.0,
            help="a session's writer lease, renewed while a call writes it: a dead replica's sessions are taken "
            "over after this",
        )
        option(
            sessions, "--max-sessions", type=whole_number(1), default=64, help="open sessions per tenant, fleet-wide"
        )
        option(sessions, "--max-sessions-per-worker", type=whole_number(1), default=16, help="sessions held in memory")
        option(sessions, "--max-objects-per-session", type=whole_number(1), default=16, help="objects per session")
        option(sessions, "--max-frames-per-session", type=whole_number(1), default=20_000, help="frames per session")
        option(
            sessions,
            "--max-prompted-frames",
            type=whole_number(1),
            default=16,
            help="frames one object may be prompted on (each keeps a memory for the session's life)",
        )
        option(
            sessions,
            "--max-concurrent-tracking",
            type=whole_number(1),
            default=2,
            help="prompts and propagations running at once; more get RESOURCE_EXHAUSTED at once",
        )
        option(decoder, "--max-concepts", type=whole_number(1), default=8, help="concepts per SegmentConcept request")
        option(
            decoder,
            "--max-concurrent-concepts",
            type=whole_number(1),
            default=1,
            help="concept queries at once (each takes seconds on a CPU); more get RESOURCE_EXHAUSTED at once",
        )


def run_worker(args: argparse.Namespace, roles: set[Role], *, embedded_redis: bool) -> int:
    """Loads the model once, builds the servicers for `roles`, serves until SIGTERM/SIGINT."""
    from sam3_core.no_memory import ADDED
    from sam3_serving.logs import configure_logging
    from sam3_serving.redis_server import start_embedded_redis
    from sam3_serving.store import SessionStore, SessionStoreConfig, StoreConfig, ValueStore

    config = server_config(args)  # settings are checked before minutes of model loading, not after
    configure_logging(args.log_level, json_logs=args.log_format == "json")
    embedded = embedded_sessions = None
    redis_url = args.redis_url
    if not redis_url:
        if not embedded_redis:
            raise ValueError("--redis-url (or SAM3_REDIS_URL) is required; `sam3 serve` starts an embedded Redis")
        embedded = start_embedded_redis()
        redis_url = embedded.url
    try:
        store_config = from_flags(
            StoreConfig,
            url=("--redis-url", redis_url),
            ttl_seconds=("--ttl-seconds", args.ttl_seconds),
            dtype=("--store-dtype", args.store_dtype),
            key_prefix=("--key-prefix", args.key_prefix),
            lock_ttl_seconds=("--lock-ttl-seconds", args.lock_ttl_seconds),
        )
        model = load_model(args, load_encoder=ENCODER in roles, load_decoder=DECODER in roles)
        store = ValueStore(store_config, model.model_id)
        sessions = None
        session_url = args.session_redis_url if DECODER in roles else None
        if DECODER in roles and not session_url and embedded_redis:
            embedded_sessions = start_embedded_redis(policy="noeviction")
            session_url = embedded_sessions.url
        if session_url:
            session_config = from_flags(
                SessionStoreConfig,
                url=("--session-redis-url", session_url),
                key_prefix=("--key-prefix", args.key_prefix),
                ttl_seconds=("--session-ttl-seconds", args.session_ttl_seconds),
                lease_ttl_seconds=("--session-lease-seconds", args.session_lease_seconds),
                max_sessions=("--max-sessions", args.max_sessions),
            )
            sessions = SessionStore(session_config, model.model_id)
            sessions.check_never_evicts()
        worker = start_worker(model, store, roles, config, sessions=sessions, **role_settings(args, roles))
        worker.install_signal_handlers()
        no_memory = model.no_memory_embedding
        if no_memory.state != ADDED:
            logging.getLogger(__name__).warning(
                "masks may differ from SAM3's own: no-memory embedding %s (%s)", no_memory.state, no_memory.evidence
            )
        print(
            f"sam3 {worker.label}: listening on {args.host}:{worker.port}, model {model.model_id} "
            f"({model.folder}, no-memory embedding {no_memory.state}), store {store.config.redacted_url}"
            + (f", metrics on :{worker.metrics_port}/metrics" if worker.metrics_port else ""),
            flush=True,
        )
        worker.wait()
    finally:
        for server in (embedded, embedded_sessions):
            if server is not None:
                server.stop()
    return 0


def server_config(args: argparse.Namespace) -> ServerConfig:
    from sam3_serving.config import ServerConfig

    return from_flags(
        ServerConfig,
        host=("--host", args.host),
        port=("--port", args.port),
        max_receive_bytes=("--max-message-mb", args.max_message_mb * MIB),
        max_send_bytes=("--max-message-mb", args.max_message_mb * MIB),
        max_workers=("--handler-threads", args.handler_threads),
        max_streams=("--max-streams", args.max_streams),
        grace_seconds=("--grace-seconds", args.grace_seconds),
        metrics_port=("--metrics-port", args.metrics_port),
        max_connection_age_seconds=("--max-connection-age-seconds", args.max_connection_age_seconds),
        auth_token=("--auth-token", args.auth_token),
        tenants_file=("--tenants-file", args.tenants_file),
        tls_cert=("--tls-cert", args.tls_cert),
        tls_key=("--tls-key", args.tls_key),
        tls_client_ca=("--tls-client-ca", args.tls_client_ca),
        tenant_from_cert=("--tenant-from cert", args.tenant_from == "cert"),
    )


def from_flags(settings: Callable[..., T], **fields: tuple[str, Any]) -> T:
    """`settings(field=value, ...)` from `field=(flag, value)`; a ValueError it raises becomes a usage error
    that names the flags instead of the fields.

    The settings classes check their own values and word their errors for Python callers; a command line
    user typed flags, and should read them back (`--auth-token must be ...`, not `auth_token must be ...`).
    """
    try:
        return settings(**{name: value for name, (_, value) in fields.items()})
    except ValueError as error:
        message = str(error)
        for name, (flag, _) in fields.items():
            message = re.sub(rf"\b{name}\b", flag, message)
        raise UsageError(message) from None


def role_settings(args: argparse.Namespace, roles: set[Role]) -> dict[str, Any]:
    """The flags of each role as the settings objects its servicer takes."""
    from sam3_serving.streams import StreamLimits

    settings: dict[str, Any] = {}
    streams = StreamLimits(idle_seconds=args.stream_idle_seconds)
    if ENCODER in roles:
        from encoder_service.servicer import EncoderSettings
        from sam3_core.images import ImageLimits

        settings["encoder"] = EncoderSettings(
            max_concurrent=args.max_concurrent_encodes,
            max_queued=args.encode_queue,
            single_flight_timeout=args.single_flight_timeout,
            image_limits=ImageLimits(max_pixels=args.max_image_pixels),
            streams=streams,
            concepts=args.concepts == "on",
        )
    if DECODER in roles:
        from decoder_service.budget import ResponseLimits
        from decoder_service.concepts import ConceptLimits
        from decoder_service.servicer import DecoderSettings
        from sam3_core.prompts import PromptLimits

        settings["decoder"] = DecoderSettings(
            prompt_limits=PromptLimits(max_objects=args.max_objects, max_points=args.max_points),
            cache_bytes=args.cache_mb * MIB,
            responses=ResponseLimits(
                max_response_bytes=args.max_message_mb * MIB,
                max_mask_pixels=args.max_mask_megapixels * 1_000_000,
                max_polygon_corners=args.max_polygon_corners,
            ),
            streams=streams,
            concepts=ConceptLimits(max_concepts=args.max_concepts, max_concurrent=args.max_concurrent_concepts),
            mask_memory_seconds=args.mask_memory_seconds,
        )
        from decoder_service.tracking_limits import TrackerSettings

        settings["tracker"] = from_flags(
            TrackerSettings,
            max_objects_per_session=("--max-objects-per-session", args.max_objects_per_session),
            max_frames_per_session=("--max-frames-per-session", args.max_frames_per_session),
            max_prompted_frames=("--max-prompted-frames", args.max_prompted_frames),
            max_sessions_per_worker=("--max-sessions-per-worker", args.max_sessions_per_worker),
            max_concurrent_tracking=("--max-concurrent-tracking", args.max_concurrent_tracking),
            responses=("--max-message-mb", settings["decoder"].responses),
        )
    return settings


def start_worker(
    model: Any,
    store: Any,
    roles: set[Role],
    config: ServerConfig,
    *,
    encoder: Any = None,
    decoder: Any = None,
    tracker: Any = None,
    sessions: Any = None,
) -> Worker:
    """The servicers of `roles` on one started gRPC server, sharing one loaded model and one store client.
    A decoder also serves TrackerService: video sessions in `sessions` (a SessionStore; None: refused)."""
    from decoder_service.cache import LocalCache
    from decoder_service.servicer import DecoderServicer, DecoderSettings
    from decoder_service.tracker import TrackerServicer, TrackerSettings
    from encoder_service.servicer import EncoderServicer, EncoderSettings
    from sam3_client.proto import (
        decoder_pb2,
        decoder_pb2_grpc,
        encoder_pb2,
        encoder_pb2_grpc,
        tracker_pb2,
        tracker_pb2_grpc,
    )
    from sam3_serving.config import Service
    from sam3_serving.server import Worker

    services = []
    decoder_servicer = None
    if ENCODER in roles:
        encoder_servicer = EncoderServicer(model, store, encoder or EncoderSettings())
        services.append(
            Service(
                encoder_pb2.DESCRIPTOR.services_by_name["EncoderService"].full_name,
                lambda server: encoder_pb2_grpc.add_EncoderServiceServicer_to_server(encoder_servicer, server),
            )
        )
    if DECODER in roles:
        decoder = decoder or DecoderSettings()
        decoder_servicer = DecoderServicer(model, store, LocalCache(decoder.cache_bytes), decoder)
        services.append(
            Service(
                decoder_pb2.DESCRIPTOR.services_by_name["DecoderService"].full_name,
                lambda server: decoder_pb2_grpc.add_DecoderServiceServicer_to_server(decoder_servicer, server),
            )
        )
        tracker_servicer = TrackerServicer(model, store, sessions, tracker or TrackerSettings())
        services.append(
            Service(
                tracker_pb2.DESCRIPTOR.services_by_name["TrackerService"].full_name,
                lambda server: tracker_pb2_grpc.add_TrackerServiceServicer_to_server(tracker_servicer, server),
            )
        )

    def ready() -> bool:
        return bool(store.check()) and (sessions is None or bool(sessions.check()))

    worker = Worker(config, services, roles=roles, ready=ready).start()
    if decoder_servicer is not None:
        cache = decoder_servicer.cache
        # Values rewritten by any encoder (Encode force=true, a re-encode after a bad value) leave this
        # decoder's local cache at once; the click path itself never asks Redis when the cache hits.
        worker.run_in_background(
            "replacements", lambda stopping: store.announcements.listen(cache.discard, cache.clear, stopping)
        )
    return worker


def main_for(roles: set[Role], *, embedded_redis: bool) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        return run_worker(args, roles, embedded_redis=embedded_redis)

    return handler
