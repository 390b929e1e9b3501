"""The committed video fixtures (tests/fixtures/model-tiny-video and video-references, made by generate.py
`video`): transformers' Sam3TrackerVideoModel driven through scenarios on a synthetic video, and a replay of
each scenario on our TrackingSession."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import numpy as np

import references
from sam3_bench.videos import synthetic_video
from sam3_core.embeddings import ImageEmbeddings
from sam3_core.model import Sam3Model
from sam3_core.predictor import encode
from sam3_core.tracking import FrameResult, TrackingSession, VideoGraphs

MODEL_DIR = references.FIXTURES / "model-tiny-video"
REFERENCES_DIR = references.FIXTURES / "video-references"


@dataclass(frozen=True)
class Answer:
    """One of transformers' answers: a frame's masks (bool [N, H, W]) and object scores for `obj_ids`."""

    frame: int
    obj_ids: tuple[int, ...]
    masks: np.ndarray
    object_score_logits: np.ndarray


@cache
def index() -> dict:
    return json.loads((REFERENCES_DIR / "index.json").read_text())


def answers(scenario: str) -> list[Answer]:
    width = index()["width"]
    with np.load(REFERENCES_DIR / f"{scenario}.npz") as arrays:
        count = len({key.split("/")[0] for key in arrays.files})
        return [
            Answer(
                int(arrays[f"{i}/frame"].item()),
                tuple(int(v) for v in arrays[f"{i}/obj_ids"]),
                np.unpackbits(arrays[f"{i}/masks_packed"], axis=-1)[..., :width].astype(bool),
                arrays[f"{i}/object_score_logits"],
            )
            for i in range(count)
        ]


@cache
def frames() -> tuple[np.ndarray, ...]:
    return tuple(synthetic_video(index()["num_frames"], index()["width"], index()["height"], seed=index()["seed"]))


@cache
def encoder() -> Sam3Model:
    return Sam3Model(MODEL_DIR)


@cache
def graphs() -> VideoGraphs:
    return VideoGraphs(MODEL_DIR)


@cache
def frame_features(frame: int) -> ImageEmbeddings:
    """Frame `frame`'s embeddings from the fixture's encoder, computed once per test run."""
    return encode(encoder(), frames()[frame])


def new_session() -> TrackingSession:
    return TrackingSession(
        graphs(), frame_features, video_size=(index()["height"], index()["width"]), num_frames=index()["num_frames"]
    )


def mask_prompt(name: str) -> np.ndarray:
    """The named mask prompt of a scenario at the video's size (as generate.video_mask draws it)."""
    assert name == "disc"
    height, width = index()["height"], index()["width"]
    y, x = np.mgrid[0:height, 0:width]
    return (x - 0.25 * width) ** 2 + (y - 0.3 * height) ** 2 <= (0.12 * height) ** 2


def replay(session: TrackingSession, steps: list[dict]) -> Iterator[FrameResult]:
    """Runs a scenario's steps on our session, yielding every answer in transformers' order."""
    for step in steps:
        ((verb, args),) = step.items()
        if verb == "add":
            mask = mask_prompt(args["mask"]) if "mask" in args else None
            yield session.add_prompt(
                args["frame"],
                args["obj"],
                points=args.get("points", ()),
                labels=args.get("labels"),
                box=args.get("box"),
                mask=mask,
            )
        elif verb == "propagate":
            yield from session.propagate(args["start"], direction=args["direction"], max_frames=args.get("max_frames"))
        else:
            session.remove_object(args["obj"])
