"""A session is the fleet's, not a replica's: SIGKILL the decoder mid-propagation, and another decoder resumes
it from the session store's last committed frame with masks identical to an uninterrupted run."""

from __future__ import annotations

import signal
from typing import Any

import grpc
import numpy as np

import tracking_fleet as video
from sam3_cli.workers import ENCODER
from sam3_client.proto import decoder_pb2, tracker_pb2, tracker_pb2_grpc
from service_stack import running, serve_subprocess

BIG = (1200, 1600)  # a packed-bits mask is 240 KB: the stream's flow control holds the worker a frame or two ahead
PACKED = decoder_pb2.MASK_FORMAT_PACKED_BITS
CLICK = (20.0 * BIG[0] / video.SIZE[0], 24.0 * BIG[0] / video.SIZE[0])


def decoders_over_encoded(
    redis_url: str, session_redis_url: str, prefix: str, **frames: Any
) -> tuple[tuple[str, ...], list[str]]:
    """The flags of decoders sharing both stores (a 1 s session lease), and the frames' ids, encoded."""
    flags = ("--redis-url", redis_url, "--session-redis-url", session_redis_url, "--key-prefix", prefix)
    with running(redis_url, prefix, {ENCODER}, model=video.video_model()) as encoder:
        channel = grpc.insecure_channel(encoder.target)
        frame_ids = video.encode_frames(channel, **frames)
        channel.close()
    return (*flags, "--session-lease-seconds", "1"), frame_ids


def test_a_propagation_killed_with_its_replica_finishes_on_another_identically(
    redis_url: str, session_redis_url: str, redis_namespace: str
) -> None:
    prefix = redis_namespace.rstrip(":")
    flags, frame_ids = decoders_over_encoded(redis_url, session_redis_url, prefix, size=BIG)
    _, expected = video.reference([(0, 1, [CLICK])], {"direction": "forward"}, BIG)
    with (
        serve_subprocess(*flags, command="decoder", model_dir=video.VIDEO_MODEL_DIR) as (first, first_target),
        serve_subprocess(*flags, command="decoder", model_dir=video.VIDEO_MODEL_DIR) as (_, second_target),
    ):
        doomed = tracker_pb2_grpc.TrackerServiceStub(grpc.insecure_channel(first_target))
        session = doomed.CreateSession(tracker_pb2.CreateSessionRequest(frame_ids=frame_ids), timeout=30).session
        point = decoder_pb2.Point(x=CLICK[0], y=CLICK[1], label=decoder_pb2.POINT_LABEL_FOREGROUND)
        doomed.AddPrompt(
            tracker_pb2.AddPromptRequest(
                session_id=session.session_id, frame_index=0, object_id=1, points=[point], mask_format=PACKED
            ),
            timeout=30,
        )
        stream = doomed.Propagate(
            tracker_pb2.PropagateRequest(
                session_id=session.session_id, direction=tracker_pb2.PROPAGATION_DIRECTION_FORWARD, mask_format=PACKED
            ),
            timeout=60,
        )
        received = [next(stream), next(stream)]
        first.send_signal(signal.SIGKILL)
        first.wait()
        survivor = tracker_pb2_grpc.TrackerServiceStub(grpc.insecure_channel(second_target))
        resumed = list(
            survivor.Propagate(
                tracker_pb2.PropagateRequest(
                    session_id=session.session_id,
                    mask_format=PACKED,
                    resume_propagation_id=received[0].propagation_id,
                    frames_received=len(received),
                ),
                timeout=60,
            )
        )
    answers = received + resumed
    assert [r.frame.frame_index for r in answers] == [frame for frame, _ in expected]
    assert [r.frames_done for r in answers] == list(range(1, len(expected) + 1))
    computed_after_the_kill = [r for r in resumed if "track" in r.frame.timings.milliseconds]
    assert computed_after_the_kill, (
        "the survivor only replayed stored frames: the kill came too late to prove a takeover"
    )
    for response, (_, masks) in zip(answers, expected, strict=True):
        np.testing.assert_array_equal(video.masks_of(response.frame)[1], masks[1])


def test_the_sdk_resumes_a_propagation_on_the_surviving_replica_by_itself(
    redis_url: str, session_redis_url: str, redis_namespace: str
) -> None:
    """`ipv4:a,b`: the SDK sends the session to its owner; SIGKILL the owner after two frames, and the same
    `propagate()` iterator goes on, from the other replica, with every remaining frame and the same masks."""
    from decoder_service.tracking_state import SessionRecord
    from sam3_client import Client
    from sam3_client._affinity import rendezvous_order
    from sam3_serving.store import SessionStore, SessionStoreConfig

    count, prefix = 40, redis_namespace.rstrip(":")
    flags, frame_ids = decoders_over_encoded(redis_url, session_redis_url, prefix, count=count)
    _, expected = video.reference([(0, 1, [(20.0, 24.0)])], {"direction": "forward"}, count=count)
    store = SessionStore(SessionStoreConfig(session_redis_url, key_prefix=prefix), video.video_model().model_id)
    with (
        serve_subprocess(*flags, command="decoder", model_dir=video.VIDEO_MODEL_DIR) as first,
        serve_subprocess(*flags, command="decoder", model_dir=video.VIDEO_MODEL_DIR) as second,
    ):
        processes = {first[1]: first[0], second[1]: second[0]}
        with Client(f"ipv4:{first[1]},{second[1]}") as sam3, sam3.video_session(frame_ids) as session:
            session.add_prompt(0, 1, points=[(20.0, 24.0)])
            frames = session.propagate()
            received = [next(frames), next(frames)]
            owner = rendezvous_order(sorted(processes), session.session_id)[0]
            processes[owner].send_signal(signal.SIGKILL)
            processes[owner].wait()
            done = SessionRecord.from_bytes(store.journal(session.session_id).state).propagation
            assert done is not None and done.done < count, "the kill came after the last frame: nothing to resume"
            received += list(frames)
    store.close_connection()
    assert [f.frame_index for f in received] == [frame for frame, _ in expected]
    for frame, (_, masks) in zip(received, expected, strict=True):
        np.testing.assert_array_equal(frame.masks()[1], masks[1])
