"""decoder_service.tracking_state: a session's state split into Redis fields and read back bit for bit, and a
step that writes only the fields it changed (one memory per propagated frame, not the bank)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

import tracking_fleet as video
from decoder_service.tracking_state import SessionRecord, StoredFields, restore
from sam3_core.predictor import encode
from sam3_core.tracking import TrackingSession, VideoGraphs, state_to_bytes


def session() -> TrackingSession:
    model = video.video_model()
    embeddings = [encode(model, np.asarray(Image.open(io.BytesIO(d)).convert("RGB"))) for d in video.frames()]
    return TrackingSession(
        VideoGraphs(model.folder), embeddings.__getitem__, video_size=video.SIZE, num_frames=video.FRAMES
    )


def test_a_state_read_back_from_its_fields_is_the_state_written_and_a_frame_writes_one_memory() -> None:
    tracking = session()
    fields = StoredFields(tracking.state)
    stored: dict[int, dict[str, bytes]] = {}

    def commit() -> dict[int, dict[str, bytes | None]]:
        changes = fields.changes(tracking.state)
        for obj_id, written in changes.writes.items():
            bank = stored.setdefault(obj_id, {})
            for name, value in written.items():
                if value is None:
                    del bank[name]
                else:
                    bank[name] = value
        fields.committed(changes)
        return changes.writes

    tracking.add_prompt(0, 1, points=[(20.0, 24.0)])
    tracking.add_prompt(0, 2, box=(30.0, 10.0, 50.0, 30.0))
    tracking.add_prompt(2, 1, mask=np.eye(*video.SIZE, dtype=bool))
    commit()
    writes = []
    for _ in tracking.propagate(0, direction="forward"):
        writes.append(commit())
    # after the ring fills, a frame adds one memory and one pointer per object and drops the oldest
    assert {name.split(":")[0] for obj in writes[-1].values() for name in obj} <= {"meta", "mem", "ptr"}
    record = SessionRecord(tracking.state.model_id, *video.SIZE, live=False)
    restored = restore(SessionRecord.from_bytes(record.to_bytes()), video.FRAMES, list(tracking.object_ids), stored)
    assert state_to_bytes(restored) == state_to_bytes(tracking.state)


def test_the_service_plans_a_propagation_in_the_cores_own_order() -> None:
    from decoder_service.tracking_plan import plan

    tracking = session()
    tracking.add_prompt(2, 1, points=[(20.0, 24.0)])
    for start, direction, max_frames in [(2, "both", None), (2, "both", 1), (0, "backward", None), (5, "forward", 3)]:
        directions = {"forward": (False,), "backward": (True,), "both": (False, True)}[direction]
        frames = [r.frame for r in tracking.propagate(start, direction=direction, max_frames=max_frames)]
        assert [f for f, _ in plan(start, directions, max_frames, video.FRAMES)] == frames
