"""Between user-facing Python values and sam3.v1 messages: shared by the sync and async clients.

Besides conversions, this module holds what each client method *does*, written once as a "flow":
a generator that yields the rpcs it needs (`Call`) and receives their responses (or has the
`Sam3Error` thrown in). `Client` runs flows with blocking stubs, `AsyncClient` awaits grpc.aio
stubs; neither repeats the logic (e.g. Segment -> NOT_FOUND -> Encode -> Segment).
"""

from __future__ import annotations

import functools
import io
import itertools
import time
from collections.abc import AsyncIterable, AsyncIterator, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, TypedDict, TypeVar, Unpack, cast

import grpc
import numpy as np

from sam3_client import masks, wire
from sam3_client._busy import BusyRetry
from sam3_client._channel import Call, Deadlines
from sam3_client.errors import Sam3Error
from sam3_client.proto import common_pb2, decoder_pb2, encoder_pb2

T = TypeVar("T")
MASK_FORMATS = {
    "png": decoder_pb2.MASK_FORMAT_PNG,
    "rle": decoder_pb2.MASK_FORMAT_RLE,
    "bits": decoder_pb2.MASK_FORMAT_PACKED_BITS,
    "none": decoder_pb2.MASK_FORMAT_NONE,
}
_FORMAT_NAMES = {value: name for name, value in MASK_FORMATS.items()}
# Pillow modes a PNG stores as they are; anything else (CMYK, YCbCr, float...) is sent as RGB.
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


# ---------------------------------------------------------------- user-facing values


@dataclass(frozen=True)
class ObjectPrompt:
    """One object to segment: clicks and/or a box, in pixels of the image as sent.

    points: [[x, y], ...]; labels: 1 foreground / 0 background per point (default: all 1);
    box: [x1, y1, x2, y2]. At least one point or the box.
    """

    points: Sequence[Sequence[float]] = ()
    labels: Sequence[int] | None = None
    box: Sequence[float] | None = None


@dataclass(frozen=True)
class EncodeResult:
    """The stored embedding's identity: pass `image_id` to segment() to skip hashing and uploading."""

    image_id: str
    width: int
    height: int
    cached: bool  # the store already held it: the model did not run
    model_id: str
    timings: dict[str, float] = field(default_factory=dict)  # server-side milliseconds per stage
    error: Sam3Error | None = None  # encode_many only: this image failed, the stream carried on


@dataclass(frozen=True)
class Mask:
    """One returned mask, kept as it arrived (COCO RLE runs, PNG or packed bits) and decoded on first use.

    `area` and `bbox` are the server's (computed from the runs): reading them decodes nothing. `mask`
    is the boolean H x W array at the original size and `rle` the pycocotools dict
    {"size": [h, w], "counts": [...]}; both are None when the request asked for mask_format="none".
    """

    index: int  # which of the decoder's 3 candidates
    iou_score: float
    bbox: tuple[int, int, int, int]  # COCO x, y, width, height
    area: int
    message: decoder_pb2.Mask = field(repr=False, compare=False)  # what arrived

    @property
    def format(self) -> str:
        """How the mask travelled: "rle", "png", "bits" or "none" (the SegmentOptions names)."""
        return _FORMAT_NAMES.get(self.message.format, "png")

    @functools.cached_property
    def mask(self) -> np.ndarray | None:
        message = self.message
        if self.format == "none":
            return None
        if self.format == "rle":
            return masks.decode_rle(message.rle.counts, message.rle.height, message.rle.width)
        if self.format == "bits":
            return masks.decode_packed_bits(message.data, message.height, message.width)
        return masks.decode_png(message.data)

    @functools.cached_property
    def rle(self) -> dict[str, Any] | None:
        if self.format == "rle":
            return {"size": [self.message.rle.height, self.message.rle.width], "counts": list(self.message.rle.counts)}
        return None if self.mask is None else masks.encode_rle(self.mask)


@dataclass(frozen=True)
class ObjectResult:
    """The result for one ObjectPrompt: the selected mask(s), all 3 IoU scores, presence probability."""

    masks: list[Mask]
    iou_scores: list[float]
    best_index: int
    presence: float  # probability the prompted object is in the image at all
    low_res_logits: np.ndarray | None = None  # [masks, 288, 288] float32, when asked for

    @property
    def mask(self) -> np.ndarray | None:
        """The first returned mask (the chosen one, unless all three were asked for)."""
        return self.masks[0].mask if self.masks else None


@dataclass(frozen=True)
class SegmentResult:
    """Masks for every object of one request, in request order."""

    image_id: str
    width: int
    height: int
    objects: list[ObjectResult]
    model_id: str
    timings: dict[str, float] = field(default_factory=dict)  # server-side milliseconds per stage
    encoded: EncodeResult | None = None  # set when the call had to Encode the image first
    request_id: str = ""  # segment_stream: the index of the request this answers, as a string
    skipped: bool = False  # segment_stream: a newer request for the same object_key superseded this one
    error: Sam3Error | None = None  # segment_stream: this request failed, the session carried on

    @property
    def mask(self) -> np.ndarray | None:
        """The first object's chosen mask: the answer of a one-object segment()."""
        return self.objects[0].mask if self.objects else None


@dataclass(frozen=True)
class ModelInfo:
    """What a decoder serves: check that encoder and decoder workers are compatible (equal model_id)."""

    model_id: str  # encoder weights + preprocessing; part of every store key
    variant: str  # "fp32", "fp16", "int8", "q4", ...
    image_size: int  # side of the square the encoder sees, e.g. 1008
    mask_size: int  # side of the low-resolution mask logits, e.g. 288
    embeddings: dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, stored dtype), in decoder input order
    server_version: str
    # "added": image_embeddings.2 includes SAM3's no-memory embedding, as SAM3 does; "absent": masks differ
    # from SAM3's own (an encoder exported from transformers' image tracker); "unknown": the folder cannot tell.
    no_memory_embedding: str


Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the (EXIF-oriented) image


@dataclass(frozen=True)
class ConceptQuery:
    """One concept: a noun phrase, example boxes, or both. An exemplar is a box (positive: "more like
    this") or a (box, positive) pair; `negative=` boxes mean "not this"."""

    text: str | None = None
    exemplars: Sequence[Box | tuple[Box, bool]] = ()

    def pairs(self) -> list[tuple[Box, bool]]:
        """Every exemplar as (box, positive)."""
        pairs = []
        for exemplar in self.exemplars:
            if len(exemplar) == 2 and isinstance(exemplar[1], bool | np.bool_):
                box, positive = exemplar
            else:
                box, positive = exemplar, True
            coordinates = tuple(float(v) for v in box)
            if len(coordinates) != 4:
                raise ValueError(f"an exemplar box is x1, y1, x2, y2; got {box!r}")
            pairs.append((coordinates, bool(positive)))
        return pairs


@dataclass(frozen=True)
class Instance:
    """One instance of a concept: its score, the model's box, and its mask as it arrived."""

    score: float  # sigmoid(logit) x presence
    box: Box  # the model's box, in original pixels (not clipped to the image)
    area: int  # mask pixels (0 with mask_format="none")
    encoded: Mask = field(repr=False, compare=False)

    @property
    def mask(self) -> np.ndarray | None:
        """Boolean H x W at the original size (None with mask_format="none")."""
        return self.encoded.mask

    @property
    def rle(self) -> dict[str, Any] | None:
        return self.encoded.rle


@dataclass(frozen=True)
class ConceptAnswer:
    """Every instance of one concept, in the model's query order."""

    text: str | None
    presence: float  # how sure the model is that the concept is in the image at all
    instances: list[Instance]
    label_png: bytes = field(default=b"", repr=False)  # with label_image=True: pixel k = instances[k - 1]

    @property
    def label_image(self) -> np.ndarray | None:
        """The label image as an array (uint8, or uint16 beyond 255 instances), when it was asked for."""
        return masks.decode_label_png(self.label_png) if self.label_png else None


@dataclass(frozen=True)
class ConceptResult:
    """The answers of one segment_concept call, one per concept, in request order."""

    image_id: str
    width: int
    height: int
    concepts: list[ConceptAnswer]
    model_id: str
    timings: dict[str, float] = field(default_factory=dict)  # server-side milliseconds per stage
    encoded: EncodeResult | None = None  # set when the call had to Encode the image first

    @property
    def instances(self) -> list[Instance]:
        """The first concept's instances: the answer of a one-concept call."""
        return self.concepts[0].instances if self.concepts else []


class ConceptOptions(TypedDict, total=False):
    """Keyword options of segment_concept (all optional).

    threshold: keep instances scoring above this, in [0, 1] (default 0.5, SAM3's usual).
    mask_format: "rle" (default), "png", "bits" or "none" (scores and boxes only).
    label_image: also return one label PNG per concept (ConceptAnswer.label_image).
    max_instances: keep at most this many instances per concept, the best scores (default: all).
    timeout: seconds for the whole call, encode included; default: the client's Deadlines.
    """

    threshold: float
    mask_format: str
    label_image: bool
    max_instances: int | None
    timeout: float | None


class SegmentOptions(TypedDict, total=False):
    """Keyword options of segment, segment_objects and segment_stream (all optional).

    mask: "best" (default: the mask with the highest predicted IoU), "all" (three, index order) or an index 0..2.
    mask_format: how masks travel: "rle" (default, compact), "png", "bits", or "none" (scores only, faster).
    low_res_logits: also return the model's 288 x 288 mask logits (ObjectResult.low_res_logits).
    timeout: seconds for the whole call, encode included (segment_stream: the whole session);
        default: the client's Deadlines.
    """

    mask: int | str
    mask_format: str
    low_res_logits: bool
    timeout: float | None


# A segment_stream request: (image, objects) or (image, objects, object_key).
StreamRequest = (
    tuple[Any, ObjectPrompt | Sequence[ObjectPrompt]] | tuple[Any, ObjectPrompt | Sequence[ObjectPrompt], str]
)


# ---------------------------------------------------------------- images


@dataclass(frozen=True)
class ImagePayload:
    """What the client sends: the encoded bytes (None when only an id was given) and its id."""

    image_id: str
    data: bytes | None


def image_payload(image: Any) -> ImagePayload:
    """Paths, bytes, PIL images, numpy arrays, or an image id (64 hex digits) -> bytes + sha256 id.

    Files and bytes travel unchanged (the server applies their EXIF orientation); PIL images and
    arrays travel as lossless PNG of exactly their pixels, as they are (no EXIF rotation).
    """
    if isinstance(image, ImagePayload):
        return image
    if isinstance(image, str) and wire.is_image_id(image) and not Path(image).exists():
        return ImagePayload(image, None)
    if isinstance(image, str | Path):
        if not Path(image).is_file():
            raise FileNotFoundError(f"image {str(image)!r} is neither a file nor an image id (64 hex digits)")
        data = Path(image).read_bytes()
    elif isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
    else:
        data = _encode_pixels(image)
    return ImagePayload(wire.image_id(data), data)


def _encode_pixels(image: Any) -> bytes:
    """PIL images and uint8 arrays (H x W, H x W x 1/3/4) -> PNG bytes the server decodes to the same pixels."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(
                f"numpy images must be uint8 (0..255), got {image.dtype}: convert first, "
                "e.g. (array * 255).round().astype(np.uint8) for floats in 0..1"
            )
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise ValueError(f"numpy images must be H x W, H x W x 3 (RGB) or H x W x 4 (RGBA), got {image.shape}")
        image = Image.fromarray(np.ascontiguousarray(image))
    if not isinstance(image, Image.Image):
        raise TypeError(
            f"expected a path, bytes, a PIL image, a numpy array or an image id, got {type(image).__name__}"
        )
    if image.mode not in _PNG_MODES:
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# ---------------------------------------------------------------- requests and results


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
    return message


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


def concept_queries(
    text: str | Sequence[str] | None, exemplars: Sequence[Any], negative: Sequence[Box]
) -> list[ConceptQuery]:
    """segment_concept's arguments as concepts: one per phrase, each with every exemplar; or one of
    exemplars only when no phrase is given."""
    boxes = [*exemplars, *((tuple(box), False) for box in negative)]
    phrases = [text] if isinstance(text, str) else list(text or [])
    if not phrases and not boxes:
        raise ValueError("give text (a phrase or a list of phrases), exemplars, or both")
    return [ConceptQuery(phrase, boxes) for phrase in phrases] if phrases else [ConceptQuery(None, boxes)]


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
    )
    if max_instances is not None:
        request.max_instances = max_instances
    for concept in concepts:
        message = request.concepts.add(text=concept.text or "")
        for (x1, y1, x2, y2), positive in concept.pairs():
            label = decoder_pb2.EXEMPLAR_LABEL_POSITIVE if positive else decoder_pb2.EXEMPLAR_LABEL_NEGATIVE
            message.exemplars.add(box=decoder_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2), label=label)
    return request


def _mask(m: decoder_pb2.Mask) -> Mask:
    return Mask(m.index, m.iou_score, (m.bbox.x, m.bbox.y, m.bbox.width, m.bbox.height), m.area, m)


def concept_result(response: decoder_pb2.SegmentConceptResponse, encoded: EncodeResult | None = None) -> ConceptResult:
    answers = [
        ConceptAnswer(
            concept.text or None,
            concept.presence,
            [
                Instance(i.score, (i.box.x1, i.box.y1, i.box.x2, i.box.y2), i.mask.area, _mask(i.mask))
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


def _object_result(obj: decoder_pb2.ObjectResult) -> ObjectResult:
    logits = None
    if obj.HasField("low_res_logits"):
        shape = (obj.low_res_logits.count, obj.low_res_logits.height, obj.low_res_logits.width)
        logits = np.frombuffer(obj.low_res_logits.data, "<f4").reshape(shape)
    masks = [_mask(m) for m in obj.masks]
    return ObjectResult(masks, list(obj.iou_scores), obj.best_index, obj.presence_probability, logits)


def segment_result(response: decoder_pb2.SegmentResponse, encoded: EncodeResult | None = None) -> SegmentResult:
    return SegmentResult(
        response.image_id,
        response.width,
        response.height,
        [_object_result(obj) for obj in response.objects],
        response.model_id,
        dict(response.timings.milliseconds),
        encoded,
        response.request_id,
        response.skipped,
        Sam3Error.from_item(response.error) if response.HasField("error") else None,
    )


def encode_request(
    payload: ImagePayload, *, force: bool = False, request_id: str = "", prewarm: bool = False
) -> encoder_pb2.EncodeRequest:
    if payload.data is None:
        raise ValueError(f"image {payload.image_id} is only an id: pass the image itself to encode it")
    return encoder_pb2.EncodeRequest(image=payload.data, force=force, request_id=request_id, prewarm=prewarm)


def encode_result(response: encoder_pb2.EncodeResponse) -> EncodeResult:
    return EncodeResult(
        response.image_id,
        response.width,
        response.height,
        response.cached,
        response.model_id,
        dict(response.timings.milliseconds),
        Sam3Error.from_item(response.error) if response.HasField("error") else None,
    )


# ---------------------------------------------------------------- flows


Flow = Generator[Call, Any, T]


class Steps(Generic[T]):
    """Runs a flow one rpc at a time; the clients' only job is to make each rpc:

    steps = Steps(flow)
    for call in steps:                      # the next rpc the flow needs
        sleep(steps.pause)                  # > 0 only before repeating a call the worker was too busy for
        with steps.answer():                # an RpcError is thrown into the flow as a Sam3Error
            steps.send(make_the_rpc(call))  # the response goes back into the flow
    return steps.result
    """

    def __init__(self, flow: Flow[T]) -> None:
        self._flow = flow
        self._call: Call | None = None
        self._retry: BusyRetry | None = None
        self._result: T | None = None
        self.pause = 0.0
        self._advance(None, None)

    def __iter__(self) -> Iterator[Call]:
        while self._call is not None:
            yield self._call

    def send(self, reply: Any) -> None:
        self._advance(reply, None)

    @contextmanager
    def answer(self) -> Iterator[None]:
        try:
            yield
        except grpc.RpcError as rpc_error:
            error = Sam3Error.from_rpc(rpc_error)
        else:
            return
        again = self._retry.after(error) if self._retry is not None else None
        if again is not None:
            self.pause, self._call = again
            return
        try:
            self._advance(None, error)
        except Sam3Error as final:
            raise final from None  # the RpcError behind it says nothing more

    @property
    def result(self) -> T:
        return cast(T, self._result)

    def _advance(self, reply: Any, error: Sam3Error | None) -> None:
        self.pause = 0.0
        try:
            self._call = self._flow.send(reply) if error is None else self._flow.throw(error)
        except StopIteration as done:
            self._call, self._result = None, done.value
        self._retry = BusyRetry(self._call) if self._call is not None else None


@contextmanager
def stream_errors(call: Any) -> Iterator[None]:
    """Around reading a streaming call: RpcError -> Sam3Error, and the call cancelled if the reader stops early."""
    try:
        yield
    except grpc.RpcError as error:
        raise Sam3Error.from_rpc(error) from None
    finally:
        call.cancel()


def stream_deadline(timeout: float | None, deadlines: Deadlines) -> float:
    return deadlines.stream if timeout is None else timeout


class Budget:
    """The deadline of one user-level call that may need several rpcs (segment -> encode -> segment).

    With `timeout=None` each rpc gets its own default deadline; with a timeout they share it.
    """

    def __init__(self, timeout: float | None) -> None:
        self._end = None if timeout is None else time.monotonic() + timeout

    def left(self, default: float) -> float:
        if self._end is None:
            return default
        left = self._end - time.monotonic()
        if left <= 0:
            raise Sam3Error(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's timeout expired between its rpcs")
        return left


def encode_flow(
    image: Any,
    deadlines: Deadlines,
    *,
    force: bool = False,
    prefetch: bool = False,
    timeout: float | None = None,
    prewarm: bool = False,
) -> Flow[EncodeResult]:
    """Encode; with `prefetch`, then warm the decoder replica the image's clicks will reach (best effort:
    a failed prefetch only means the first click fetches from the store itself)."""
    budget = Budget(timeout)
    request = encode_request(image_payload(image), force=force, prewarm=prewarm)
    result = encode_result((yield Call("encode", request, budget.left(deadlines.encode))))
    if prefetch:
        with suppress(Sam3Error):
            yield Call(
                "prefetch", decoder_pb2.PrefetchRequest(image_id=result.image_id), budget.left(deadlines.segment)
            )
    return result


def segment_flow(
    image: Any, objects: Sequence[ObjectPrompt], deadlines: Deadlines, **options: Unpack[SegmentOptions]
) -> Flow[SegmentResult]:
    """Segment; on NOT_FOUND with the image at hand, Encode it and Segment again (one user call)."""
    payload = image_payload(image)
    request = segment_request(payload.image_id, objects, **options)
    call = Call("segment", request, deadlines.segment)
    response, encoded = yield from _encode_on_miss(payload, call, deadlines, Budget(options.get("timeout")))
    return segment_result(response, encoded)


def concept_flow(
    image: Any, concepts: Sequence[ConceptQuery], deadlines: Deadlines, **options: Unpack[ConceptOptions]
) -> Flow[ConceptResult]:
    """SegmentConcept; on NOT_FOUND with the image at hand, Encode it and ask again (one user call)."""
    payload = image_payload(image)
    call = Call("segment_concept", concept_request(payload.image_id, concepts, **options), deadlines.concept)
    response, encoded = yield from _encode_on_miss(payload, call, deadlines, Budget(options.get("timeout")))
    return concept_result(response, encoded)


def _encode_on_miss(
    payload: ImagePayload, call: Call, deadlines: Deadlines, budget: Budget
) -> Generator[Call, Any, tuple[Any, EncodeResult | None]]:
    """`call`'s response; if the image is not stored and we have its bytes, Encode it and call again."""
    try:
        return (yield replace(call, timeout=budget.left(call.timeout))), None
    except Sam3Error as error:
        if not error.is_not_encoded:
            raise
        if payload.data is None:
            raise error.with_message(
                f"image {payload.image_id} is not in the store and only its id was given: pass the image itself "
                f"(a path, bytes, a PIL image or an array) so the client can encode it ({error.message})"
            ) from None
    encoded = encode_result((yield Call("encode", encode_request(payload), budget.left(deadlines.encode))))
    try:
        return (yield replace(call, timeout=budget.left(call.timeout))), encoded
    except Sam3Error as error:
        if not error.is_not_encoded:
            raise
        if call.method == "segment_concept":
            raise error.with_message(
                f"the encoder stored image {payload.image_id} under model {encoded.model_id}, yet the decoder finds "
                "no concept features for it: the encoders must store them (a folder from `sam3 models export` and "
                f"--concepts on), and share the Redis store and key prefix with the decoders ({error.message})"
            ) from None
        raise error.with_message(
            f"the encoder stored image {payload.image_id} under model {encoded.model_id}, yet the decoder cannot "
            f"find it: do both workers share the Redis store, key prefix and model? ({error.message})"
        ) from None


def info_flow(deadlines: Deadlines, timeout: float | None) -> Flow[ModelInfo]:
    info: common_pb2.ModelInfo = yield Call(
        "info", common_pb2.GetModelInfoRequest(), Budget(timeout).left(deadlines.info)
    )
    return ModelInfo(
        info.model_id,
        info.variant,
        info.image_size,
        info.mask_size,
        {spec.name: (tuple(spec.shape), spec.dtype) for spec in info.embeddings},
        info.server_version,
        common_pb2.NoMemoryEmbedding.Name(info.no_memory_embedding).removeprefix("NO_MEMORY_EMBEDDING_").lower(),
    )


def _prompts(objects: ObjectPrompt | Sequence[ObjectPrompt]) -> Sequence[ObjectPrompt]:
    return [objects] if isinstance(objects, ObjectPrompt) else objects


class Session:
    """One segment_stream: numbers its requests and encodes each new image (not ids) once before use."""

    def __init__(self, deadlines: Deadlines, options: SegmentOptions) -> None:
        self._deadlines = deadlines
        self.timeout = stream_deadline(options.get("timeout"), deadlines)
        self._options = options
        self._ready: set[str] = set()
        self._count = itertools.count()

    def request_flow(self, item: StreamRequest) -> Flow[decoder_pb2.SegmentRequest]:
        image, objects, *key = item
        payload = image_payload(image)
        if payload.data is not None and payload.image_id not in self._ready:
            yield from encode_flow(payload, self._deadlines)  # no prefetch: a stream has one replica anyway
            self._ready.add(payload.image_id)
        return segment_request(
            payload.image_id,
            _prompts(objects),
            request_id=str(next(self._count)),
            object_key=str(key[0]) if key else "",
            **self._options,
        )


class Batch:
    """One encode_many: numbers its requests (request_id = position in the input)."""

    def __init__(self, force: bool) -> None:
        self._force = force
        self._count = itertools.count()

    def request(self, image: Any) -> encoder_pb2.EncodeRequest:
        return encode_request(image_payload(image), force=self._force, request_id=str(next(self._count)))


class Feed:
    """The request side of a streaming call.

    A failure while producing requests (an unreadable file, a bad prompt) ends the request stream
    cleanly and is raised to the reader once the answers to the earlier requests are in, instead
    of gRPC logging it and cancelling the whole call.
    """

    def __init__(self) -> None:
        self.error: Exception | None = None

    def wrap(self, requests: Iterable[T]) -> Iterator[T]:
        try:
            yield from requests
        except Exception as error:
            self.error = error

    async def wrap_async(self, requests: AsyncIterable[T]) -> AsyncIterator[T]:
        try:
            async for request in requests:
                yield request
        except Exception as error:
            self.error = error

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error
