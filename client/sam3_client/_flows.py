"""What each client method does, written once for `Client` and `AsyncClient` as a flow (see `_steps`).

E.g. Segment -> NOT_FOUND -> Encode -> Segment is one user call, whichever client runs it. A new
call (a video session, say) is a flow here, built from the messages of `_messages`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Generator, Sequence
from contextlib import suppress
from typing import Any, Unpack

import grpc

from sam3_client._images import ImagePayload, image_payload
from sam3_client._messages import (
    concept_request,
    concept_result,
    encode_request,
    encode_result,
    model_info,
    segment_request,
    segment_result,
)
from sam3_client._prompts import (
    ConceptOptions,
    ConceptQuery,
    ObjectPrompt,
    SegmentOptions,
    StreamRequest,
    object_prompts,
)
from sam3_client._results import ConceptResult, EncodeResult, ModelInfo, ObjectResult, SegmentResult
from sam3_client._rpcs import Call, Deadlines, Rpc
from sam3_client._steps import Flow
from sam3_client.errors import Sam3Error
from sam3_client.proto import common_pb2, decoder_pb2, encoder_pb2


class Budget:
    """The deadline of one user-level call that may need several rpcs (segment -> encode -> segment).

    With `timeout=None` each rpc gets its own default deadline (`Deadlines`); with a timeout they share it.
    """

    def __init__(self, deadlines: Deadlines, timeout: float | None) -> None:
        self._deadlines = deadlines
        self._end = None if timeout is None else time.monotonic() + timeout

    def call(self, rpc: Rpc, request: Any) -> Call:
        """`rpc` with `request`, due when the user's call is (or within the rpc's default deadline)."""
        if self._end is None:
            return Call(rpc, request, self._deadlines.of(rpc))
        left = self._end - time.monotonic()
        if left <= 0:
            raise Sam3Error(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's timeout expired between its rpcs")
        return Call(rpc, request, left)


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
    budget = Budget(deadlines, timeout)
    request = encode_request(image_payload(image), force=force, prewarm=prewarm)
    result = encode_result((yield budget.call(Rpc.ENCODE, request)))
    if prefetch:
        with suppress(Sam3Error):
            yield budget.call(Rpc.PREFETCH, decoder_pb2.PrefetchRequest(image_id=result.image_id))
    return result


def segment_flow(
    image: Any, objects: Sequence[ObjectPrompt], deadlines: Deadlines, **options: Unpack[SegmentOptions]
) -> Flow[SegmentResult]:
    """Segment; on NOT_FOUND with the image at hand, Encode it and Segment again (one user call)."""
    payload = image_payload(image)
    request = segment_request(payload.image_id, objects, **options)
    budget = Budget(deadlines, options.get("timeout"))
    lost = "cannot find it: do both workers share the Redis store, key prefix and model?"
    response, encoded = yield from _encode_on_miss(payload, Rpc.SEGMENT, request, budget, lost)
    return segment_result(response, encoded, objects, options)


def refine_flow(
    previous: ObjectResult,
    deadlines: Deadlines,
    points: Sequence[Sequence[float]] = (),
    labels: Sequence[int] | None = None,
    box: Sequence[float] | None = None,
    **options: Unpack[SegmentOptions],
) -> Flow[ObjectResult]:
    """The object of `previous` again: its clicks plus `points`, its box (or `box`), and its answer's mask as
    mask input: the logits it returned (low_res_logits=True), else the ones the worker remembered under its
    object_key. Options default to the previous call's."""
    prompt = previous.prompt
    if prompt is None or not previous.image_id:
        raise ValueError("refine() takes an object of what segment(), segment_objects() or refine() returned")
    logits = previous.chosen_logits
    if logits is None and not prompt.object_key:
        raise ValueError(
            "nothing to refine from: segment with object_key=... (the worker remembers the mask for a few minutes) "
            "or with low_res_logits=True (the mask's logits come back with the answer)"
        )
    added = [list(point) for point in points]
    added_labels = list(labels) if labels is not None else [1] * len(added)
    if len(added_labels) != len(added):
        raise ValueError(f"{len(added_labels)} labels for {len(added)} points")
    earlier_labels = list(prompt.labels) if prompt.labels is not None else [1] * len(prompt.points)
    again = ObjectPrompt(
        points=[*(list(point) for point in prompt.points), *added],
        labels=[*earlier_labels, *added_labels],
        box=prompt.box if box is None else box,
        mask_input="previous" if logits is None else logits,
        object_key=prompt.object_key,
    )
    merged = SegmentOptions(**previous.options)
    merged.update(options)
    result = yield from segment_flow(previous.image_id, [again], deadlines, **merged)
    return result.objects[0]


def concept_flow(
    image: Any, concepts: Sequence[ConceptQuery], deadlines: Deadlines, **options: Unpack[ConceptOptions]
) -> Flow[ConceptResult]:
    """SegmentConcept; on NOT_FOUND with the image at hand, Encode it and ask again (one user call)."""
    payload = image_payload(image)
    request = concept_request(payload.image_id, concepts, **options)
    budget = Budget(deadlines, options.get("timeout"))
    response, encoded = yield from _encode_on_miss(
        payload,
        Rpc.SEGMENT_CONCEPT,
        request,
        budget,
        "finds no concept features for it: the encoders must store them (a folder from `sam3 models export` and "
        "--concepts on), and share the Redis store and key prefix with the decoders",
    )
    return concept_result(response, encoded)


def _encode_on_miss(
    payload: ImagePayload, rpc: Rpc, request: Any, budget: Budget, still_missing: str
) -> Generator[Call, Any, tuple[Any, EncodeResult | None]]:
    """`rpc`'s response; if the image is not stored and we have its bytes, Encode it and ask again.

    `still_missing`: what the decoder lacks, and why, when it still misses the image after the encode.
    """
    try:
        return (yield budget.call(rpc, request)), None
    except Sam3Error as error:
        if not error.is_not_encoded:
            raise
        if payload.data is None:
            raise error.with_message(
                f"image {payload.image_id} is not in the store and only its id was given: pass the image itself "
                f"(a path, bytes, a PIL image or an array) so the client can encode it ({error.message})"
            ) from None
    encoded = encode_result((yield budget.call(Rpc.ENCODE, encode_request(payload))))
    try:
        return (yield budget.call(rpc, request)), encoded
    except Sam3Error as error:
        if not error.is_not_encoded:
            raise
        raise error.with_message(
            f"the encoder stored image {payload.image_id} under model {encoded.model_id}, yet the decoder "
            f"{still_missing} ({error.message})"
        ) from None


def info_flow(deadlines: Deadlines, timeout: float | None) -> Flow[ModelInfo]:
    return model_info((yield Budget(deadlines, timeout).call(Rpc.MODEL_INFO, common_pb2.GetModelInfoRequest())))


class Session:
    """One segment_stream: numbers its requests and encodes each new image (not ids) once before use."""

    def __init__(self, deadlines: Deadlines, options: SegmentOptions) -> None:
        self._deadlines = deadlines
        self._budget = Budget(deadlines, options.get("timeout"))
        self._options = options
        self._ready: set[str] = set()
        self._count = itertools.count()
        self._asked: dict[str, Sequence[ObjectPrompt]] = {}  # request_id -> its objects, until answered

    def call(self, requests: Any) -> Call:
        """The SegmentStream call carrying `requests` (what `request_flow` made), for the whole session."""
        return self._budget.call(Rpc.SEGMENT_STREAM, requests)

    def request_flow(self, item: StreamRequest) -> Flow[decoder_pb2.SegmentRequest]:
        image, objects, *key = item
        payload = image_payload(image)
        if payload.data is not None and payload.image_id not in self._ready:
            yield from encode_flow(payload, self._deadlines)  # no prefetch: a stream has one replica anyway
            self._ready.add(payload.image_id)
        request_id = str(next(self._count))
        self._asked[request_id] = object_prompts(objects)
        return segment_request(
            payload.image_id,
            self._asked[request_id],
            request_id=request_id,
            object_key=str(key[0]) if key else "",
            **self._options,
        )

    def result(self, response: decoder_pb2.SegmentResponse, *, target: str | None = None) -> SegmentResult:
        """One answer of the stream (from `target`), its objects refinable like segment()'s."""
        asked = self._asked.pop(response.request_id, ())
        return segment_result(response, None, asked, self._options, target=target)


class Batch:
    """One encode_many: numbers its requests (request_id = position in the input)."""

    def __init__(self, deadlines: Deadlines, force: bool, timeout: float | None) -> None:
        self._budget = Budget(deadlines, timeout)
        self._force = force
        self._count = itertools.count()

    def call(self, requests: Any) -> Call:
        """The EncodeBatch call carrying `requests` (what `request` made), for the whole batch."""
        return self._budget.call(Rpc.ENCODE_BATCH, requests)

    def request(self, image: Any) -> encoder_pb2.EncodeRequest:
        return encode_request(image_payload(image), force=self._force, request_id=str(next(self._count)))
