"""TrackerService on a real worker: real gRPC, real Redis, the micro video model. Every answer is compared
with an in-process TrackingSession on the same frames: the fleet adds storage and routing, never a change."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

import tracking_fleet as video
from sam3_client.proto import decoder_pb2, tracker_pb2, tracker_pb2_grpc
from sam3_serving.store import SessionStore, SessionStoreConfig
from service_stack import running

RLE = decoder_pb2.MASK_FORMAT_RLE
FORWARD = tracker_pb2.PROPAGATION_DIRECTION_FORWARD
CLICK = [(20.0, 24.0)]


@pytest.fixture
def fleet(
    redis_url: str, session_redis_url: str, redis_namespace: str
) -> Iterator[tuple[tracker_pb2_grpc.TrackerServiceStub, list[str], SessionStore]]:
    prefix = redis_namespace.rstrip(":")
    sessions = SessionStore(
        SessionStoreConfig(session_redis_url, key_prefix=prefix, lease_ttl_seconds=1.0), video.video_model().model_id
    )
    with running(redis_url, prefix, model=video.video_model(), sessions=sessions) as stack:
        channel = grpc.insecure_channel(stack.target)
        yield tracker_pb2_grpc.TrackerServiceStub(channel), video.encode_frames(channel), sessions
        channel.close()
    sessions.close_connection()


def test_a_session_answers_as_the_core_does_and_reads_back_from_the_store(fleet) -> None:
    tracker, frame_ids, _ = fleet
    created = tracker.CreateSession(tracker_pb2.CreateSessionRequest(frame_ids=frame_ids), timeout=30)
    session = created.session
    assert (session.revision, session.frame_count, session.height, session.width) == (1, video.FRAMES, *video.SIZE)
    assert list(created.missing_frames) == []
    prompted, tracked = video.reference([(0, 1, CLICK)], {"direction": "forward"})
    answer = tracker.AddPrompt(
        tracker_pb2.AddPromptRequest(
            session_id=session.session_id,
            frame_index=0,
            object_id=1,
            points=[decoder_pb2.Point(x=x, y=y, label=decoder_pb2.POINT_LABEL_FOREGROUND) for x, y in CLICK],
            mask_format=RLE,
        ),
        timeout=30,
    )
    assert answer.frame.revision == 2
    np.testing.assert_array_equal(video.masks_of(answer.frame)[1], prompted[1])
    stream = list(
        tracker.Propagate(
            tracker_pb2.PropagateRequest(session_id=session.session_id, direction=FORWARD, mask_format=RLE), timeout=60
        )
    )
    assert [r.frame.frame_index for r in stream] == [frame for frame, _ in tracked]
    assert [r.frames_done for r in stream] == list(range(1, len(tracked) + 1))
    for response, (_, expected) in zip(stream, tracked, strict=True):
        np.testing.assert_array_equal(video.masks_of(response.frame)[1], expected[1])
    reread = list(
        tracker.ReadResults(
            tracker_pb2.ReadResultsRequest(
                session_id=session.session_id, mask_format=decoder_pb2.MASK_FORMAT_PACKED_BITS
            ),
            timeout=30,
        )
    )
    assert [r.frame.frame_index for r in reread] == [frame for frame, _ in tracked]
    for response, (_, expected) in zip(reread, tracked, strict=True):
        np.testing.assert_array_equal(video.masks_of(response.frame)[1], expected[1])
    described = tracker.DescribeSession(tracker_pb2.DescribeSessionRequest(session_id=session.session_id), timeout=10)
    assert described.session.propagation.frames_done == len(tracked)
    assert [o.object_id for o in described.session.objects] == [1]
    closed = tracker.CloseSession(tracker_pb2.CloseSessionRequest(session_id=session.session_id), timeout=10)
    assert closed.revision == described.session.revision
    with pytest.raises(grpc.RpcError) as error:
        tracker.DescribeSession(tracker_pb2.DescribeSessionRequest(session_id=session.session_id), timeout=10)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
