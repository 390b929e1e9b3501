"""EncoderService: image bytes -> embeddings in the shared store, at most once per image across the fleet.

The flow of one Encode:
1. The image's header is read (format, pixel count): a bad or oversized image is refused before it
   costs a lock, a slot or a decode. The sha256 of the bytes is the image id; if the store already
   holds it for this model -> `cached`.
2. Take the image's short Redis lock (renewed while the encode runs). Whoever holds it encodes; the
   others wait for the value to appear (and answer `cached`) at most until their own deadline,
   falling back to encoding themselves if the holder fails or dies (its lock then expires in seconds).
3. Encoding needs a free slot. A caller that finds them busy waits in a short line (`max_queued`),
   interactive `Encode` ahead of `EncodeBatch` and `prewarm` requests, for as long as its deadline
   leaves time to encode; a full line or no time left is RESOURCE_EXHAUSTED / OVERLOADED. A cancelled
   or expired call terminates the model run and writes nothing.

Redis down means UNAVAILABLE (StoreUnavailableError): an embedding nobody can fetch is of no use to a
decoder (docs/architecture.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import onnxruntime as ort
from PIL import Image

from sam3_client import wire
from sam3_client.proto import common_pb2, encoder_pb2, encoder_pb2_grpc
from sam3_core.images import ImageError, ImageLimits, image_pixels, open_image
from sam3_core.model import Sam3Model
from sam3_core.predictor import encode, encode_with_detector
from sam3_core.timing import StageTimer
from sam3_serving import metrics
from sam3_serving.auth import tenant_of
from sam3_serving.errors import Reason, ServiceError
from sam3_serving.model_info import model_info
from sam3_serving.roles import Role
from sam3_serving.slots import BATCH, INTERACTIVE, PrioritySlots, QueueFull
from sam3_serving.store import DETECTOR_FEATURES, EMBEDDINGS, ValueStore
from sam3_serving.streams import ReadAhead, StreamLimits

WORKER = Role.ENCODER
_PRIORITY_NAMES = {INTERACTIVE: "interactive", BATCH: "batch"}


@dataclass(frozen=True)
class EncoderSettings:
    """Admission and waiting rules of one encoder worker."""

    max_concurrent: int = 1  # model runs at once; ONNX Runtime already uses every core for one
    max_queued: int = 4  # callers waiting for a slot (each holds a handler thread); beyond: OVERLOADED
    max_queue_seconds: float = 60.0  # longest wait for a slot, whatever the caller's deadline
    single_flight_timeout: float = 120.0  # how long to wait for another worker's encode of the same image
    image_limits: ImageLimits = ImageLimits()
    streams: StreamLimits = StreamLimits()
    # With a unified model folder, also store the concept detector's features (from the same encoder
    # run) so decoders can answer SegmentConcept; off: a click-only fleet stores today's bytes only.
    concepts: bool = True


class EncoderServicer(encoder_pb2_grpc.EncoderServiceServicer):
    """Plain servicer: the gRPC plumbing (health, metrics, errors -> status) is the Worker's (sam3_serving.server)."""

    def __init__(self, model: Sam3Model, store: ValueStore, settings: EncoderSettings = EncoderSettings()) -> None:
        self.model = model
        self.store = store
        self.settings = settings
        self._slots = PrioritySlots(settings.max_concurrent, settings.max_queued)
        self.concepts = settings.concepts and model.has_detector_features
        self._embeddings = EMBEDDINGS.expecting(model.embedding_shapes())
        self._detector = DETECTOR_FEATURES.expecting(model.detector_shapes() if self.concepts else [])
        self._written_last = self._detector if self.concepts else self._embeddings
        self._encode_seconds = 0.0  # recent model time (moving average): what a waiter must leave itself

    def Encode(self, request: encoder_pb2.EncodeRequest, context: grpc.ServicerContext) -> encoder_pb2.EncodeResponse:
        return self._encode(request, context, BATCH if request.prewarm else INTERACTIVE)

    def EncodeBatch(
        self, request_iterator: Iterator[encoder_pb2.EncodeRequest], context: grpc.ServicerContext
    ) -> Iterator[encoder_pb2.EncodeResponse]:
        """One response per request, in order; a bad image gets an item error and the stream goes on."""
        with ReadAhead(request_iterator, self.settings.streams) as requests:
            for request in requests:
                try:
                    yield self._encode(request, context, BATCH)
                except ServiceError as error:
                    yield encoder_pb2.EncodeResponse(request_id=request.request_id, error=error.to_item_error())

    def GetModelInfo(
        self, request: common_pb2.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> common_pb2.ModelInfo:
        return model_info(self.model, self.store)

    def _encode(
        self, request: encoder_pb2.EncodeRequest, context: grpc.ServicerContext, priority: int
    ) -> encoder_pb2.EncodeResponse:
        timer = StageTimer()
        with timer.stage("total"):
            image = self._open(request.image)
            with timer.stage("hash"):
                image_id = wire.image_id(request.image)
            size, cached = self._stored_or_encoded(request, image, image_id, context, timer, priority)
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

    def _open(self, data: bytes) -> Image.Image:
        """The image's header, checked (format, pixel count); its pixels are decoded later, in a slot."""
        if not data:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "image: empty; send the encoded file bytes",
                Reason.INVALID_IMAGE,
                field="image",
            )
        with image_errors():
            return open_image(data, self.settings.image_limits)

    def _stored_or_encoded(
        self,
        request: encoder_pb2.EncodeRequest,
        image: Image.Image,
        image_id: str,
        context: grpc.ServicerContext,
        timer: StageTimer,
        priority: int,
    ) -> tuple[tuple[int, int], bool]:
        """((height, width), cached): the stored value's size, or the size of the image this call encoded."""
        store = self.store.for_tenant(tenant_of(context))
        if not request.force and (size := self._stored_size(store, image_id)) is not None:
            return size, True
        lock = store.locks.take(image_id)
        if lock is None and not request.force:
            size = self._wait_for_other_worker(store, image_id, context, timer)
            if size is not None:
                return size, True
            lock = store.locks.take(image_id)
        try:
            # Another worker may have stored it and let go of the lock between our peek and our lock.
            if lock is not None and not request.force and (size := self._stored_size(store, image_id)):
                return size, True
            return self._run_model(image, store, image_id, context, timer, priority), False
        finally:
            if lock is not None:
                lock.release()  # never raises: a lock that cannot be released expires by itself

    def _stored_size(self, store: ValueStore, image_id: str) -> tuple[int, int] | None:
        """The stored value's (height, width) when everything this worker would write is stored."""
        head = store.peek(self._embeddings, image_id)
        if head is not None and self.concepts and store.peek(self._detector, image_id) is None:
            return None  # encoded by a click-only encoder, or its features evicted: encode again, once
        return None if head is None else head.size

    def _wait_for_other_worker(
        self, store: ValueStore, image_id: str, context: grpc.ServicerContext, timer: StageTimer
    ) -> tuple[int, int] | None:
        """Wait for the lock holder's value, no longer than this call's own deadline."""
        remaining = context.time_remaining()
        timeout = self.settings.single_flight_timeout
        if remaining is not None:
            timeout = min(timeout, remaining)
        # Watch the value the holder writes last: with concepts the detector features (the click value may
        # be there already, from a click-only encoder, while the holder re-encodes for the features).
        with timer.stage("single_flight_wait"):
            waited = store.wait_for(self._written_last, image_id, timeout, cancelled=lambda: not context.is_active())
        if waited.outcome == "cancelled" or not context.is_active():
            raise ServiceError(
                grpc.StatusCode.CANCELLED, "call ended while waiting for another worker's encode", Reason.CANCELLED
            )
        metrics.SINGLE_FLIGHT_WAITS.labels(waited.outcome).inc()
        return None if waited.head is None else waited.head.size

    def _take_slot(self, context: grpc.ServicerContext, priority: int, timer: StageTimer) -> None:
        """Wait in line for a model slot while the deadline leaves time to encode, or raise OVERLOADED."""
        started = time.perf_counter()
        remaining = context.time_remaining()
        budget = self.settings.max_queue_seconds if remaining is None else remaining - self._encode_seconds
        budget = min(budget, self.settings.max_queue_seconds)
        with timer.stage("queue_wait"):
            try:
                taken = self._slots.acquire(priority, max(0.0, budget), cancelled=lambda: not context.is_active())
                outcome = "started" if taken else "gave_up"
            except QueueFull:
                taken, outcome = False, "full"
        waited = time.perf_counter() - started
        metrics.ENCODE_QUEUE_SECONDS.labels(priority=_PRIORITY_NAMES[priority], outcome=outcome).observe(waited)
        if taken:
            return
        if not context.is_active():
            raise ServiceError(grpc.StatusCode.CANCELLED, "call ended while waiting for the encoder", Reason.CANCELLED)
        running = f"{self.settings.max_concurrent} encodes running"
        raise ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"encoder busy: {running} and {self.settings.max_queued} waiting (--encode-queue); retry with backoff "
            "or add encoder replicas"
            if outcome == "full"
            else f"encoder busy: {running}; no slot within {waited:.1f} s, leaving this call's deadline too little "
            "time to encode; retry with backoff or add encoder replicas",
            Reason.OVERLOADED,
            limit="encode_queue" if outcome == "full" else "deadline",
        )

    def _run_model(
        self,
        image: Image.Image,
        store: ValueStore,
        image_id: str,
        context: grpc.ServicerContext,
        timer: StageTimer,
        priority: int,
    ) -> tuple[int, int]:
        self._take_slot(context, priority, timer)
        try:
            with timer.stage("decode"), image_errors():
                rgb = image_pixels(image)
            run_options = ort.RunOptions()
            # add_callback refuses (False) once the call has ended: then do not start the model at all.
            if not context.add_callback(lambda: setattr(run_options, "terminate", True)):
                raise ServiceError(
                    grpc.StatusCode.CANCELLED, "call ended before the encode started; nothing stored", Reason.CANCELLED
                )
            model_started = time.perf_counter()
            try:
                if self.concepts:
                    embeddings, detector = encode_with_detector(self.model, rgb, timer, run_options)
                else:
                    embeddings, detector = encode(self.model, rgb, timer, run_options), None
            except Exception as error:
                if not context.is_active():  # terminated because the call was cancelled or expired
                    raise ServiceError(
                        grpc.StatusCode.CANCELLED, "call ended during the encode; nothing stored", Reason.CANCELLED
                    ) from error
                raise
            metrics.MODEL_RUNS.labels(WORKER).inc()
            self._encode_seconds = 0.8 * self._encode_seconds + 0.2 * (time.perf_counter() - model_started)
            if not context.is_active():
                raise ServiceError(
                    grpc.StatusCode.CANCELLED, "call ended during the encode; nothing stored", Reason.CANCELLED
                )
            with timer.stage("store_write"):
                store.put(self._embeddings, image_id, embeddings)
                if detector is not None:  # last: what concept-serving waiters watch (see _wait_for_other_worker)
                    store.put(self._detector, image_id, detector)
            return embeddings.original_size
        finally:
            self._slots.release()


@contextmanager
def image_errors() -> Iterator[None]:
    """ImageError -> INVALID_IMAGE, or IMAGE_TOO_LARGE with metadata "limit" naming the limit exceeded."""
    try:
        yield
    except ImageError as error:
        if error.limit is None:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT, f"image: {error}", Reason.INVALID_IMAGE, field="image"
            ) from error
        raise ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"image: {error}",
            Reason.IMAGE_TOO_LARGE,
            field="image",
            limit=error.limit,
        ) from error
