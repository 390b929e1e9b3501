"""EncoderService: image bytes -> embeddings in the shared store, at most once per image across the fleet.

The flow of one Encode:
1. sha256 of the bytes is the image id; if the store already holds it for this model -> `cached`.
2. Take the image's short Redis lock (renewed while the encode runs). Whoever holds it encodes; the
   others wait for the value to appear (and answer `cached`) at most until their own deadline,
   falling back to encoding themselves if the holder fails or dies (its lock then expires in seconds).
3. Encoding needs a free slot: beyond `max_concurrent` encodes, RESOURCE_EXHAUSTED at once rather
   than an unbounded queue. A cancelled or expired call terminates the model run and writes nothing.

Redis down means UNAVAILABLE: an embedding nobody can fetch is of no use to a decoder (documented
choice, DESIGN §4).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import onnxruntime as ort

from sam3_client.proto import common_pb2, encoder_pb2, encoder_pb2_grpc
from sam3_core.images import ImageError, ImageLimits, decode_image
from sam3_core.model import Sam3Model
from sam3_core.predictor import StageTimer, encode
from sam3_serving import metrics
from sam3_serving.errors import Reason, ServiceError
from sam3_serving.model_info import model_info
from sam3_serving.server import tenant_of
from sam3_serving.store import EmbeddingStore, StoreUnavailableError

WORKER = "encoder"


@dataclass(frozen=True)
class EncoderSettings:
    """Admission and waiting rules of one encoder worker."""

    max_concurrent: int = 1  # model runs at once; ONNX Runtime already uses every core for one
    single_flight_timeout: float = 120.0  # how long to wait for another worker's encode of the same image
    image_limits: ImageLimits = ImageLimits()


class EncoderServicer(encoder_pb2_grpc.EncoderServiceServicer):
    """Plain servicer: the gRPC plumbing (health, metrics, errors -> status) lives in sam3_serving.server."""

    def __init__(self, model: Sam3Model, store: EmbeddingStore, settings: EncoderSettings = EncoderSettings()) -> None:
        self.model = model
        self.store = store
        self.settings = settings
        self._slots = threading.BoundedSemaphore(settings.max_concurrent)

    def Encode(self, request: encoder_pb2.EncodeRequest, context: grpc.ServicerContext) -> encoder_pb2.EncodeResponse:
        return self._encode(request, context)

    def EncodeBatch(
        self, request_iterator: Iterator[encoder_pb2.EncodeRequest], context: grpc.ServicerContext
    ) -> Iterator[encoder_pb2.EncodeResponse]:
        """One response per request, in order; a bad image gets an item error and the stream goes on."""
        for request in request_iterator:
            try:
                yield self._encode(request, context)
            except ServiceError as error:
                yield encoder_pb2.EncodeResponse(request_id=request.request_id, error=error.to_item_error())

    def GetModelInfo(
        self, request: common_pb2.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> common_pb2.ModelInfo:
        return model_info(self.model, self.store)

    def _encode(self, request: encoder_pb2.EncodeRequest, context: grpc.ServicerContext) -> encoder_pb2.EncodeResponse:
        timer = StageTimer()
        started = time.perf_counter()
        if not request.image:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "image: empty; send the encoded file bytes",
                Reason.INVALID_IMAGE,
                field="image",
            )
        image_id = hashlib.sha256(request.image).hexdigest()
        timer.measure("hash", started)

        def respond(size: tuple[int, int], cached: bool) -> encoder_pb2.EncodeResponse:
            timer.measure("total", started)
            metrics.observe_stages(WORKER, timer.milliseconds)
            return encoder_pb2.EncodeResponse(
                image_id=image_id,
                height=size[0],
                width=size[1],
                cached=cached,
                model_id=self.model.model_id,
                timings=common_pb2.Timings(milliseconds=timer.milliseconds),
                request_id=request.request_id,
            )

        store = self.store.for_tenant(tenant_of(context))
        try:
            if not request.force and (size := store.peek_size(image_id)) is not None:
                return respond(size, cached=True)
            lock = store.lock(image_id)
            if lock is None and not request.force:
                size = self._wait_for_other_worker(store, image_id, context, timer)
                if size is not None:
                    return respond(size, cached=True)
                lock = store.lock(image_id)
            try:
                # Another worker may have stored it and let go of the lock between our peek and our lock.
                if lock is not None and not request.force and (size := store.peek_size(image_id)):
                    return respond(size, cached=True)
                return respond(self._run_model(request, store, image_id, context, timer), cached=False)
            finally:
                if lock is not None:
                    lock.release()  # never raises: a lock that cannot be released expires by itself
        except StoreUnavailableError as error:
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE, f"embedding store unavailable: {error}", Reason.STORE_UNAVAILABLE
            ) from error

    def _wait_for_other_worker(
        self, store: EmbeddingStore, image_id: str, context: grpc.ServicerContext, timer: StageTimer
    ) -> tuple[int, int] | None:
        """Wait for the lock holder's value, no longer than this call's own deadline."""
        started = time.perf_counter()
        remaining = context.time_remaining()
        timeout = (
            self.settings.single_flight_timeout
            if remaining is None
            else min(self.settings.single_flight_timeout, remaining)
        )
        size = store.wait_for(image_id, timeout, cancelled=lambda: not context.is_active())
        timer.measure("single_flight_wait", started)
        if not context.is_active():
            raise ServiceError(
                grpc.StatusCode.CANCELLED, "call ended while waiting for another worker's encode", Reason.CANCELLED
            )
        metrics.SINGLE_FLIGHT_WAITS.labels("ready" if size is not None else "timeout_or_failed").inc()
        return size

    def _run_model(
        self,
        request: encoder_pb2.EncodeRequest,
        store: EmbeddingStore,
        image_id: str,
        context: grpc.ServicerContext,
        timer: StageTimer,
    ) -> tuple[int, int]:
        if not self._slots.acquire(blocking=False):
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"encoder busy: {self.settings.max_concurrent} encodes already running; retry with backoff "
                "or add encoder replicas",
                Reason.OVERLOADED,
            )
        try:
            started = time.perf_counter()
            try:
                rgb = decode_image(request.image, self.settings.image_limits)
            except ImageError as error:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED if error.too_large else grpc.StatusCode.INVALID_ARGUMENT
                reason = Reason.IMAGE_TOO_LARGE if error.too_large else Reason.INVALID_IMAGE
                raise ServiceError(code, f"image: {error}", reason, field="image") from error
            timer.measure("decode", started)
            run_options = ort.RunOptions()
            # add_callback refuses (False) once the call has ended: then do not start the model at all.
            if not context.add_callback(lambda: setattr(run_options, "terminate", True)):
                raise ServiceError(
                    grpc.StatusCode.CANCELLED, "call ended before the encode started; nothing stored", Reason.CANCELLED
                )
            try:
                embeddings = encode(self.model, rgb, timer, run_options)
            except Exception as error:
                if not context.is_active():  # terminated because the call was cancelled or expired
                    raise ServiceError(
                        grpc.StatusCode.CANCELLED, "call ended during the encode; nothing stored", Reason.CANCELLED
                    ) from error
                raise
            metrics.MODEL_RUNS.labels(WORKER).inc()
            if not context.is_active():
                raise ServiceError(
                    grpc.StatusCode.CANCELLED, "call ended during the encode; nothing stored", Reason.CANCELLED
                )
            started = time.perf_counter()
            store.put(image_id, embeddings)
            timer.measure("store_write", started)
            return embeddings.original_size
        finally:
            self._slots.release()
