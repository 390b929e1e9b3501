"""DecoderService: prompts against stored embeddings, answered in about the decoder's own time.

The prompt path is: embeddings from the local LRU (else one Redis GET, converted once to what the
decoder takes, float32 and on its device, and cached), prompt validation, one decoder run per group
of same-shaped objects, then only the masks
that were asked for are upsampled and encoded. Nothing here waits on anything but Redis.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from decoder_service.cache import EmbeddingCache
from sam3_client.proto import common_pb2, decoder_pb2, decoder_pb2_grpc
from sam3_core import masks as mask_codecs
from sam3_core.embeddings import ImageEmbeddings
from sam3_core.model import Sam3Model
from sam3_core.predictor import ObjectPrediction, StageTimer, decode
from sam3_core.prompts import BACKGROUND, FOREGROUND, Prompt, PromptError, PromptLimits
from sam3_serving import metrics
from sam3_serving.errors import Reason, ServiceError
from sam3_serving.model_info import model_info
from sam3_serving.store import EmbeddingStore, StoreUnavailableError

WORKER = "decoder"
IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")
_LABELS = {
    decoder_pb2.POINT_LABEL_UNSPECIFIED: FOREGROUND,
    decoder_pb2.POINT_LABEL_FOREGROUND: FOREGROUND,
    decoder_pb2.POINT_LABEL_BACKGROUND: BACKGROUND,
}


@dataclass(frozen=True)
class DecoderSettings:
    prompt_limits: PromptLimits = PromptLimits()
    cache_bytes: int = 1024 * 1024 * 1024  # local embedding LRU: ~50 images at float32


def to_prompts(request: decoder_pb2.SegmentRequest) -> list[Prompt]:
    """Wire prompts -> core prompts (unknown label values are reported with their field name)."""
    prompts = []
    for i, obj in enumerate(request.objects):
        labels = []
        for j, point in enumerate(obj.points):
            if point.label not in _LABELS:
                raise PromptError(f"objects[{i}].points[{j}].label", f"unknown label value {point.label}")
            labels.append(_LABELS[point.label])
        box = (obj.box.x1, obj.box.y1, obj.box.x2, obj.box.y2) if obj.HasField("box") else None
        prompts.append(Prompt(tuple((p.x, p.y) for p in obj.points), tuple(labels), box))
    return prompts


def check_enums(request: decoder_pb2.SegmentRequest) -> None:
    """Values from a newer (or broken) client are refused by name rather than silently read as defaults."""
    for field, enum in (("selection", decoder_pb2.MaskSelection), ("mask_format", decoder_pb2.MaskFormat)):
        value = getattr(request, field)
        if value not in enum.values():
            raise PromptError(field, f"unknown value {value}; expected one of {', '.join(enum.keys())}")


def selected_indices(request: decoder_pb2.SegmentRequest, prediction: ObjectPrediction) -> list[int]:
    if request.selection == decoder_pb2.MASK_SELECTION_ALL:
        return list(range(len(prediction.iou_scores)))
    if request.selection == decoder_pb2.MASK_SELECTION_INDEX:
        if not 0 <= request.mask_index < len(prediction.iou_scores):
            raise PromptError("mask_index", f"{request.mask_index} is not a mask index (0..2)")
        return [request.mask_index]
    return [prediction.best_index]


def mask_message(prediction: ObjectPrediction, index: int, fmt: int, timer: StageTimer) -> decoder_pb2.Mask:
    """One mask on the wire. RLE comes straight from the logits (no H x W mask for smooth masks); with
    MASK_FORMAT_NONE nothing at full size is computed at all."""
    message = decoder_pb2.Mask(index=index, iou_score=float(prediction.iou_scores[index]), format=fmt)
    if fmt == decoder_pb2.MASK_FORMAT_NONE:
        return message
    height, width = prediction.original_size
    started = time.perf_counter()
    if fmt == decoder_pb2.MASK_FORMAT_RLE:
        rle = prediction.mask_rle(index)
        area, (x, y, w, h) = mask_codecs.rle_area_and_box(rle)
        timer.measure("postprocess", started)
        started = time.perf_counter()
        message.rle.CopyFrom(decoder_pb2.RleMask(counts=rle.counts, height=height, width=width))
    else:
        mask = prediction.mask(index)
        area, (x, y, w, h) = int(np.count_nonzero(mask)), mask_codecs.bounding_box(mask)
        timer.measure("postprocess", started)
        started = time.perf_counter()
        packed = fmt == decoder_pb2.MASK_FORMAT_PACKED_BITS
        message.data = mask_codecs.to_packed_bits(mask) if packed else mask_codecs.to_png(mask)
    message.width, message.height, message.area = width, height, area
    message.bbox.CopyFrom(decoder_pb2.BoundingBox(x=x, y=y, width=w, height=h))
    timer.measure("encode_mask", started)
    return message


def object_result(
    request: decoder_pb2.SegmentRequest, prediction: ObjectPrediction, timer: StageTimer
) -> decoder_pb2.ObjectResult:
    fmt = request.mask_format or decoder_pb2.MASK_FORMAT_PNG
    indices = selected_indices(request, prediction)
    result = decoder_pb2.ObjectResult(
        presence_probability=prediction.presence,
        presence_logit=prediction.object_score_logit,
        iou_scores=prediction.iou_scores.tolist(),
        best_index=prediction.best_index,
    )
    result.masks.extend(mask_message(prediction, index, fmt, timer) for index in indices)
    if request.return_low_res_logits:
        logits = prediction.low_res_logits[indices]
        result.low_res_logits.CopyFrom(
            decoder_pb2.LowResLogits(
                data=logits.astype("<f4").tobytes(),
                count=len(indices),
                height=logits.shape[1],
                width=logits.shape[2],
            )
        )
    return result


class DecoderServicer(decoder_pb2_grpc.DecoderServiceServicer):
    def __init__(
        self,
        model: Sam3Model,
        store: EmbeddingStore,
        cache: EmbeddingCache,
        settings: DecoderSettings = DecoderSettings(),
    ) -> None:
        self.model = model
        self.store = store
        self.cache = cache
        self.settings = settings

    def GetModelInfo(
        self, request: common_pb2.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> common_pb2.ModelInfo:
        return model_info(self.model, self.store)

    def Segment(
        self, request: decoder_pb2.SegmentRequest, context: grpc.ServicerContext
    ) -> decoder_pb2.SegmentResponse:
        return self._segment(request)

    def Prefetch(
        self, request: decoder_pb2.PrefetchRequest, context: grpc.ServicerContext
    ) -> decoder_pb2.PrefetchResponse:
        """The first click's Redis fetch, paid ahead of it (the SDK sends this after an Encode)."""
        timer = StageTimer()
        started = time.perf_counter()
        _, from_cache = self._embeddings_and_source(request.image_id, timer)
        timer.measure("total", started)
        return decoder_pb2.PrefetchResponse(
            already_cached=from_cache, timings=common_pb2.Timings(milliseconds=timer.milliseconds)
        )

    def SegmentStream(
        self, request_iterator: Iterator[decoder_pb2.SegmentRequest], context: grpc.ServicerContext
    ) -> Iterator[decoder_pb2.SegmentResponse]:
        """Answers in order. A request whose non-empty object_key has a newer request already waiting
        is answered `skipped` without running the model: an interactive client only cares about the
        latest click on an object. Per-request failures become `error` items; the session goes on."""
        pending: queue.Queue[decoder_pb2.SegmentRequest | None] = queue.Queue()
        waiting_keys: dict[str, int] = {}
        lock = threading.Lock()

        def read() -> None:
            try:
                for request in request_iterator:
                    with lock:
                        waiting_keys[request.object_key] = waiting_keys.get(request.object_key, 0) + 1
                    pending.put(request)
            except grpc.RpcError:
                pass  # the client went away; the loop below ends on the sentinel
            finally:
                pending.put(None)

        threading.Thread(target=read, name="segment-stream-reader", daemon=True).start()
        while (request := pending.get()) is not None:
            with lock:
                waiting_keys[request.object_key] -= 1
                stale = bool(request.object_key) and waiting_keys[request.object_key] > 0
            if stale:
                yield decoder_pb2.SegmentResponse(
                    request_id=request.request_id, image_id=request.image_id, skipped=True
                )
                continue
            try:
                yield self._segment(request)
            except ServiceError as error:
                yield decoder_pb2.SegmentResponse(
                    request_id=request.request_id, image_id=request.image_id, error=error.to_item_error()
                )

    def _segment(self, request: decoder_pb2.SegmentRequest) -> decoder_pb2.SegmentResponse:
        timer = StageTimer()
        started = time.perf_counter()
        embeddings = self._embeddings(request.image_id, timer)
        try:
            check_enums(request)
            prompts = to_prompts(request)
            predictions = decode(self.model, embeddings, prompts, limits=self.settings.prompt_limits, timer=timer)
            objects = [object_result(request, p, timer) for p in predictions]
        except PromptError as error:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT, str(error), Reason.INVALID_PROMPT, field=error.field
            ) from error
        timer.measure("total", started)
        metrics.observe_stages(WORKER, timer.milliseconds)
        height, width = embeddings.original_size
        return decoder_pb2.SegmentResponse(
            objects=objects,
            width=width,
            height=height,
            model_id=self.model.model_id,
            timings=common_pb2.Timings(milliseconds=timer.milliseconds),
            request_id=request.request_id,
            image_id=request.image_id,
        )

    def _embeddings(self, image_id: str, timer: StageTimer) -> ImageEmbeddings:
        return self._embeddings_and_source(image_id, timer)[0]

    def _embeddings_and_source(self, image_id: str, timer: StageTimer) -> tuple[ImageEmbeddings, bool]:
        """(embeddings, came from the local cache): the local cache, else Redis (converted to float32
        once); NOT_FOUND tells the client to Encode."""
        if not IMAGE_ID.match(image_id):
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "image_id: expected the 64 lowercase hex digits of the image's sha256",
                Reason.INVALID_PROMPT,
                field="image_id",
            )
        started = time.perf_counter()
        outcome = "local"

        def load() -> ImageEmbeddings | None:
            nonlocal outcome
            lookup = self.store.get(image_id)
            outcome = "redis" if lookup.outcome == "hit" else lookup.outcome
            # Converted once per image for the decoder (float32; on its device with I/O binding), then cached.
            return self.model.decoder_embeddings(lookup.embeddings) if lookup.embeddings is not None else None

        try:
            embeddings, from_cache = self.cache.get_or_load(image_id, load)
        except StoreUnavailableError as error:
            raise ServiceError(
                grpc.StatusCode.UNAVAILABLE, f"embedding store unavailable: {error}", Reason.STORE_UNAVAILABLE
            ) from error
        timer.measure("fetch", started)
        metrics.CACHE_LOOKUPS.labels(outcome).inc()
        metrics.LOCAL_CACHE_BYTES.set(self.cache.nbytes)
        if embeddings is None:
            raise ServiceError(
                grpc.StatusCode.NOT_FOUND,
                f"no embeddings for image {image_id} under model {self.model.model_id}; call Encode first",
                Reason.EMBEDDING_NOT_FOUND,
                image_id=image_id,
                model_id=self.model.model_id,
            )
        return embeddings, from_cache
