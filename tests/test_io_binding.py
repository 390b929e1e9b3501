"""The GPU path's code, run on the CPU provider: I/O binding and device-resident cached embeddings.

On a GPU the same code binds CUDA OrtValues (scripts/gpu-check.sh runs the parity tests there); here
it must give exactly the plain session's answer, and the decoder's cache must hold device tensors.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest

import references
from decoder_service.cache import LocalCache
from decoder_service.servicer import DecoderServicer
from sam3_client import ObjectPrompt
from sam3_client._messages import segment_request
from sam3_core.model import DeviceTensor, RuntimeOptions, Sam3Model
from sam3_core.predictor import decode, encode
from sam3_core.prompts import Prompt
from sam3_serving.store import EMBEDDINGS, StoreConfig, ValueStore


@pytest.fixture(scope="module")
def bound_model() -> Sam3Model:
    """The CPU provider here; on a GPU machine (scripts/gpu-check.sh) "auto" picks CUDA and binds device memory."""
    return Sam3Model(references.MODEL_DIR, runtime=RuntimeOptions(io_binding=True))


def test_auto_binds_only_on_an_accelerator() -> None:
    plain = Sam3Model(references.MODEL_DIR, runtime=RuntimeOptions(providers=("CPUExecutionProvider",)))
    assert not plain.io_binding and plain.decoder_device == ("cpu", 0)


def test_bound_decoder_on_device_tensors_equals_the_plain_session(bound_model: Sam3Model) -> None:
    plain = Sam3Model(references.MODEL_DIR, runtime=RuntimeOptions(providers=("CPUExecutionProvider",)))
    rgb = np.random.default_rng(3).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    embeddings = encode(plain, rgb)
    on_device = bound_model.decoder_embeddings(embeddings.astype(np.float16))  # as a float16 store returns them
    assert all(isinstance(t, DeviceTensor) and t.device == bound_model.decoder_device[0] for t in on_device.tensors)
    prepared = plain.decoder_embeddings(embeddings.astype(np.float16).astype(np.float32))  # host arrays
    assert on_device.nbytes == prepared.nbytes and on_device.tensors[0].dtype == np.float32
    prompts = [Prompt.of([[100, 120]]), Prompt.of(box=[50, 40, 300, 250]), Prompt.of([[10, 10], [390, 290]], [1, 0])]
    reference = decode(plain, embeddings.astype(np.float16).astype(np.float32), prompts)
    for want, got in zip(reference, decode(bound_model, on_device, prompts), strict=True):
        np.testing.assert_array_equal(got.low_res_logits, want.low_res_logits)
        np.testing.assert_array_equal(got.iou_scores, want.iou_scores)
    for device_tensor, host in zip(on_device.tensors, prepared.tensors, strict=True):
        np.testing.assert_array_equal(device_tensor.numpy(), host)


def test_the_decoder_caches_device_tensors_and_answers_from_them(bound_model: Sam3Model, redis_url: str) -> None:
    prefix = f"iobind-{uuid.uuid4().hex[:8]}"
    store = ValueStore(StoreConfig(url=redis_url, key_prefix=prefix, dtype="float16"), bound_model.model_id)
    servicer = DecoderServicer(bound_model, store, LocalCache(1 << 30))
    rgb = np.random.default_rng(5).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    embeddings = encode(bound_model, rgb)
    image_id = "ab" * 32
    store.put(EMBEDDINGS, image_id, embeddings)
    request = segment_request(image_id, [ObjectPrompt([[20, 30]])], mask="all", mask_format="bits")
    try:
        first = servicer.Segment(request, None)
        cached = servicer.cache.get(store.key(EMBEDDINGS, image_id))
        assert cached is not None and all(isinstance(t, DeviceTensor) for t in cached.tensors)
        second = servicer.Segment(request, None)  # bound straight from the cache
    finally:
        store.delete(EMBEDDINGS, image_id)
        store.close()
    (expected,) = decode(bound_model, embeddings.astype(np.float16).astype(np.float32), [Prompt.of([[20, 30]])])
    for response in (first, second):
        assert [m.iou_score for m in response.objects[0].masks] == pytest.approx(expected.iou_scores.tolist())
        for mask in response.objects[0].masks:
            bits = np.unpackbits(np.frombuffer(mask.data, np.uint8), count=240 * 320).reshape(240, 320)
            np.testing.assert_array_equal(bits.astype(bool), expected.mask(mask.index))
