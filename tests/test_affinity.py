"""Affinity by image id: an image's calls go to one decoder replica (its cache hits), prefetch warms that
replica after an encode, a dead replica's images move to their next replica, and proxies get the header."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from contextlib import ExitStack

import grpc

from sam3_cli.workers import DECODER, ENCODER
from sam3_client import ChannelSettings, Client
from sam3_client._affinity import IMAGE_ID_HEADER, SESSION_ID_HEADER, AffinityPool, rendezvous_order, resolve
from sam3_client.proto import decoder_pb2, decoder_pb2_grpc, tracker_pb2, tracker_pb2_grpc
from service_stack import running
from test_service_behaviour import new_image

ADDRESSES = [f"10.0.0.{n}:50051" for n in range(1, 4)]


def ids(count: int) -> list[str]:
    return [uuid.uuid4().hex * 2 for _ in range(count)]


def test_rendezvous_spreads_images_evenly_and_moves_only_the_lost_replicas_images() -> None:
    images = ids(3000)
    owners = {image: rendezvous_order(ADDRESSES, image)[0] for image in images}
    assert all(900 < n < 1100 for n in Counter(owners.values()).values())
    survivors = ADDRESSES[:2]
    for image in images:
        new_owner = rendezvous_order(survivors, image)[0]
        if owners[image] in survivors:
            assert new_owner == owners[image]  # a replica leaving moves nobody else's images
        else:
            assert new_owner == rendezvous_order(ADDRESSES, image)[1]  # they go to their next choice


def test_pool_re_resolves_and_skips_a_failed_replica_for_a_while() -> None:
    now = [0.0]
    answers = [ADDRESSES, ADDRESSES[:2]]
    pool = AffinityPool(
        grpc,
        ("decoders.example", 50051),
        ChannelSettings(),
        resolver=lambda host, port: answers[0] if now[0] < 30 else answers[1],
        refresh_seconds=30,
        down_seconds=5,
        clock=lambda: now[0],
    )
    image = next(i for i in ids(100) if rendezvous_order(ADDRESSES, i)[0] == ADDRESSES[2])
    assert [a for a, _ in pool.candidates(image, decoder_pb2_grpc.DecoderServiceStub)] == rendezvous_order(
        ADDRESSES, image
    )
    pool.failed(ADDRESSES[2])
    assert next(a for a, _ in pool.candidates(image, decoder_pb2_grpc.DecoderServiceStub)) != ADDRESSES[2]
    now[0] = 6.0
    assert (
        next(a for a, _ in pool.candidates(image, decoder_pb2_grpc.DecoderServiceStub)) == ADDRESSES[2]
    )  # back after down_seconds
    now[0] = 31.0
    assert pool.addresses == ADDRESSES[:2]  # re-resolved: the third replica left DNS
    pool.close()


def test_only_multi_address_targets_get_a_pool() -> None:
    assert AffinityPool.for_target(grpc, "localhost:50051", ChannelSettings()) is None
    pool = AffinityPool.for_target(grpc, "ipv4:127.0.0.1:1,127.0.0.1:2", ChannelSettings())
    assert pool is not None and pool.addresses == ["127.0.0.1:1", "127.0.0.1:2"]
    pool.close()
    assert "127.0.0.1:50051" in resolve("localhost", 50051)


class _RecordingDecoder(decoder_pb2_grpc.DecoderServiceServicer):
    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    def Prefetch(
        self, request: decoder_pb2.PrefetchRequest, context: grpc.ServicerContext
    ) -> decoder_pb2.PrefetchResponse:
        self.headers.append(dict(context.invocation_metadata()))
        return decoder_pb2.PrefetchResponse()

    def Segment(
        self, request: decoder_pb2.SegmentRequest, context: grpc.ServicerContext
    ) -> decoder_pb2.SegmentResponse:
        self.headers.append(dict(context.invocation_metadata()))
        return decoder_pb2.SegmentResponse(image_id=request.image_id, width=4, height=4)


def test_calls_about_an_image_carry_its_id_for_proxies_that_hash_on_it() -> None:
    recorder = _RecordingDecoder()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    decoder_pb2_grpc.add_DecoderServiceServicer_to_server(recorder, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        image = ids(1)[0]
        with Client(f"127.0.0.1:{port}") as client:  # one address: a proxy in front does the hashing
            client.segment(image, points=[[1, 1]], mask_format="none")
        assert recorder.headers[-1][IMAGE_ID_HEADER] == image
    finally:
        server.stop(0)


class _RecordingTracker(tracker_pb2_grpc.TrackerServiceServicer):
    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    def AppendFrames(
        self, request_iterator: Iterator[tracker_pb2.AppendFramesRequest], context: grpc.ServicerContext
    ) -> Iterator[tracker_pb2.AppendFramesResponse]:
        self.headers.append(dict(context.invocation_metadata()))
        for request in request_iterator:
            for frame_id in request.frame_ids:
                yield tracker_pb2.AppendFramesResponse(frame=tracker_pb2.FrameResult(frame_id=frame_id))


def test_a_live_sessions_append_stream_opens_on_the_sessions_replica_with_its_id() -> None:
    """The request stream carries the session id in its header (proxies hash on it) and, for a multi-address
    target, opens on the replica rendezvous hashing picks for the session, as its other calls do."""
    from sam3_client import SessionInfo, VideoSession

    recorders = [_RecordingTracker() for _ in range(2)]
    with ExitStack() as stack:
        addresses = []
        for recorder in recorders:
            server = grpc.server(futures.ThreadPoolExecutor(2))
            tracker_pb2_grpc.add_TrackerServiceServicer_to_server(recorder, server)
            addresses.append(f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}")
            server.start()
            stack.callback(server.stop, 0)
        sessions = [session_id[:32] for session_id in ids(8)]  # round robin would misplace about half
        frames = ids(2)
        with Client("ipv4:" + ",".join(addresses)) as client:
            for session_id in sessions:
                session = VideoSession(client, SessionInfo(session_id, 1, 1, 4, 4, ()))
                assert [f.frame_id for f in session.append_frames(frames)] == frames
        for index, recorder in enumerate(recorders):
            served = [headers[SESSION_ID_HEADER] for headers in recorder.headers]
            assert served == [s for s in sessions if rendezvous_order(addresses, s)[0] == addresses[index]]


def test_a_fleet_of_three_decoders_serves_each_image_from_one_warm_replica(redis_url: str) -> None:
    namespace = f"affinity-{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        encoder = stack.enter_context(running(redis_url, namespace, {ENCODER}))
        decoders = [stack.enter_context(running(redis_url, namespace, {DECODER})) for _ in range(3)]
        fleet = "ipv4:" + ",".join(d.target for d in decoders)
        client = stack.enter_context(Client(encoder_target=encoder.target, decoder_target=fleet))
        probes = {d.target: decoder_pb2_grpc.DecoderServiceStub(grpc.insecure_channel(d.target)) for d in decoders}

        def warm_on(image_id: str) -> list[str]:
            """Which replicas already hold the image (asking loads it into the others: ask once)."""
            return [
                t
                for t, stub in probes.items()
                if stub.Prefetch(decoder_pb2.PrefetchRequest(image_id=image_id)).already_cached
            ]

        images = [client.encode(new_image(500 + seed)).image_id for seed in range(3)]  # prefetch on by default
        owner = {image: rendezvous_order(sorted(probes), image)[0] for image in images}
        for image in images:
            for _ in range(3):
                client.segment(image, points=[[10, 10]], mask_format="none")
        assert {image: warm_on(image) for image in images} == {image: [owner[image]] for image in images}

        # Without prefetch the first click pays the fetch, on the owner only, and the rest hit.
        cold = client.encode(new_image(600), prefetch=False).image_id
        for _ in range(3):
            client.segment(cold, points=[[10, 10]], mask_format="none")
        assert warm_on(cold) == [rendezvous_order(sorted(probes), cold)[0]]

        # The owner of an image goes away: its clicks move to the next replica, without an error.
        victim = next(d for d in decoders if d.target == owner[images[0]])
        victim.worker.stop(0)
        assert client.segment(images[0], points=[[10, 10]], mask_format="none").objects


def test_affinity_off_is_plain_round_robin(redis_url: str) -> None:
    namespace = f"affinity-{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        encoder = stack.enter_context(running(redis_url, namespace, {ENCODER}))
        decoders = [stack.enter_context(running(redis_url, namespace, {DECODER})) for _ in range(3)]
        client = stack.enter_context(
            Client(
                encoder_target=encoder.target,
                decoder_target="ipv4:" + ",".join(d.target for d in decoders),
                settings=ChannelSettings(affinity=False),
            )
        )
        image = client.encode(new_image(700), prefetch=False).image_id
        for _ in range(6):
            client.segment(image, points=[[10, 10]], mask_format="none")
        probes = [decoder_pb2_grpc.DecoderServiceStub(grpc.insecure_channel(d.target)) for d in decoders]
        warm = [p.Prefetch(decoder_pb2.PrefetchRequest(image_id=image)).already_cached for p in probes]
        assert warm == [True, True, True]  # every replica fetched it once: what affinity avoids


def test_the_compose_gateway_hashes_decoder_calls_on_the_header_the_sdk_sends() -> None:
    import yaml

    from test_deploy import ENVOY

    config = yaml.safe_load(ENVOY.read_text())["static_resources"]
    clusters = {c["name"]: c for c in config["clusters"]}
    assert clusters["decoder"]["lb_policy"] in ("RING_HASH", "MAGLEV")
    routes = config["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    (decoder_route,) = [r for r in routes["virtual_hosts"][0]["routes"] if r["route"]["cluster"] == "decoder"]
    # an image's id, and a video session's id for TrackerService calls (a request carries one of the two)
    hashed = [policy["header"]["header_name"] for policy in decoder_route["route"]["hash_policy"]]
    assert hashed == [IMAGE_ID_HEADER, SESSION_ID_HEADER]
