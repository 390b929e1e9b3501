"""The gRPC server both workers run: health, reflection, auth, typed errors, metrics, graceful shutdown.

The encoder and decoder differ only in their servicers, so everything around them lives here once:

- Health (grpc.health.v1) runs on its own small thread pool, so a worker whose handler threads are
  all busy still answers probes. "" and every service name report SERVING only while the worker's
  `ready()` callable says so (model loaded and Redis reachable), re-evaluated on a background thread;
  "liveness" reports SERVING until shutdown and never depends on Redis, so a Redis outage takes the
  pods out of rotation without Kubernetes restarting them. List answers all of them at once.
- Reflection for grpcurl / grpcui.
- One interceptor around every application method (health and reflection are exempt): authentication
  (sam3_serving.auth: bearer token, tenants, client certificates), `ServiceError` -> status + rich
  error details (google.rpc.Status), unexpected exception -> INTERNAL (logged, the worker keeps
  serving), Prometheus metrics, one structured log line per call. Every status this code sets carries
  the details; only gRPC's own (unknown method, message too large, deadline exceeded) do not.
  Servicers read the caller's tenant with `tenant_of(context)`.
  Request bytes that do not parse are INVALID_ARGUMENT / MALFORMED_REQUEST (after auth); a response
  over the send limit is RESOURCE_EXHAUSTED / RESPONSE_TOO_LARGE, recorded as such (gRPC would refuse
  it after the fact).
- Streams hold a handler thread for their whole life, so at most `max_streams` (below the thread
  count) run at once; more are RESOURCE_EXHAUSTED / OVERLOADED at once and unary calls keep a share.
- Graceful stop (SIGTERM): health goes NOT_SERVING, new calls get UNAVAILABLE / SHUTTING_DOWN while
  the server stays reachable, running calls get up to the grace period to finish, then the server stops.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn
from wsgiref.simple_server import WSGIServer

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sam3_serving import metrics
from sam3_serving.auth import Authenticator, Caller, load_tenant_tokens, valid_token
from sam3_serving.errors import Reason, ServiceError

__all__ = ["LIVENESS", "ServerConfig", "Service", "Worker", "configure_logging", "tenant_of"]

log = logging.getLogger(__name__)
rpc_log = logging.getLogger("sam3_serving.rpc")

# Health "service" name Kubernetes liveness probes ask for (grpc probe `service: liveness`).
LIVENESS = "liveness"
# Reached without a token and never counted as load: probes and grpcurl must work as-is.
_EXEMPT_SERVICES = frozenset({health.SERVICE_NAME, reflection.SERVICE_NAME})
_INTERNAL_MESSAGE = "internal error; see the worker log"
_BIND_HINT = "the port is in use (or the address is not this machine's); choose another with --port / SAM3_PORT"
# After the application calls drained, how long exempt streams (health Watch) may hold the stop.
_FINAL_GRACE_SECONDS = 1.0
# Threads of the health service's own pool: probes never queue behind application calls.
_HEALTH_THREADS = 2
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class ServerConfig:
    """Network, limits and security settings of one worker's gRPC server."""

    host: str = "0.0.0.0"
    port: int = 50051  # 0 = any free port
    max_receive_bytes: int = 64 * 1024 * 1024  # photos exceed gRPC's 4 MiB default
    max_send_bytes: int = 64 * 1024 * 1024
    max_workers: int = 16  # handler threads
    # Streams at once (each holds a handler thread while open); None = half the handler threads.
    max_streams: int | None = None
    grace_seconds: float = 30.0  # SIGTERM: how long in-flight calls may take to finish
    metrics_port: int | None = None  # Prometheus HTTP port; None = no metrics server
    auth_token: str | None = None  # bearer token required in `authorization: Bearer <token>` metadata
    tenants_file: str | None = None  # `<tenant> <token>` lines: per-tenant tokens and key namespaces
    tls_cert: str | None = None  # PEM paths: serve TLS when both are given
    tls_key: str | None = None
    tls_client_ca: str | None = None  # PEM: require client certificates signed by this CA (mTLS)
    tenant_from_cert: bool = False  # the tenant is the client certificate's common name
    # Close connections after this long (clients reconnect and re-resolve DNS, so replicas an
    # autoscaler adds start getting traffic); None keeps connections for ever.
    max_connection_age_seconds: float | None = None

    def __post_init__(self) -> None:
        """Fail at startup on settings that would otherwise fail confusingly later."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in 0..65535, got {self.metrics_port}")
        if self.max_receive_bytes <= 0 or self.max_send_bytes <= 0:
            raise ValueError("max_receive_bytes and max_send_bytes must be positive")
        if self.max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {self.max_workers}")
        if self.max_streams is not None and not 1 <= self.max_streams < max(2, self.max_workers):
            raise ValueError(
                f"max_streams must be 1..{max(1, self.max_workers - 1)} (below the {self.max_workers} handler "
                f"threads, so unary calls always have one), got {self.max_streams}"
            )
        if self.grace_seconds < 0:
            raise ValueError(f"grace_seconds must be >= 0, got {self.grace_seconds}")
        if self.auth_token is not None and not valid_token(self.auth_token):
            raise ValueError(
                "auth_token must be a non-empty RFC 6750 bearer token (A-Z a-z 0-9 -._~+/ then =); "
                "pass None to disable authentication"
            )
        if self.auth_token is not None and self.tenants_file is not None:
            raise ValueError("use either auth_token (one shared namespace) or tenants_file, not both")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key (PEM paths), or neither")
        if self.tls_client_ca is not None and not self.tls:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert and tls_key too")
        if self.tenant_from_cert and self.tls_client_ca is None:
            raise ValueError("tenant_from_cert needs tls_client_ca: only verified certificates name tenants")

    @property
    def stream_slots(self) -> int:
        """How many streams may be open at once."""
        return self.max_streams if self.max_streams is not None else max(1, self.max_workers // 2)

    @property
    def tls(self) -> bool:
        """Whether the server listens with TLS."""
        return self.tls_cert is not None and self.tls_key is not None


@dataclass(frozen=True)
class Service:
    """One gRPC service to serve: its full name (for health and reflection) and how to add it."""

    name: str  # full name, e.g. "sam3.v1.EncoderService" (from the pb2 DESCRIPTOR)
    register: Callable[[grpc.Server], None]  # e.g. lambda s: add_EncoderServiceServicer_to_server(servicer, s)


def _split_method(full_method: str) -> tuple[str, str]:
    """'/sam3.v1.DecoderService/Segment' -> ('sam3.v1.DecoderService', 'Segment')."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def _bind_address(host: str, port: int) -> str:
    """host:port, bracketing bare IPv6 literals ("::" -> "[::]:50051")."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _status_code(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    """The code the handler set so far (grpcio has ServicerContext.code() since 1.38; the stubs lag)."""
    code: grpc.StatusCode | None = context.code()  # type: ignore[attr-defined]
    return code


class _CallerContext:
    """The servicer context of one call, plus who made it (`tenant_of` reads it)."""

    def __init__(self, context: grpc.ServicerContext, caller: Caller) -> None:
        self._context = context
        self.caller = caller

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def tenant_of(context: grpc.ServicerContext) -> str | None:
    """The authenticated caller's tenant (None: the shared namespace) of a call the Worker admitted."""
    caller = getattr(context, "caller", None)
    return caller.tenant if isinstance(caller, Caller) else None


def _is_abort(exc: BaseException, context: grpc.ServicerContext) -> bool:
    """Whether `exc` is what context.abort() raises (a bare Exception after the code was set)."""
    return type(exc) is Exception and not exc.args and _status_code(context) not in (None, grpc.StatusCode.OK)


class _Call:
    """Book-keeping of one application rpc: admission, error conversion, metrics and the log line."""

    __slots__ = ("admitted", "code", "context", "method", "service", "start", "stream", "worker")

    def __init__(
        self, worker: Worker, service: str, method: str, context: grpc.ServicerContext, *, stream: bool
    ) -> None:
        self.worker = worker
        self.service = service
        self.method = method
        self.context = context
        self.stream = stream
        self.start = time.perf_counter()
        self.admitted = False
        self.code: grpc.StatusCode | None = None

    def admit(self) -> grpc.ServicerContext:
        """The context to hand the servicer; raises ServiceError when shutting down, unauthenticated or
        out of stream slots."""
        caller = self.worker._admit(self.context, stream=self.stream)
        self.admitted = True
        return _CallerContext(self.context, caller)  # type: ignore[return-value]

    def check_size(self, response: Any) -> Any:
        """Refuse (as the client would see it) a response gRPC would not send: over max_send_bytes."""
        limit = self.worker.config.max_send_bytes
        size = len(response) if isinstance(response, bytes) else response.ByteSize()
        if size > limit:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the response would be {size} bytes, over the worker's {limit}-byte message limit "
                "(--max-message-mb): ask for fewer objects or masks, or a compact mask format",
                Reason.RESPONSE_TOO_LARGE,
                limit="max_message_bytes",
            )
        return response

    def fail(self, exc: Exception) -> NoReturn:
        """Turn an exception from the servicer into the rpc's status; always raises."""
        context = self.context
        if isinstance(exc, ServiceError):
            self.code = exc.code
            exc.abort(context)
        if _is_abort(exc, context):  # the servicer called context.abort() itself
            self.code = _status_code(context)
            raise exc
        if not context.is_active():  # the client went away (e.g. the request iterator raised)
            self.code = self._ended_code()
            raise exc
        if isinstance(exc, NotImplementedError):  # the generated base servicer's default
            self.code = grpc.StatusCode.UNIMPLEMENTED
            message = f"{self.service}/{self.method} is not implemented by this worker"
            ServiceError(self.code, message, Reason.UNIMPLEMENTED).abort(context)
        self.code = grpc.StatusCode.INTERNAL
        log.error(
            "unhandled exception in /%s/%s",
            self.service,
            self.method,
            exc_info=exc,
            extra={"method": f"/{self.service}/{self.method}", "worker": self.worker.worker},
        )
        ServiceError(self.code, _INTERNAL_MESSAGE, Reason.INTERNAL).abort(context)

    def _ended_code(self) -> grpc.StatusCode:
        """CANCELLED or DEADLINE_EXCEEDED for an rpc whose client is gone."""
        remaining = self.context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED

    def finish(self) -> None:
        """Record the outcome: metrics, the in-flight count and one log line."""
        seconds = time.perf_counter() - self.start
        code = self.code
        if code is None:
            code = _status_code(self.context) or grpc.StatusCode.OK
            if code == grpc.StatusCode.OK and not self.context.is_active():
                code = self._ended_code()
        if self.admitted:
            self.worker._release(stream=self.stream)
        metrics.RPCS.labels(service=self.service, method=self.method, code=code.name).inc()
        metrics.RPC_SECONDS.labels(service=self.service, method=self.method).observe(seconds)
        level = logging.ERROR if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) else logging.INFO
        full_method = f"/{self.service}/{self.method}"
        ms = round(seconds * 1000.0, 3)
        rpc_log.log(
            level,
            "%s %s %.1f ms",
            full_method,
            code.name,
            ms,
            extra={
                "method": full_method,
                "code": code.name,
                "ms": ms,
                "peer": self.context.peer(),
                "worker": self.worker.worker,
            },
        )


class _Health(health.HealthServicer):
    """grpc.health.v1 as grpcio-health-checking serves it, plus List (which it answers UNIMPLEMENTED).

    `names` are every service name this worker reports: "", each service, and "liveness".
    """

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(experimental_non_blocking=True)
        self._names = tuple(names)

    def List(self, request: health_pb2.HealthListRequest, context: grpc.ServicerContext) -> Any:
        statuses = {name: self.Check(health_pb2.HealthCheckRequest(service=name), context) for name in self._names}
        return health_pb2.HealthListResponse(statuses=statuses)


class _Malformed:
    """What a request that does not parse becomes, so the call fails INVALID_ARGUMENT after auth."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """Parse errors become `_Malformed` instead of gRPC's INTERNAL with a logged traceback."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:
            return _Malformed(str(error) or type(error).__name__)

    return parse


def _parsed(request: Any) -> Any:
    if isinstance(request, _Malformed):
        raise ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request is not a valid protobuf message for this method ({request.problem})",
            Reason.MALFORMED_REQUEST,
        )
    return request


def _parsed_stream(requests: Iterator[Any]) -> Iterator[Any]:
    for request in requests:
        yield _parsed(request)


_ARITIES = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def _arity(handler: grpc.RpcMethodHandler) -> str:
    """The RpcMethodHandler field holding the behavior: "unary_unary", ..., "stream_stream"."""
    return f"{'stream' if handler.request_streaming else 'unary'}_{'stream' if handler.response_streaming else 'unary'}"


def _on_pool(handler: grpc.RpcMethodHandler, pool: futures.ThreadPoolExecutor) -> grpc.RpcMethodHandler:
    """The same handler, run on `pool` (grpcio's experimental_thread_pool) instead of the shared one."""

    def moved(behavior: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            return behavior(*args, **kwargs)

        run.experimental_non_blocking = getattr(behavior, "experimental_non_blocking", False)  # type: ignore[attr-defined]
        run.experimental_thread_pool = pool  # type: ignore[attr-defined]
        return run

    return handler._replace(  # type: ignore[attr-defined, no-any-return]
        **{name: moved(getattr(handler, name)) for name in _ARITIES if getattr(handler, name) is not None}
    )


def _not_served(*_args: Any) -> NoReturn:
    raise NotImplementedError  # -> UNIMPLEMENTED with details, in _Call.fail


def _unserved(full_method: str) -> grpc.RpcMethodHandler | None:
    """A handler refusing a declared method this worker does not serve (Segment on an encoder-only
    worker), so the UNIMPLEMENTED it gets carries the error details like every other status."""
    try:
        method = descriptor_pool.Default().FindMethodByName(".".join(_split_method(full_method)))
    except KeyError:
        return None
    if method.client_streaming:
        if method.server_streaming:
            return grpc.stream_stream_rpc_method_handler(_not_served)
        return grpc.stream_unary_rpc_method_handler(_not_served)
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(_not_served)
    return grpc.unary_unary_rpc_method_handler(_not_served)


class _Interceptor(grpc.ServerInterceptor):
    """Wraps every application method handler (all four arities) in `_Call` book-keeping."""

    def __init__(self, worker: Worker, health_pool: futures.ThreadPoolExecutor) -> None:
        self._worker = worker
        self._health_pool = health_pool

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details) or _unserved(handler_call_details.method)
        if handler is None:
            return None  # a method no .proto of this process declares: gRPC answers UNIMPLEMENTED
        service, method = _split_method(handler_call_details.method)
        arity = _arity(handler)
        behavior = getattr(handler, arity)
        if service == health.SERVICE_NAME:
            return _on_pool(handler, self._health_pool)
        if service in _EXEMPT_SERVICES:  # reflection: no token needed, but its stream takes a slot
            return handler._replace(**{arity: _slotted(self._worker, behavior)})  # type: ignore[attr-defined, no-any-return]
        wrap = _streaming if handler.response_streaming else _unary
        return handler._replace(  # type: ignore[attr-defined, no-any-return]
            request_deserializer=_tolerant(handler.request_deserializer),
            **{arity: wrap(self._worker, service, method, behavior, handler.request_streaming)},
        )


def _unary(
    worker: Worker, service: str, method: str, behavior: Callable[[Any, grpc.ServicerContext], Any], streaming: bool
) -> Callable[[Any, grpc.ServicerContext], Any]:
    """Wrap a handler with a single response (request unary or streaming)."""

    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        call = _Call(worker, service, method, context, stream=streaming)
        try:
            admitted = call.admit()
            request = _parsed_stream(request) if streaming else _parsed(request)
            return call.check_size(behavior(request, admitted))
        except Exception as exc:
            call.fail(exc)
        finally:
            call.finish()

    return handle


def _streaming(
    worker: Worker,
    service: str,
    method: str,
    behavior: Callable[[Any, grpc.ServicerContext], Iterable[Any]],
    streaming: bool,
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    """Wrap a handler with a response stream: errors may arise while iterating, so wrap the iteration."""

    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        call = _Call(worker, service, method, context, stream=True)
        try:
            admitted = call.admit()
            request = _parsed_stream(request) if streaming else _parsed(request)
            for response in behavior(request, admitted):
                yield call.check_size(response)
        except Exception as exc:
            call.fail(exc)
        finally:
            call.finish()

    return handle


def _slotted(worker: Worker, behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
    """An exempt stream (reflection): no auth or metrics, but it counts against the stream slots."""

    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        with worker._calls:
            try:
                worker._take_stream_slot()
            except ServiceError as error:
                context.abort(error.code, error.message)
        try:
            yield from behavior(request, context)
        finally:
            with worker._calls:
                worker._streams -= 1

    return handle


class Worker:
    """A running gRPC server with health, reflection, interceptors, metrics and graceful shutdown."""

    def __init__(
        self,
        config: ServerConfig,
        services: Sequence[Service],
        *,
        worker: str,
        ready: Callable[[], bool],
        ready_interval: float = 2.0,
    ) -> None:
        if not services:
            raise ValueError("a Worker needs at least one Service")
        names = [service.name for service in services]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate service names: {names}")
        if ready_interval <= 0:
            raise ValueError(f"ready_interval must be positive, got {ready_interval}")
        self.config = config
        self.services = tuple(services)
        self.worker = worker
        self.port: int = config.port
        self.metrics_port: int | None = None
        self._ready = ready
        self._ready_interval = ready_interval
        self._auth = Authenticator(
            config.auth_token,
            load_tenant_tokens(config.tenants_file) if config.tenants_file else None,
            config.tenant_from_cert,
        )
        self._health = _Health(("", *names, LIVENESS))
        self._server: grpc.Server | None = None
        self._health_pool: futures.ThreadPoolExecutor | None = None
        self._metrics_http: WSGIServer | None = None
        self._poller: threading.Thread | None = None
        self._stop_polling = threading.Event()
        self._stopped = threading.Event()
        self._is_ready: bool | None = None
        self._not_ready_reason: str | None = None
        # Guards admission, the count of admitted calls and the shutdown state.
        self._calls = threading.Condition()
        self._active = 0
        self._streams = 0
        self._shutting_down = False
        self._server_stopping = False
        self._deadline: float | None = None
        self._in_flight = metrics.IN_FLIGHT.labels(worker=worker)  # exported as 0 from the start

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Worker:
        """Bind, register everything and start serving; returns self (port is then the bound port)."""
        with self._calls:
            if self._server is not None or self._shutting_down:
                raise RuntimeError("a Worker can be started once")
            config = self.config
            self._health_pool = futures.ThreadPoolExecutor(_HEALTH_THREADS, thread_name_prefix=f"{self.worker}-health")
            server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix=f"{self.worker}-rpc"),
                interceptors=[_Interceptor(self, self._health_pool)],
                options=self._server_options(),
            )
            for service in self.services:
                service.register(server)
            health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
            reflection.enable_server_reflection(
                [*(service.name for service in self.services), health.SERVICE_NAME, reflection.SERVICE_NAME], server
            )
            address = _bind_address(config.host, config.port)
            try:
                if config.tls:
                    client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
                    credentials = grpc.ssl_server_credentials(
                        [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())],  # type: ignore[arg-type]
                        root_certificates=client_ca,
                        require_client_auth=client_ca is not None,
                    )
                    port = server.add_secure_port(address, credentials)
                else:
                    port = server.add_insecure_port(address)
            except RuntimeError as exc:
                raise OSError(f"cannot listen on {address}: {_BIND_HINT}") from exc
            if port == 0:
                raise OSError(f"cannot listen on {address}: {_BIND_HINT}")
            self._health.set(LIVENESS, _SERVING)
            self._refresh_readiness()
            if config.metrics_port is not None:
                self._metrics_http = metrics._start_metrics_http(config.metrics_port, config.host.strip("[]"))
                self.metrics_port = int(self._metrics_http.server_port)
            server.start()
            self._server = server
            self.port = port
        self._poller = threading.Thread(target=self._poll_readiness, name=f"{self.worker}-ready", daemon=True)
        self._poller.start()
        log.info(
            "%s worker listening on %s",
            self.worker,
            _bind_address(config.host, port),
            extra={
                "worker": self.worker,
                "port": port,
                "tls": config.tls,
                "auth": self._auth.enabled,
                "mtls": config.tls_client_ca is not None,
                "metrics_port": self.metrics_port,
                "services": [service.name for service in self.services],
            },
        )
        return self

    def wait(self) -> None:
        """Block until the worker has stopped (wakes regularly so the main thread can handle signals)."""
        while not self._stopped.wait(0.5):
            pass

    def stop(self, grace: float | None = None) -> None:
        """Stop gracefully: NOT_SERVING, reject new calls, let running ones finish within `grace` seconds.

        Idempotent and thread-safe; every caller returns once the server is down. A later call with a
        shorter grace shortens the wait (a second Ctrl-C stops at once).
        """
        grace = self.config.grace_seconds if grace is None else max(0.0, grace)
        with self._calls:
            deadline = time.monotonic() + grace
            first = not self._shutting_down
            self._shutting_down = True
            shortened = self._deadline is None or deadline < self._deadline
            if shortened:
                self._deadline = deadline
                self._calls.notify_all()
            server_stopping = self._server_stopping
        if first:
            self._shut_down()
        elif shortened and server_stopping and self._server is not None:
            self._server.stop(max(0.0, deadline - time.monotonic()))
        self._stopped.wait()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT -> stop(config.grace_seconds); a second signal stops at once. Main thread only."""

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            grace = 0.0 if self._shutting_down else self.config.grace_seconds
            log.info(
                "%s received: stopping with %.1f s grace",
                signal.Signals(signum).name,
                grace,
                extra={"worker": self.worker},
            )
            # Never block inside a signal handler: stop() waits for calls to drain.
            threading.Thread(target=self.stop, args=(grace,), name=f"{self.worker}-stop").start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    def run_in_background(self, name: str, target: Callable[[threading.Event], None]) -> None:
        """Run `target(stopping)` on a daemon thread; `stopping` is set when the worker stops."""
        threading.Thread(target=target, args=(self._stop_polling,), name=f"{self.worker}-{name}", daemon=True).start()

    @property
    def shutting_down(self) -> bool:
        """True from the first stop() on: health is NOT_SERVING and new calls are refused."""
        return self._shutting_down

    @property
    def in_flight(self) -> int:
        """Application calls of this worker running now (what sam3_in_flight_requests exports)."""
        return self._active

    def __enter__(self) -> Worker:
        if self._server is None and not self._shutting_down:
            self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop(0.0)

    # --- internals ---------------------------------------------------------------------------

    def _server_options(self) -> list[tuple[str, int]]:
        """Channel args: explicit size limits, keepalive that tolerates client pings, no port sharing."""
        return [
            ("grpc.max_receive_message_length", self.config.max_receive_bytes),
            ("grpc.max_send_message_length", self.config.max_send_bytes),
            # Without this, gRPC sets SO_REUSEPORT and a second worker on the same port starts silently.
            ("grpc.so_reuseport", 0),
            # Accept client keepalive pings every >= 10 s, even on idle connections, instead of GOAWAY.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            # Ping clients ourselves so a vanished interactive client does not hold a handler thread.
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.http2.max_pings_without_data", 0),
            *(
                [
                    ("grpc.max_connection_age_ms", int(self.config.max_connection_age_seconds * 1000)),
                    # Calls still running at that age get the drain time a SIGTERM would give them.
                    ("grpc.max_connection_age_grace_ms", int(self.config.grace_seconds * 1000)),
                ]
                if self.config.max_connection_age_seconds
                else []
            ),
        ]

    def _admit(self, context: grpc.ServicerContext, *, stream: bool) -> Caller:
        """Count the call in and say who made it, or raise the ServiceError that rejects it."""
        caller = self._auth.authenticate(context)
        with self._calls:
            if self._shutting_down:
                raise ServiceError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the {self.worker} worker is shutting down; retry on another replica",
                    Reason.SHUTTING_DOWN,
                )
            if stream:
                self._take_stream_slot()
            self._active += 1
            self._in_flight.inc()
        return caller

    def _take_stream_slot(self) -> None:
        """Count a stream in (caller holds self._calls), or refuse it when every stream slot is taken."""
        slots = self.config.stream_slots
        if self._streams >= slots:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the {self.worker} worker already has {slots} streams open (--max-streams); "
                "close idle streams, retry with backoff, or use unary calls",
                Reason.OVERLOADED,
                limit="max_streams",
            )
        self._streams += 1

    def _release(self, *, stream: bool) -> None:
        """Count an admitted call out, waking stop() when the last one ends."""
        with self._calls:
            self._streams -= stream
            self._active -= 1
            self._in_flight.dec()
            if self._active == 0:
                self._calls.notify_all()

    def _refresh_readiness(self) -> None:
        """Evaluate ready() (an exception means not ready, its message says why) and publish a change.

        Every change is logged with the reason, so "NOT_SERVING" never goes unexplained (e.g. a wrong
        Redis password is named at startup).
        """
        reason = None
        try:
            ready = bool(self._ready())
        except Exception as error:
            ready, reason = False, f"{type(error).__name__}: {error}"
        if (ready, reason) == (self._is_ready, self._not_ready_reason) or self._shutting_down:
            return
        if ready != self._is_ready:
            status = _SERVING if ready else _NOT_SERVING
            for name in ("", *(service.name for service in self.services)):
                self._health.set(name, status)  # ignored once enter_graceful_shutdown() ran
        if self._is_ready is not None or not ready:
            log.log(
                logging.INFO if ready else logging.WARNING,
                "%s worker is %s",
                self.worker,
                "ready" if ready else f"not ready: {reason or 'readiness check failed'}",
                extra={"worker": self.worker, "ready": ready, "reason": reason},
            )
        self._is_ready, self._not_ready_reason = ready, reason

    def _poll_readiness(self) -> None:
        """Re-evaluate readiness every ready_interval seconds until stop()."""
        while not self._stop_polling.wait(self._ready_interval):
            self._refresh_readiness()

    def _shut_down(self) -> None:
        """The first stop() caller's work: NOT_SERVING, drain admitted calls, stop the server."""
        self._stop_polling.set()
        self._health.enter_graceful_shutdown()  # every status, liveness included, -> NOT_SERVING
        server = self._server
        if server is None:  # never started
            self._stopped.set()
            return
        with self._calls:
            log.info(
                "%s worker shutting down: %d calls in flight",
                self.worker,
                self._active,
                extra={"worker": self.worker, "in_flight": self._active},
            )
            while self._active > 0:
                assert self._deadline is not None
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._calls.wait(remaining)
            self._server_stopping = True
            assert self._deadline is not None
            remaining = max(0.0, self._deadline - time.monotonic())
            abandoned = self._active
        if abandoned:
            log.warning(
                "%s worker: grace period over, cancelling %d calls",
                self.worker,
                abandoned,
                extra={"worker": self.worker, "in_flight": abandoned},
            )
        # What is left are exempt streams (health Watch) and calls being refused: give them a moment only.
        server.stop(min(remaining, _FINAL_GRACE_SECONDS)).wait()
        if self._health_pool is not None:
            self._health_pool.shutdown(wait=False)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        log.info("%s worker stopped", self.worker, extra={"worker": self.worker})
        self._stopped.set()


# --- logging ---------------------------------------------------------------------------------

# Attributes every LogRecord has; anything else on a record came from `extra=` and is emitted as a field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES and key[:1] != "_"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line (ts, level, logger, message, extra fields), for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        payload: dict[str, Any] = {
            "ts": ts,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extra_fields(record).items():
            payload.setdefault(key, value)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal, with the extra fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = _extra_fields(record)
        if not extra:
            return line
        fields = " ".join(f"{key}={value}" for key, value in extra.items())
        head, newline, rest = line.partition("\n")  # keep a traceback below the fields
        return f"{head} {fields}{newline}{rest}"


def configure_logging(level: str = "INFO", json_logs: bool = True) -> None:
    """Set up the root logger for a worker process: one line per record on stderr (JSON by default).

    Calling it again replaces the handler it installed before (handlers added by others are kept).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_sam3_handler", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_logs else TextFormatter())
    handler._sam3_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
