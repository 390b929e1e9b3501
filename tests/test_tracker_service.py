"""TrackerService on a real worker: real gRPC, real Redis, the micro video model. Every answer is compared
with an in-process TrackingSession on the same frames: the fleet adds storage and routing, never a change."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

import tracking_fleet as video
from sam3_client.errors import Reason, Sam3Error
from sam3_client.proto import decoder_pb2, tracker_pb2, tracker_pb2_grpc
from sam3_serving.store import SessionStore, SessionStoreConfig
from service_stack import running

RLE = decoder_pb2.MASK_FORMAT_RLE
FORWARD = tracker_pb2.PROPAGATION_DIRECTION_FORWARD
CLICK = [(20.0, 24.0)]


@pytest.fixture
def fleet(
    redis_url: str, session_redis_url: str, redis_namespace: str
) -> Iterator[tuple[tracker_pb2_grpc.TrackerServiceStub, list[str], str]]:
    prefix = redis_namespace.rstrip(":")
    sessions = SessionStore(
        SessionStoreConfig(session_redis_url, key_prefix=prefix, lease_ttl_seconds=1.0), video.video_model().model_id
    )
    with running(redis_url, prefix, model=video.video_model(), sessions=sessions) as stack:
        channel = grpc.insecure_channel(stack.target)
        yield tracker_pb2_grpc.TrackerServiceStub(channel), video.encode_frames(channel), stack.target
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


def prompt(session_id: str, frame: int = 0, object_id: int = 1, **fields) -> tracker_pb2.AddPromptRequest:
    points = fields.pop(
        "points", [decoder_pb2.Point(x=x, y=y, label=decoder_pb2.POINT_LABEL_FOREGROUND) for x, y in CLICK]
    )
    return tracker_pb2.AddPromptRequest(
        session_id=session_id, frame_index=frame, object_id=object_id, points=points, **{"mask_format": RLE, **fields}
    )


def refusal(call) -> Sam3Error:
    with pytest.raises(grpc.RpcError) as failure:
        call()
    return Sam3Error.from_rpc(failure.value)


def test_bad_calls_are_refused_with_the_field_or_limit_named(fleet) -> None:
    tracker, frame_ids, _ = fleet
    session_id = tracker.CreateSession(
        tracker_pb2.CreateSessionRequest(frame_ids=frame_ids), timeout=30
    ).session.session_id
    cases = [
        (
            lambda: tracker.AddPrompt(prompt(session_id, frame=video.FRAMES), timeout=30),
            "INVALID_PROMPT",
            "field",
            "frame_index",
        ),
        (lambda: tracker.AddPrompt(prompt("f" * 32), timeout=30), "SESSION_NOT_FOUND", "session_id", "f" * 32),
        (lambda: tracker.AddPrompt(prompt("nope"), timeout=30), "INVALID_PROMPT", "field", "session_id"),
        (
            lambda: tracker.AddPrompt(prompt(session_id, mask_format=0), timeout=30),
            "INVALID_PROMPT",
            "field",
            "mask_format",
        ),
        (
            lambda: tracker.RemoveObject(
                tracker_pb2.RemoveObjectRequest(session_id=session_id, object_id=9), timeout=30
            ),
            "INVALID_PROMPT",
            "field",
            "object_id",
        ),
        (
            lambda: list(
                tracker.Propagate(
                    tracker_pb2.PropagateRequest(session_id=session_id, direction=FORWARD, mask_format=RLE), timeout=30
                )
            ),
            "INVALID_PROMPT",
            "field",
            "object_ids",
        ),
        (
            lambda: tracker.CreateSession(tracker_pb2.CreateSessionRequest(frame_ids=["x"]), timeout=30),
            "INVALID_PROMPT",
            "field",
            "frame_ids[0]",
        ),
    ]
    for call, reason, key, value in cases:
        error = refusal(call)
        assert (error.reason, error.metadata.get(key)) == (reason, value), error
    outside = prompt(session_id)
    outside.points[0].x = video.SIZE[1] + 5
    assert refusal(lambda: tracker.AddPrompt(outside, timeout=30)).reason == Reason.INVALID_PROMPT
    tracker.AddPrompt(prompt(session_id), timeout=30)  # revision 2
    stale = refusal(lambda: tracker.AddPrompt(prompt(session_id, expected_revision=1), timeout=30))
    assert (stale.reason, stale.metadata["revision"]) == (Reason.REVISION_MISMATCH, "2")
    assert tracker.AddPrompt(prompt(session_id, expected_revision=2), timeout=30).frame.revision == 3


def test_limits_bound_what_one_caller_can_make_a_worker_hold(redis_url, session_redis_url, redis_namespace) -> None:
    from decoder_service.tracking_limits import TrackerSettings

    prefix = redis_namespace.rstrip(":")
    config = SessionStoreConfig(session_redis_url, key_prefix=prefix, lease_ttl_seconds=1.0, max_sessions=2)
    sessions = SessionStore(config, video.video_model().model_id)
    settings = TrackerSettings(max_objects_per_session=1, max_frames_per_session=video.FRAMES, max_prompted_frames=1)
    with running(redis_url, prefix, model=video.video_model(), sessions=sessions, tracker=settings) as stack:
        channel = grpc.insecure_channel(stack.target)
        tracker, frame_ids = tracker_pb2_grpc.TrackerServiceStub(channel), video.encode_frames(channel)
        create = lambda ids: tracker.CreateSession(tracker_pb2.CreateSessionRequest(frame_ids=ids), timeout=30)  # noqa: E731
        assert refusal(lambda: create(frame_ids + frame_ids[:1])).metadata["limit"] == "max_frames_per_session"
        session_id = create(frame_ids).session.session_id
        tracker.AddPrompt(prompt(session_id), timeout=30)
        assert (
            refusal(lambda: tracker.AddPrompt(prompt(session_id, object_id=2), timeout=30)).metadata["limit"]
            == "max_objects_per_session"
        )
        assert (
            refusal(lambda: tracker.AddPrompt(prompt(session_id, frame=1), timeout=30)).metadata["limit"]
            == "max_prompted_frames"
        )
        create(frame_ids)
        error = refusal(lambda: create(frame_ids))
        assert (error.reason, error.metadata["limit"]) == (Reason.SESSION_LIMIT, "max_sessions")
        channel.close()
    sessions.close_connection()


def test_cancelling_a_propagation_stops_it_within_one_frame_and_keeps_what_was_answered(fleet) -> None:
    tracker, frame_ids, _ = fleet
    session_id = tracker.CreateSession(
        tracker_pb2.CreateSessionRequest(frame_ids=frame_ids), timeout=30
    ).session.session_id
    tracker.AddPrompt(prompt(session_id), timeout=30)
    stream = tracker.Propagate(
        tracker_pb2.PropagateRequest(session_id=session_id, direction=FORWARD, mask_format=RLE), timeout=60
    )
    first = next(stream)
    stream.cancel()
    # the lease is free again at once (a writer waiting on it gets it), and the frames done are committed
    tracker.AddPrompt(prompt(session_id, object_id=1), timeout=30)
    reread = list(
        tracker.ReadResults(tracker_pb2.ReadResultsRequest(session_id=session_id, mask_format=RLE), timeout=30)
    )
    assert first.frame.frame_index in [r.frame.frame_index for r in reread]
    described = tracker.DescribeSession(tracker_pb2.DescribeSessionRequest(session_id=session_id), timeout=10).session
    assert not described.HasField("propagation")  # the prompt after the cancel ended it


def test_the_sdk_session_sync_and_async_answers_as_the_raw_rpcs(fleet) -> None:
    import asyncio

    from sam3_client import AsyncClient, Client

    _, frame_ids, target = fleet
    _, expected = video.reference([(0, 1, CLICK)], {"direction": "forward"})
    with Client(target) as sam3, sam3.video_session(frame_ids) as session:
        assert session.info.frame_count == video.FRAMES and session.info.missing_frames == ()
        first = session.add_prompt(0, 1, points=CLICK)
        assert first.revision == 2
        tracked = list(session.propagate())
        assert session.describe().object_ids == (1,)
    assert [f.frame_index for f in tracked] == [frame for frame, _ in expected]
    for frame, (_, masks) in zip(tracked, expected, strict=True):
        np.testing.assert_array_equal(frame.masks()[1], masks[1])

    async def run() -> list:
        async with AsyncClient(target) as sam3, await sam3.video_session(frame_ids) as session:
            await session.add_prompt(0, 1, points=CLICK)
            return [frame async for frame in session.propagate()]

    for frame, (_, masks) in zip(asyncio.run(run()), expected, strict=True):
        np.testing.assert_array_equal(frame.masks()[1], masks[1])
    with Client(target) as sam3, pytest.raises(Sam3Error) as error:
        sam3.video_session([])
    assert (error.value.reason, error.value.metadata["field"]) == (Reason.INVALID_PROMPT, "frame_ids")


def test_two_decoders_serve_one_session_call_by_call_as_one_would(
    redis_url: str, session_redis_url: str, redis_namespace: str
) -> None:
    """A round-robin client: every call lands on the other replica, which re-reads the session's committed
    state (its copy is a revision behind) and answers as a single replica would have."""
    prefix = redis_namespace.rstrip(":")
    model = video.video_model()
    stores = [
        SessionStore(SessionStoreConfig(session_redis_url, key_prefix=prefix, lease_ttl_seconds=1.0), model.model_id)
        for _ in range(2)
    ]
    prompted, expected = video.reference([(0, 1, CLICK), (2, 2, [(40.0, 20.0)])], {"direction": "forward"})
    with (
        running(redis_url, prefix, model=model, sessions=stores[0]) as first,
        running(redis_url, prefix, model=model, sessions=stores[1]) as second,
    ):
        channels = [grpc.insecure_channel(stack.target) for stack in (first, second)]
        stubs = [tracker_pb2_grpc.TrackerServiceStub(channel) for channel in channels]
        turn = iter(stubs * 10)
        frame_ids = video.encode_frames(channels[0])
        session_id = (
            next(turn)
            .CreateSession(tracker_pb2.CreateSessionRequest(frame_ids=frame_ids), timeout=30)
            .session.session_id
        )
        next(turn).AddPrompt(prompt(session_id, 0, 1), timeout=30)
        last = next(turn).AddPrompt(
            prompt(session_id, 2, 2, points=[decoder_pb2.Point(x=40, y=20, label=1)]), timeout=30
        )
        for obj_id, mask in prompted.items():
            np.testing.assert_array_equal(video.masks_of(last.frame)[obj_id], mask)
        request = tracker_pb2.PropagateRequest(session_id=session_id, direction=FORWARD, mask_format=RLE)
        tracked = list(next(turn).Propagate(request, timeout=60))
        reread = list(
            next(turn).ReadResults(tracker_pb2.ReadResultsRequest(session_id=session_id, mask_format=RLE), timeout=30)
        )
        for answers in (tracked, reread):
            assert [r.frame.frame_index for r in answers] == [frame for frame, _ in expected]
            for response, (_, masks) in zip(answers, expected, strict=True):
                for obj_id, mask in masks.items():
                    np.testing.assert_array_equal(video.masks_of(response.frame)[obj_id], mask)
        for channel in channels:
            channel.close()
    for store in stores:
        store.close_connection()


def test_sam3_track_through_the_service_writes_what_it_writes_in_process(fleet, tmp_path, capsys) -> None:
    import json

    from sam3_cli.main import main

    _, _, target = fleet
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, data in enumerate(video.frames()):
        (folder / f"{index:03d}.png").write_bytes(data)
    argv = ["track", str(folder), "--point", "1:0:20,24", "--box", "2:1:30,10,50,30", "--direction", "both"]
    assert main([*argv, "--json", str(tmp_path / "local.json"), "--model-dir", str(video.VIDEO_MODEL_DIR)]) == 0
    assert main([*argv, "--json", str(tmp_path / "served.json"), "--server", target]) == 0
    local, served = (json.loads((tmp_path / name).read_text()) for name in ("local.json", "served.json"))
    assert len(served["frames"]) == video.FRAMES
    assert served["frames"] == local["frames"]
    assert capsys.readouterr().out.count(" pixels, score ") == 4  # each prompt's answer, printed by both runs


def live_reference() -> list:
    """The core's answers, frame 1 on, for a click on frame 0 of a stream of unknown length (a live session)."""
    import io

    from PIL import Image

    from sam3_core.predictor import encode
    from sam3_core.tracking import TrackingSession, VideoGraphs

    model = video.video_model()
    embeddings = [encode(model, np.asarray(Image.open(io.BytesIO(d)).convert("RGB"))) for d in video.frames()]
    core = TrackingSession(VideoGraphs(model.folder), embeddings.__getitem__, video_size=video.SIZE, num_frames=None)
    core.add_prompt(0, 1, points=CLICK)
    return [next(iter(core.propagate(f, direction="forward", max_frames=0))) for f in range(1, video.FRAMES)]


def test_a_live_session_tracks_each_appended_frame_as_a_stream_of_unknown_length_does(fleet) -> None:
    tracker, frame_ids, _ = fleet
    expected = live_reference()
    created = tracker.CreateSession(tracker_pb2.CreateSessionRequest(frame_ids=frame_ids[:1], live=True), timeout=30)
    session_id = created.session.session_id
    tracker.AddPrompt(prompt(session_id), timeout=30)
    requests = [
        tracker_pb2.AppendFramesRequest(session_id=session_id, frame_ids=[frame_id], mask_format=RLE)
        for frame_id in [*frame_ids[1:3], "0" * 64, *frame_ids[3:]]
    ]
    answers = list(tracker.AppendFrames(iter(requests), timeout=60))
    refused = [a for a in answers if a.HasField("error")]
    assert [Sam3Error.from_item(a.error).reason for a in refused] == [Reason.EMBEDDING_NOT_FOUND]  # not appended
    tracked = [a for a in answers if not a.HasField("error")]
    assert [a.frame.frame_index for a in tracked] == list(range(1, video.FRAMES))
    for answer, result in zip(tracked, expected, strict=True):
        np.testing.assert_array_equal(video.masks_of(answer.frame)[1], result.objects[0].mask())
    described = tracker.DescribeSession(tracker_pb2.DescribeSessionRequest(session_id=session_id), timeout=10)
    assert described.session.frame_count == video.FRAMES and described.session.live


def test_the_sdk_live_session_sync_and_async_tracks_each_appended_frame_as_the_raw_rpc(fleet) -> None:
    """append_frames takes images (encoded first) or ids, answers each frame in order, and carries on past a
    frame it cannot append; the masks are the core's on its stream of unknown length."""
    import asyncio

    from sam3_client import AsyncClient, Client

    _, frame_ids, target = fleet
    expected = live_reference()
    other_size = video.frames(size=(video.SIZE[0] * 2, video.SIZE[1] * 2), count=1)[0]
    # a frame as an image, ids, one never encoded, one of another size (encoded by the SDK, then refused)
    frames = [video.frames()[1], frame_ids[2], "0" * 64, other_size, *frame_ids[3:]]

    def check(answers: list) -> None:
        refused = [a for a in answers if a.error is not None]
        assert [(a.frame_index, a.error.reason) for a in refused] == [
            (-1, Reason.EMBEDDING_NOT_FOUND),
            (-1, Reason.INVALID_PROMPT),
        ]
        assert refused[0].frame_id == "0" * 64 and refused[1].error.metadata["field"] == "frame_ids"
        tracked = [a for a in answers if a.error is None]
        assert [a.frame_index for a in tracked] == list(range(1, video.FRAMES))
        assert [a.frame_id for a in tracked] == frame_ids[1:]
        for answer, result in zip(tracked, expected, strict=True):
            np.testing.assert_array_equal(answer.masks()[1], result.objects[0].mask())

    with Client(target) as sam3, sam3.video_session(frame_ids[:1], live=True) as session:
        session.add_prompt(0, 1, points=CLICK)
        check(list(session.append_frames(iter(frames))))
        assert session.describe().frame_count == video.FRAMES

    async def run() -> list:
        async def camera():
            for frame in frames:
                yield frame

        async with AsyncClient(target) as sam3, await sam3.video_session(frame_ids[:1], live=True) as session:
            await session.add_prompt(0, 1, points=CLICK)
            return [frame async for frame in session.append_frames(camera())]

    check(asyncio.run(run()))
    with Client(target) as sam3, sam3.video_session(frame_ids[:1]) as fixed, pytest.raises(Sam3Error) as error:
        list(fixed.append_frames(frame_ids[1:2]))
    assert (error.value.reason, error.value.metadata["field"]) == (Reason.INVALID_PROMPT, "session_id")


def test_a_propagation_both_ways_reaches_frame_zero_as_the_core_does(fleet) -> None:
    tracker, frame_ids, _ = fleet
    _, expected = video.reference([(3, 1, CLICK)], {"start_frame": 3, "direction": "both"})
    session_id = tracker.CreateSession(
        tracker_pb2.CreateSessionRequest(frame_ids=frame_ids), timeout=30
    ).session.session_id
    tracker.AddPrompt(prompt(session_id, frame=3), timeout=30)
    request = tracker_pb2.PropagateRequest(
        session_id=session_id, start_frame=3, direction=tracker_pb2.PROPAGATION_DIRECTION_BOTH, mask_format=RLE
    )
    answers = list(tracker.Propagate(request, timeout=60))
    assert [a.frame.frame_index for a in answers] == [frame for frame, _ in expected] == [3, 4, 5, 3, 2, 1, 0]
    for answer, (_, masks) in zip(answers, expected, strict=True):
        np.testing.assert_array_equal(video.masks_of(answer.frame)[1], masks[1])


def test_a_backward_pass_that_died_just_before_frame_zero_resumes_there_as_the_core_runs_it(
    redis_url: str, session_redis_url: str, redis_namespace: str
) -> None:
    """Frame 0 not encoded (evicted) ends the pass after frames 3, 2, 1; once encoded again, resuming runs
    frame 0 as the uninterrupted pass does (the core's `propagate` starts no backward pass there)."""
    prefix = redis_namespace.rstrip(":")
    sessions = SessionStore(
        SessionStoreConfig(session_redis_url, key_prefix=prefix, lease_ttl_seconds=1.0), video.video_model().model_id
    )
    _, expected = video.reference([(3, 1, CLICK)], {"start_frame": 3, "direction": "backward"})
    with running(redis_url, prefix, model=video.video_model(), sessions=sessions) as stack:
        channel = grpc.insecure_channel(stack.target)
        tracker = tracker_pb2_grpc.TrackerServiceStub(channel)
        frame_ids = video.encode_frames(channel)
        session_id = tracker.CreateSession(
            tracker_pb2.CreateSessionRequest(frame_ids=frame_ids), timeout=30
        ).session.session_id
        tracker.AddPrompt(prompt(session_id, frame=3), timeout=30)
        stack.store.delete(stack.embeddings, frame_ids[0])
        request = tracker_pb2.PropagateRequest(
            session_id=session_id, start_frame=3, direction=tracker_pb2.PROPAGATION_DIRECTION_BACKWARD, mask_format=RLE
        )
        received = []
        with pytest.raises(grpc.RpcError) as died:
            received.extend(tracker.Propagate(request, timeout=60))
        assert died.value.code() == grpc.StatusCode.NOT_FOUND, died.value.details()
        assert [r.frame.frame_index for r in received] == [3, 2, 1]
        assert video.encode_frames(channel)[0] == frame_ids[0]
        resumed = list(
            tracker.Propagate(
                tracker_pb2.PropagateRequest(
                    session_id=session_id,
                    mask_format=RLE,
                    resume_propagation_id=received[0].propagation_id,
                    frames_received=len(received),
                ),
                timeout=60,
            )
        )
        channel.close()
    sessions.close_connection()
    answers = received + resumed
    assert [a.frame.frame_index for a in answers] == [frame for frame, _ in expected] == [3, 2, 1, 0]
    assert [a.frames_done for a in answers] == [1, 2, 3, 4]
    for answer, (_, masks) in zip(answers, expected, strict=True):
        np.testing.assert_array_equal(video.masks_of(answer.frame)[1], masks[1])
