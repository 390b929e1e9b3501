"""The fault suite's video sessions: a real `sam3 serve` on the tiny video model, hostile and broken TrackerService
calls (random fields, mutated bodies, streams cut short), only documented codes back, no traceback in its log,
and the same masks afterwards."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest

import tracking_fleet as video
from sam3_client import Client, Reason, Sam3Error
from sam3_client.proto import decoder_pb2, tracker_pb2
from sam3_serving.worker_process import WorkerProcess
from test_reliability import _CODES, _HOSTILE_NUMBERS, FUZZ_SEED, _either, _mutate

SERVICE = "/sam3.v1.TrackerService/"
# Every code TrackerService answers a bad or hostile call with (docs/reliability.md).
DOCUMENTED = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED"}
UNARY = {
    "CreateSession": tracker_pb2.CreateSessionResponse,
    "AddPrompt": tracker_pb2.AddPromptResponse,
    "RemoveObject": tracker_pb2.RemoveObjectResponse,
    "ClearPrompts": tracker_pb2.ClearPromptsResponse,
    "DescribeSession": tracker_pb2.DescribeSessionResponse,
    "CloseSession": tracker_pb2.CloseSessionResponse,
}


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    worker = WorkerProcess("serve", "--model-dir", str(video.VIDEO_MODEL_DIR), "--log-level", "WARNING")
    try:
        yield worker.target
    finally:
        worker.stop(timeout=20)
    assert "Traceback" not in worker.output(), worker.output()[-4000:]


def _fuzz(rng: random.Random, method: str, sessions: list[str], frame_ids: list[str]) -> bytes:
    def number(usual: Callable[[], object]) -> object:
        return _either(rng, usual, lambda: rng.choice([-1, 1 << 30, -(1 << 31)]))

    session_id = _either(rng, lambda: rng.choice(sessions), lambda: rng.choice(["", "0" * 32, "x" * 40]))
    fmt = _either(rng, lambda: rng.choice([1, 2, 3, 4, 5]), lambda: rng.choice([0, 77]))
    message: object
    if method == "CreateSession":
        ids = _either(
            rng, lambda: frame_ids[: rng.randint(1, len(frame_ids))], lambda: ["", "0" * 64, frame_ids[0].upper()]
        )
        message = tracker_pb2.CreateSessionRequest(frame_ids=ids, width=number(lambda: 0), height=number(lambda: 0))  # type: ignore[arg-type]
    elif method == "AddPrompt":
        coordinate = lambda limit: _either(rng, lambda: rng.uniform(0, limit), lambda: rng.choice(_HOSTILE_NUMBERS))  # noqa: E731
        points = [
            decoder_pb2.Point(
                x=coordinate(63.9), y=coordinate(47.9), label=_either(rng, lambda: rng.choice([1, 2]), lambda: 0)
            )
            for _ in range(rng.randint(0, 3))
        ]
        message = tracker_pb2.AddPromptRequest(
            session_id=session_id,
            frame_index=number(lambda: rng.randint(0, video.FRAMES)),
            object_id=number(lambda: rng.randint(0, 3)),
            points=points,
            mask_format=fmt,  # type: ignore[arg-type]
        )
        if rng.random() < 0.2:
            message.box.CopyFrom(
                decoder_pb2.Box(x1=coordinate(30), y1=coordinate(20), x2=coordinate(63.9), y2=coordinate(47.9))
            )
        if rng.random() < 0.1:
            message.mask.CopyFrom(
                decoder_pb2.RleMask(counts=[rng.randint(0, 4000) for _ in range(3)], height=48, width=64)
            )
        if rng.random() < 0.2:
            message.expected_revision = rng.randint(0, 5)
    elif method == "Propagate":
        message = tracker_pb2.PropagateRequest(
            session_id=session_id,
            direction=_either(rng, lambda: rng.choice([1, 2, 3]), lambda: rng.choice([0, 9])),
            mask_format=fmt,
            object_ids=rng.choice([[], [1], [7]]),
        )
        if rng.random() < 0.3:
            message.max_frames = number(lambda: rng.randint(0, 3))  # type: ignore[assignment]
        if rng.random() < 0.1:
            message.resume_propagation_id = rng.choice(["", "abc", "0" * 16])
    else:
        kind = {"RemoveObject": tracker_pb2.RemoveObjectRequest, "ClearPrompts": tracker_pb2.ClearPromptsRequest}
        fields = {"object_id": number(lambda: rng.randint(0, 3))} if method == "RemoveObject" else {}
        if method == "ClearPrompts":
            fields = {"frame_index": number(lambda: rng.randint(0, video.FRAMES))}
        request_type = kind.get(method) or (
            tracker_pb2.DescribeSessionRequest if method == "DescribeSession" else tracker_pb2.CloseSessionRequest
        )
        message = request_type(session_id=session_id, **fields)
    return _mutate(rng, message.SerializeToString())  # type: ignore[attr-defined]


@pytest.mark.fault
def test_fuzzing_the_tracker_gives_only_documented_codes_and_the_same_masks(served: str) -> None:
    rng = random.Random(FUZZ_SEED)
    with Client(served) as client:
        frame_ids = [client.encode(data).image_id for data in video.frames()]
        sessions = [client.video_session(frame_ids) for _ in range(2)]
        reference = sessions[0].add_prompt(0, 1, points=[(20.0, 24.0)]).masks()[1]
    ids = [s.session_id for s in sessions]
    reasons: Counter[tuple[str, str, Reason | None]] = Counter()
    with grpc.insecure_channel(served) as channel:
        for _ in range(240):
            # closing is rare: a closed session answers every later call NOT_FOUND, which tests little
            method = (
                "CloseSession" if rng.random() < 0.02 else rng.choice([*UNARY][:-1] + ["AddPrompt", "Propagate"] * 2)
            )
            body = _fuzz(rng, method, ids, frame_ids)
            try:
                if method == "Propagate":
                    call = channel.unary_stream(SERVICE + method)(body, timeout=30)
                    for _ in zip(range(rng.randint(0, 3)), call, strict=False):  # read a few frames, then hang up
                        pass
                    call.cancel()
                    code, reason = "OK", None
                else:
                    channel.unary_unary(SERVICE + method)(body, timeout=30)
                    code, reason = "OK", None
            except grpc.RpcError as error:
                code, reason = error.code().name, Sam3Error.from_rpc(error).reason
            if code != "CANCELLED":
                reasons[method, code, reason] += 1
    codes = Counter(code for (_, code, _), n in reasons.items() for _ in range(n))
    print(
        "tracker fuzz codes:",
        dict(codes),
        {f"{m} {c} {r or ''}": n for (m, c, r), n in sorted(reasons.items(), key=str)},
    )
    assert set(codes) <= DOCUMENTED, codes
    assert all(reason is not None for _, code, reason in reasons if code != "OK"), reasons
    with Client(served) as client, client.video_session(frame_ids) as session:
        assert np.array_equal(session.add_prompt(0, 1, points=[(20.0, 24.0)]).masks()[1], reference)
    assert _CODES  # the fault suite's code table is the one used above
