"""Between the SDK's values and sam3.v1 messages: request builders (which check what the caller gave)
and response parsers. No I/O: the flows (`_flows`) decide which messages to send and when.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Unpack

import numpy as np

from sam3_client import wire
from sam3_client._images import ImagePayload
from sam3_client._prompts import MASK_FORMATS, PREVIOUS, ConceptOptions, ConceptQuery, ObjectPrompt, SegmentOptions
from sam3_client._results import (
    ConceptAnswer,
    ConceptResult,
    EncodeResult,
    Instance,
    Mask,
    ModelInfo,
    ObjectResult,
    SegmentResult,
)
from sam3_client.errors import Sam3Error
from sam3_client.proto import common_pb2, decoder_pb2, encoder_pb2


def object_prompt(prompt: ObjectPrompt) -> decoder_pb2.ObjectPrompt:
    try:
        points = [tuple(p) for p in prompt.points]
    except TypeError:
        points = []
    if any(len(p) != 2 for p in points) or len(points) != len(prompt.points):
        raise ValueError(f"points must be [[x, y], ...], got {prompt.points!r}")
    labels = list(prompt.labels) if prompt.labels is not None else [1] * len(points)
    if len(labels) != len(points):
        raise ValueError(f"{len(labels)} labels for {len(points)} points")
    if any(label not in wire.POINT_LABELS for label in labels):
        raise ValueError(f"labels must be 1 (foreground) or 0 (background), got {labels}")
    message = decoder_pb2.ObjectPrompt(
        points=[
            decoder_pb2.Point(x=float(x), y=float(y), label=wire.POINT_LABELS[int(label)])
            for (x, y), label in zip(points, labels, strict=True)
        ]
    )
    if prompt.box is not None:
        x1, y1, x2, y2 = (float(v) for v in prompt.box)
        message.box.CopyFrom(decoder_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2))
    if not isinstance(prompt.object_key, str) or len(prompt.object_key.encode()) > MAX_OBJECT_KEY_BYTES:
        raise ValueError(f"object_key: a string of at most {MAX_OBJECT_KEY_BYTES} bytes, got {prompt.object_key!r}")
    message.object_key = prompt.object_key
    if prompt.mask_input is not None:
        message.mask_input.CopyFrom(mask_input(prompt))
    return message


MAX_OBJECT_KEY_BYTES = 128  # the worker's limit (decoder.proto, ObjectPrompt.object_key)


def mask_input(prompt: ObjectPrompt) -> decoder_pb2.MaskInput:
    """A prompt's mask input on the wire: "previous" (needs its object_key), or one map of low-res logits."""
    if isinstance(prompt.mask_input, str):
        if prompt.mask_input != PREVIOUS:
            raise ValueError(f"mask_input {prompt.mask_input!r}: give low-res logits (an array) or {PREVIOUS!r}")
        if not prompt.object_key:
            raise ValueError(f"mask_input={PREVIOUS!r} needs the object_key the worker remembered the logits under")
        return decoder_pb2.MaskInput(previous=True)
    logits = np.asarray(prompt.mask_input)
    if logits.ndim == 3 and logits.shape[0] == 1:
        logits = logits[0]
    if logits.ndim != 2 or not np.issubdtype(logits.dtype, np.floating):
        raise ValueError(
            f"mask_input must be one mask's low-res logits, a float array [h, w] (or [1, h, w]); got "
            f"{logits.dtype} {logits.shape}: pass e.g. result.low_res_logits[result.best_index]"
        )
    if not np.isfinite(logits).all():
        raise ValueError("mask_input holds NaN or infinite values")
    height, width = logits.shape
    data = np.ascontiguousarray(logits, "<f4").tobytes()
    return decoder_pb2.MaskInput(logits=decoder_pb2.LowResLogits(data=data, height=height, width=width, count=1))


def _polygon_tolerance(options: Any) -> float | None:
    """The polygon_tolerance option, checked (None: the worker's default)."""
    tolerance = options.get("polygon_tolerance")
    if tolerance is None:
        return None
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 <= tolerance <= 100:
        raise ValueError(f"polygon_tolerance {tolerance!r}: give a number of pixels in [0, 100] (default 1)")
    return float(tolerance)


def segment_request(
    image_id: str,
    objects: Sequence[ObjectPrompt],
    *,
    request_id: str = "",
    object_key: str = "",
    **options: Unpack[SegmentOptions],
) -> decoder_pb2.SegmentRequest:
    """The SegmentRequest for `objects` with SegmentOptions (`timeout` is the caller's business, not sent)."""
    unknown = set(options) - SegmentOptions.__optional_keys__
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}: use {sorted(SegmentOptions.__optional_keys__)}")
    mask, mask_format = options.get("mask", "best"), options.get("mask_format", "rle")
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format {mask_format!r}: choose one of {sorted(MASK_FORMATS)}")
    request = decoder_pb2.SegmentRequest(
        image_id=image_id,
        objects=[object_prompt(o) for o in objects],
        mask_format=MASK_FORMATS[mask_format],
        return_low_res_logits=options.get("low_res_logits", False),
        request_id=request_id,
        object_key=object_key,
        polygon_tolerance=_polygon_tolerance(options),
    )
    if mask == "all":
        request.selection = decoder_pb2.MASK_SELECTION_ALL
    elif mask == "best":
        request.selection = decoder_pb2.MASK_SELECTION_BEST
    elif isinstance(mask, int) and not isinstance(mask, bool):
        request.selection, request.mask_index = decoder_pb2.MASK_SELECTION_INDEX, mask
    else:
        raise ValueError(f"mask {mask!r}: use 'best', 'all' or an index 0..2")
    return request


def concept_request(
    image_id: str, concepts: Sequence[ConceptQuery], **options: Unpack[ConceptOptions]
) -> decoder_pb2.SegmentConceptRequest:
    """The SegmentConceptRequest for `concepts` with ConceptOptions (`timeout` is not sent)."""
    unknown = set(options) - ConceptOptions.__optional_keys__
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}: use {sorted(ConceptOptions.__optional_keys__)}")
    mask_format = options.get("mask_format", "rle")
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format {mask_format!r}: choose one of {sorted(MASK_FORMATS)}")
    threshold, max_instances = options.get("threshold", 0.5), options.get("max_instances")
    if not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold!r}: give a score in [0, 1] (SAM3's usual: 0.5)")
    if max_instances is not None and (not isinstance(max_instances, int) or max_instances < 0):
        raise ValueError(f"max_instances {max_instances!r}: give a whole number >= 0, or None for all")
    request = decoder_pb2.SegmentConceptRequest(
        image_id=image_id,
        threshold=threshold,
        mask_format=MASK_FORMATS[mask_format],
        label_image=options.get("label_image", False),
        polygon_tolerance=_polygon_tolerance(options),
    )
    if max_instances is not None:
        request.max_instances = max_instances
    for concept in concepts:
        message = request.concepts.add(text=concept.text or "")
        for (x1, y1, x2, y2), positive in concept.pairs():
            label = decoder_pb2.EXEMPLAR_LABEL_POSITIVE if positive else decoder_pb2.EXEMPLAR_LABEL_NEGATIVE
            message.exemplars.add(box=decoder_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2), label=label)
    return request


def mask_of(m: decoder_pb2.Mask) -> Mask:
    return Mask(m.index, m.iou_score, (m.bbox.x, m.bbox.y, m.bbox.width, m.bbox.height), m.area, m)


def concept_result(response: decoder_pb2.SegmentConceptResponse, encoded: EncodeResult | None = None) -> ConceptResult:
    answers = [
        ConceptAnswer(
            concept.text or None,
            concept.presence,
            [
                Instance(i.score, (i.box.x1, i.box.y1, i.box.x2, i.box.y2), i.mask.area, mask_of(i.mask))
                for i in concept.instances
            ],
            concept.label_png,
        )
        for concept in response.concepts
    ]
    return ConceptResult(
        response.image_id,
        response.width,
        response.height,
        answers,
        response.model_id,
        dict(response.timings.milliseconds),
        encoded,
    )


def _object_result(
    obj: decoder_pb2.ObjectResult, image_id: str, prompt: ObjectPrompt | None, options: SegmentOptions
) -> ObjectResult:
    logits = None
    if obj.HasField("low_res_logits"):
        shape = (obj.low_res_logits.count, obj.low_res_logits.height, obj.low_res_logits.width)
        logits = np.frombuffer(obj.low_res_logits.data, "<f4").reshape(shape)
    masks = [mask_of(m) for m in obj.masks]
    return ObjectResult(
        masks,
        list(obj.iou_scores),
        obj.best_index,
        obj.presence_probability,
        logits,
        obj.mask_input_used,
        image_id=image_id,
        prompt=prompt,
        options=options,
    )


def segment_result(
    response: decoder_pb2.SegmentResponse,
    encoded: EncodeResult | None = None,
    objects: Sequence[ObjectPrompt] = (),
    options: SegmentOptions | None = None,
    *,
    target: str | None = None,
) -> SegmentResult:
    """The result; `objects` and `options` (what was asked) let each object be refined (`Client.refine`);
    `target`: where a segment_stream's response came from, named by its item error."""
    asked: list[ObjectPrompt | None] = list(objects) if len(objects) == len(response.objects) else []
    asked = asked or [None] * len(response.objects)
    kept: SegmentOptions = {key: value for key, value in (options or {}).items() if key != "timeout"}  # type: ignore[assignment]
    pairs = zip(response.objects, asked, strict=True)
    results = [_object_result(obj, response.image_id, prompt, kept) for obj, prompt in pairs]
    return SegmentResult(
        response.image_id,
        response.width,
        response.height,
        results,
        response.model_id,
        dict(response.timings.milliseconds),
        encoded,
        response.request_id,
        response.skipped,
        Sam3Error.from_item(response.error, target) if response.HasField("error") else None,
    )


def encode_request(
    payload: ImagePayload, *, force: bool = False, request_id: str = "", prewarm: bool = False
) -> encoder_pb2.EncodeRequest:
    if payload.data is None:
        raise ValueError(f"image {payload.image_id} is only an id: pass the image itself to encode it")
    return encoder_pb2.EncodeRequest(image=payload.data, force=force, request_id=request_id, prewarm=prewarm)


def encode_result(response: encoder_pb2.EncodeResponse, *, target: str | None = None) -> EncodeResult:
    """`target`: where an encode_many response came from, named by its item error."""
    return EncodeResult(
        response.image_id,
        response.width,
        response.height,
        response.cached,
        response.model_id,
        dict(response.timings.milliseconds),
        Sam3Error.from_item(response.error, target) if response.HasField("error") else None,
    )


def model_info(info: common_pb2.ModelInfo) -> ModelInfo:
    return ModelInfo(
        info.model_id,
        info.variant,
        info.image_size,
        info.mask_size,
        {spec.name: (tuple(spec.shape), spec.dtype) for spec in info.embeddings},
        info.server_version,
        common_pb2.NoMemoryEmbedding.Name(info.no_memory_embedding).removeprefix("NO_MEMORY_EMBEDDING_").lower(),
    )
