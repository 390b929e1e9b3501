"""Bad cache state never reaches a caller: every bad value is a miss + delete + re-encode, never INTERNAL,
never another image's mask; `Encode(force=true)` reaches every decoder's local copy.

Real workers on loopback, a real Redis; the bad values are written with a plain Redis client, as a
buggy or hostile writer (or bit rot) would leave them. "Right mask" means exactly what an in-process
Predictor computes for the image and the click.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from functools import cache

import grpc
import numpy as np
import pytest
import redis

from sam3_client import Client, Sam3Error
from sam3_client.proto import decoder_pb2, decoder_pb2_grpc
from sam3_core.embeddings import ImageEmbeddings, serialize
from sam3_core.predictor import Predictor
from sam3_serving.outcome import Outcome
from sam3_serving.store import EMBEDDINGS, ValueStore
from service_stack import reference_mask, running, shared_model
from test_service_behaviour import counter, new_image, prefix

CLICK = [[7, 5]]
A_SIZE, B_SIZE = (64, 48), (40, 56)  # (width, height): different on purpose, so a swap shows


@cache
def image(name: str) -> bytes:
    return new_image({"a": 300, "b": 301}[name], A_SIZE if name == "a" else B_SIZE)


@cache
def embeddings_of(name: str) -> ImageEmbeddings:
    return Predictor(shared_model()).set_image(image(name))


@cache
def expected_mask(name: str) -> np.ndarray:
    return reference_mask(image(name), CLICK)


def image_id(name: str) -> str:
    from hashlib import sha256

    return sha256(image(name)).hexdigest()


def key(store: ValueStore, name: str) -> str:
    return store.key(EMBEDDINGS, image_id(name))  # a key names the kind, not the shapes


def stored(embeddings: ImageEmbeddings, name: str) -> bytes:
    """The bytes an encoder writes for these embeddings under the name's image id."""
    return serialize(EMBEDDINGS.stored(embeddings, embeddings.model_id, image_id(name)))


def another_images_value(store: ValueStore, raw: redis.Redis) -> None:
    """Image B's valid value, copied under A's key."""
    raw.set(key(store, "a"), stored(embeddings_of("b"), "b"))


def wrong_shapes(store: ValueStore, raw: redis.Redis) -> None:
    """A valid checksum, A's ids, tensors the model cannot take."""
    tensors = tuple(t[:, :, :-1] for t in embeddings_of("a").tensors)
    raw.set(key(store, "a"), stored(ImageEmbeddings(tensors, (48, 64), store.model_id), "a"))


def corrupted_width(store: ValueStore, raw: redis.Redis) -> None:
    raw.set(key(store, "a"), stored(embeddings_of("a"), "a"))
    raw.setrange(key(store, "a"), 12, struct.pack("<I", 0xFFFFFFF0))


def wrong_type(store: ValueStore, raw: redis.Redis) -> None:
    raw.delete(key(store, "a"))
    raw.hset(key(store, "a"), "field", "value")


BAD_VALUES: dict[str, Callable[[ValueStore, redis.Redis], None]] = {
    "another image's value": another_images_value,
    "wrong tensor shapes": wrong_shapes,
    "corrupted width": corrupted_width,
    "wrong Redis type": wrong_type,
}


@pytest.mark.parametrize("plant", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_a_bad_value_is_a_miss_deleted_and_re_encoded(redis_url: str, plant: Callable) -> None:
    raw = redis.Redis.from_url(redis_url)
    namespace = prefix()
    with running(redis_url, namespace) as stack, Client(stack.target) as client:
        # Encode answers "not cached" (it re-encodes) instead of trusting the header.
        plant(stack.store, raw)
        encoded = client.encode(image("a"))
        assert not encoded.cached and (encoded.width, encoded.height) == A_SIZE
        assert stack.store.get(stack.embeddings, image_id("a")).outcome == Outcome.REDIS

    # A decoder with a fresh local cache: NOT_FOUND (the value is deleted), never INTERNAL or B's mask.
    plant(stack.store, raw)
    with running(redis_url, namespace) as stack, grpc.insecure_channel(stack.target) as channel:
        corrupt_before = counter("sam3_embedding_lookups_total", result="corrupt")
        request = decoder_pb2.SegmentRequest(
            image_id=image_id("a"),
            objects=[
                decoder_pb2.ObjectPrompt(points=[decoder_pb2.Point(x=7, y=5, label=decoder_pb2.POINT_LABEL_FOREGROUND)])
            ],
            selection=decoder_pb2.MASK_SELECTION_BEST,
            mask_format=decoder_pb2.MASK_FORMAT_RLE,
        )
        with pytest.raises(grpc.RpcError) as failure:
            decoder_pb2_grpc.DecoderServiceStub(channel).Segment(request, timeout=10)
        assert failure.value.code() == grpc.StatusCode.NOT_FOUND
        assert counter("sam3_embedding_lookups_total", result="corrupt") == corrupt_before + 1
        assert raw.exists(key(stack.store, "a")) == 0
        # The SDK re-encodes on NOT_FOUND; the answer is A's, exactly.
        with Client(stack.target) as client:
            result = client.segment(image("a"), points=CLICK)
        assert (result.width, result.height) == A_SIZE
        np.testing.assert_array_equal(result.objects[0].mask, expected_mask("a"))
    raw.close()


def test_force_reaches_every_decoders_local_cache(redis_url: str) -> None:
    """Two decoders cached a value that passes every check but is wrong (B's tensors labelled as A, as a
    buggy encoder could write); one forced re-encode replaces it in Redis and in both local caches."""
    raw = redis.Redis.from_url(redis_url)
    namespace = prefix()
    with (
        running(redis_url, namespace) as encoder,
        running(redis_url, namespace) as decoder_1,
        running(redis_url, namespace) as decoder_2,
    ):
        wrong = ImageEmbeddings(embeddings_of("b").tensors, (48, 64), encoder.store.model_id)
        raw.set(key(encoder.store, "a"), stored(wrong, "a"))
        clients = [Client(stack.target) for stack in (decoder_1, decoder_2)]
        for client in clients:
            client.segment(image_id("a"), points=CLICK)  # now in each decoder's local cache
        local_before = counter("sam3_embedding_lookups_total", result="local")
        stale = [client.segment(image_id("a"), points=CLICK).objects[0].mask for client in clients]
        assert counter("sam3_embedding_lookups_total", result="local") == local_before + 2
        assert not all(np.array_equal(mask, expected_mask("a")) for mask in stale)  # the planted value shows

        with Client(encoder.target) as client:
            assert not client.encode(image("a"), force=True).cached
        started = time.monotonic()
        for client in clients:
            while not np.array_equal(client.segment(image_id("a"), points=CLICK).objects[0].mask, expected_mask("a")):
                assert time.monotonic() - started < 5, "a decoder kept serving its stale local copy"
                time.sleep(0.02)
            client.close()
    raw.close()


def test_image_ids_need_a_full_match(redis_url: str) -> None:
    """`$` matches before a trailing newline: ids are checked with a full match, server and SDK."""
    from sam3_client._images import image_payload

    good = "a" * 64
    with running(redis_url, prefix()) as stack, grpc.insecure_channel(stack.target) as channel:
        for bad in (good + "\n", good + "\r\n", "\n" + good, good.upper()):
            request = decoder_pb2.SegmentRequest(
                image_id=bad,
                objects=[
                    decoder_pb2.ObjectPrompt(
                        points=[decoder_pb2.Point(x=1, y=1, label=decoder_pb2.POINT_LABEL_FOREGROUND)]
                    )
                ],
                selection=decoder_pb2.MASK_SELECTION_BEST,
                mask_format=decoder_pb2.MASK_FORMAT_RLE,
            )
            with pytest.raises(grpc.RpcError) as failure:
                decoder_pb2_grpc.DecoderServiceStub(channel).Segment(request, timeout=10)
            assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert Sam3Error.from_rpc(failure.value).metadata["field"] == "image_id"
    assert image_payload(good).data is None  # an id, sent as it is
    with pytest.raises(FileNotFoundError):
        image_payload(good + "\n")  # not an id, and no such file
