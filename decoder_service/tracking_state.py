"""A tracking session's state as the session store keeps it: a small journal record and, per object, one hash
field per memory, so a propagated frame writes the one memory it made, not the object's whole bank.

The core's `SessionState` is plain data (`sam3_core.tracking.state`); here it is split the way Redis keeps it
(`sam3_serving.store.sessions`):

- the journal's `state` (`SessionRecord`, JSON): the video's size and length, whether it is live, each
  object's prompted frames (what DescribeSession answers without reading a bank) and the propagation
  under way (what a replica taking the session over resumes);
- "bank:<object>" fields: `meta` (prompts, the order of every memory dict, tracked ranges, conditioning
  scores), `cond:<frame>` (a prompted frame's memory, pointer and answer), `mem:<frame>` / `ptr:<frame>`
  (the ring of recent memories and pointers), `pmask:<frame>` (a mask prompt).

Arrays travel as .npy bytes (dtype, shape and data: bit for bit), so a state read back is the state written:
the replica that resumes a session computes the same masks as the one that lost it. `StoredFields` remembers
what was last committed for each object and answers the step's writes and deletions only.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sam3_core.tracking import SessionState
from sam3_core.tracking.state import Conditioning, FramePrompt, ObjectState

__all__ = ["BankChanges", "Propagation", "SessionRecord", "StoredFields", "object_state", "restore"]

_VERSION = 1


@dataclass
class Propagation:
    """A propagation and how far it went: enough for another replica to go on where it stopped."""

    propagation_id: str
    start_frame: int
    direction: int  # sam3.v1 PropagationDirection
    object_ids: list[int]
    order: list[list[int]]  # [frame, reverse] in processing order: the whole plan, fixed when it starts
    done: int = 0  # how many of `order` are committed


@dataclass
class SessionRecord:
    """The journal's `state`: everything about a session but its objects' memories."""

    model_id: str
    height: int
    width: int
    live: bool
    prompted: dict[int, list[int]] = field(default_factory=dict)  # object -> its prompted frames, in order
    propagation: Propagation | None = None

    def to_bytes(self) -> bytes:
        return json.dumps({"v": _VERSION, **asdict(self)}, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionRecord:
        """The record; ValueError when the bytes are not one this version wrote."""
        try:
            raw = json.loads(data)
            if raw.pop("v") != _VERSION:
                raise ValueError(f"session record version {raw.get('v')}, expected {_VERSION}")
            propagation = raw.pop("propagation")
            prompted = {int(k): list(v) for k, v in raw.pop("prompted").items()}
            return cls(**raw, prompted=prompted, propagation=Propagation(**propagation) if propagation else None)
        except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as error:
            raise ValueError(f"unreadable session record: {error}") from error


def _npy(*arrays: np.ndarray) -> bytes:
    out = io.BytesIO()
    for array in arrays:
        np.lib.format.write_array(out, np.ascontiguousarray(array), allow_pickle=False)
    return out.getvalue()


def _arrays(data: bytes, count: int) -> list[np.ndarray]:
    source = io.BytesIO(data)
    return [np.lib.format.read_array(source, allow_pickle=False) for _ in range(count)]


def _meta(state: ObjectState) -> bytes:
    prompts = [
        {
            "frame": frame,
            "points": [list(p) for p in prompt.points],
            "labels": list(prompt.labels),
            "box": list(prompt.box) if prompt.box is not None else None,
            "mask": prompt.mask is not None,
        }
        for frame, prompt in state.prompts.items()
    ]
    return json.dumps(
        {
            "prompts": prompts,
            "cond": {str(f): c.object_score_logit for f, c in state.conditioning.items()},
            "mem": list(state.recent_memories),
            "ptr": list(state.recent_pointers),
            "tracked": [list(r) for r in state.tracked],
        },
        separators=(",", ":"),
    ).encode()


def _sources(state: ObjectState) -> dict[str, tuple[Any, ...]]:
    """Each field's arrays (what its bytes are made of), by field name."""
    sources: dict[str, tuple[Any, ...]] = {}
    for frame, memory in state.conditioning.items():
        sources[f"cond:{frame}"] = (memory.features, memory.pointer, memory.mask_logits)
    sources.update({f"mem:{frame}": (array,) for frame, array in state.recent_memories.items()})
    sources.update({f"ptr:{frame}": (array,) for frame, array in state.recent_pointers.items()})
    for frame, prompt in state.prompts.items():
        if prompt.mask is not None:
            sources[f"pmask:{frame}"] = (prompt.mask,)
    return sources


def object_state(obj_id: int, fields: Mapping[str, bytes]) -> ObjectState:
    """The object as its bank fields hold it; ValueError (or KeyError) when a field is missing or unreadable."""
    meta = json.loads(fields["meta"])
    state = ObjectState(obj_id)
    for prompt in meta["prompts"]:
        frame = int(prompt["frame"])
        mask = _arrays(fields[f"pmask:{frame}"], 1)[0] if prompt["mask"] else None
        box = tuple(prompt["box"]) if prompt["box"] is not None else None
        state.prompts[frame] = FramePrompt(
            tuple(tuple(p) for p in prompt["points"]),
            tuple(prompt["labels"]),
            box,
            mask,  # type: ignore[arg-type]
        )
    for frame, score in meta["cond"].items():
        features, pointer, logits = _arrays(fields[f"cond:{frame}"], 3)
        state.conditioning[int(frame)] = Conditioning(features, pointer, logits, score)
    state.recent_memories = {int(f): _arrays(fields[f"mem:{f}"], 1)[0] for f in meta["mem"]}
    state.recent_pointers = {int(f): _arrays(fields[f"ptr:{f}"], 1)[0] for f in meta["ptr"]}
    state.tracked = [(int(a), int(b)) for a, b in meta["tracked"]]
    return state


def restore(
    record: SessionRecord, num_frames: int | None, objects: Iterable[int], banks: Mapping[int, Mapping[str, bytes]]
) -> SessionState:
    """The core's state from the journal record and the objects' banks, objects in session order."""
    state = SessionState(record.model_id, (record.height, record.width), num_frames)
    for obj_id in objects:
        state.objects[obj_id] = object_state(obj_id, banks[obj_id])
    return state


@dataclass
class BankChanges:
    """One step's changes to the objects' banks, and what the store holds once they are committed."""

    writes: dict[int, dict[str, bytes | None]]  # per object: fields to write, None for fields to delete
    dropped: list[int]  # objects whose banks go whole
    held: dict[int, dict[str, tuple[tuple[Any, ...], bytes]]]


class StoredFields:
    """What the store holds of each object's bank, as last committed: a step writes only what changed.

    A field whose arrays are the very objects last written is unchanged without being encoded again (the core
    replaces arrays, it does not mutate them); any other is encoded and compared.
    """

    def __init__(self, state: SessionState) -> None:
        """`state` is what the store holds (it was just read from it, or is a new session's)."""
        self._held = {
            obj_id: {name: (arrays, _npy(*arrays)) for name, arrays in _sources(obj).items()}
            | {"meta": ((), _meta(obj))}
            for obj_id, obj in state.objects.items()
        }

    def changes(self, state: SessionState) -> BankChanges:
        """What to write to go from what is held to `state`; `committed` once the store took it."""
        writes: dict[int, dict[str, bytes | None]] = {}
        held: dict[int, dict[str, tuple[tuple[Any, ...], bytes]]] = {}
        for obj_id, obj in state.objects.items():
            before = self._held.get(obj_id, {})
            after: dict[str, tuple[tuple[Any, ...], bytes]] = {"meta": ((), _meta(obj))}
            for name, arrays in _sources(obj).items():
                previous = before.get(name)
                if (
                    previous is not None
                    and len(previous[0]) == len(arrays)
                    and all(a is b for a, b in zip(previous[0], arrays, strict=True))
                ):
                    after[name] = previous
                else:
                    after[name] = (arrays, _npy(*arrays))
            fields: dict[str, bytes | None] = {
                name: data for name, (_, data) in after.items() if name not in before or before[name][1] != data
            }
            fields.update({name: None for name in before if name not in after})
            if fields:
                writes[obj_id] = fields
            held[obj_id] = after
        return BankChanges(writes, [obj_id for obj_id in self._held if obj_id not in held], held)

    def committed(self, changes: BankChanges) -> None:
        """The store now holds what `changes` led to."""
        self._held = changes.held
