"""SessionState <-> bytes, bit for bit: what the fleet stores between a session's requests.

Layout, little-endian: magic "S3TS", format version (u16), head length (u32), head CRC-32, payload CRC-32,
then the head (compact JSON: sizes, ids, frames, prompts' numbers, and for every array its dtype and shape)
and the payload (the arrays back to back: memories as bfloat16 bit patterns, pointers and logits as
float32, prompt masks as packed bits). Deterministic: the same state always gives the same bytes, and
`to_bytes(from_bytes(b)) == b`. Anything else (truncated, corrupted, another version) is a StateFormatError.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import numpy as np

from sam3_core.tracking.errors import StateFormatError
from sam3_core.tracking.state import Conditioning, FramePrompt, ObjectState, SessionState

MAGIC = b"S3TS"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sHIII")
_PACKED = "packed-bits"


class _Arrays:
    """Collects arrays into one payload, each described by (dtype, shape) in the head."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.specs: list[list[Any]] = []

    def add(self, array: np.ndarray) -> int:
        if array.dtype == bool:
            self.parts.append(np.packbits(array, axis=None).tobytes())
            self.specs.append([_PACKED, list(array.shape)])
        else:
            little = array.astype(array.dtype.newbyteorder("<"), copy=False)
            self.parts.append(np.ascontiguousarray(little).tobytes())
            self.specs.append([little.dtype.str, list(array.shape)])
        return len(self.specs) - 1


def to_bytes(state: SessionState) -> bytes:
    arrays = _Arrays()
    objects = []
    for obj in state.objects.values():
        objects.append(
            {
                "id": obj.obj_id,
                "prompts": [
                    [
                        frame,
                        [list(p) for p in prompt.points],
                        list(prompt.labels),
                        None if prompt.box is None else list(prompt.box),
                        None if prompt.mask is None else arrays.add(prompt.mask),
                    ]
                    for frame, prompt in obj.prompts.items()
                ],
                "conditioning": [
                    [
                        frame,
                        arrays.add(c.features),
                        arrays.add(c.pointer),
                        arrays.add(c.mask_logits),
                        c.object_score_logit,
                    ]
                    for frame, c in obj.conditioning.items()
                ],
                "memories": [[frame, arrays.add(m)] for frame, m in obj.recent_memories.items()],
                "pointers": [[frame, arrays.add(p)] for frame, p in obj.recent_pointers.items()],
                "tracked": [list(r) for r in obj.tracked],
            }
        )
    head = {
        "model_id": state.model_id,
        "video_size": list(state.video_size),
        "num_frames": state.num_frames,
        "objects": objects,
        "arrays": arrays.specs,
    }
    head_bytes = json.dumps(head, separators=(",", ":")).encode()
    payload = b"".join(arrays.parts)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, len(head_bytes), zlib.crc32(head_bytes), zlib.crc32(payload))
    return header + head_bytes + payload


def from_bytes(data: bytes) -> SessionState:
    try:
        return _parse(memoryview(data))
    except StateFormatError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, struct.error) as error:
        raise StateFormatError(f"not a tracking state: {error}") from error


def _parse(data: memoryview) -> SessionState:
    if len(data) < _HEADER.size:
        raise StateFormatError(f"{len(data)} bytes is too short for a tracking state")
    magic, version, head_length, head_crc, payload_crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise StateFormatError("not a tracking state (wrong magic)")
    if version != FORMAT_VERSION:
        raise StateFormatError(f"tracking state format {version}; this version reads {FORMAT_VERSION}")
    head_bytes = bytes(data[_HEADER.size : _HEADER.size + head_length])
    payload = data[_HEADER.size + head_length :]
    if zlib.crc32(head_bytes) != head_crc or zlib.crc32(payload) != payload_crc:
        raise StateFormatError("tracking state failed its checksum (truncated or corrupted)")
    head = json.loads(head_bytes)
    arrays = _read_arrays(head["arrays"], payload)
    objects = {}
    for entry in head["objects"]:
        obj = ObjectState(int(entry["id"]))
        for frame, points, labels, box, mask in entry["prompts"]:
            obj.prompts[frame] = FramePrompt(
                tuple((float(x), float(y)) for x, y in points),
                tuple(int(v) for v in labels),
                None if box is None else tuple(float(v) for v in box),  # type: ignore[arg-type]
                None if mask is None else arrays[mask],
            )
        for frame, features, pointer, logits, score in entry["conditioning"]:
            obj.conditioning[frame] = Conditioning(arrays[features], arrays[pointer], arrays[logits], float(score))
        obj.recent_memories = {frame: arrays[index] for frame, index in entry["memories"]}
        obj.recent_pointers = {frame: arrays[index] for frame, index in entry["pointers"]}
        obj.tracked = [(int(a), int(b)) for a, b in entry["tracked"]]
        objects[obj.obj_id] = obj
    height, width = head["video_size"]
    return SessionState(head["model_id"], (int(height), int(width)), head["num_frames"], objects)


def _read_arrays(specs: list[list[Any]], payload: memoryview) -> list[np.ndarray]:
    arrays, offset = [], 0
    for dtype, shape in specs:
        count = int(np.prod(shape, dtype=np.int64))
        if dtype == _PACKED:
            size = (count + 7) // 8
            bits = np.frombuffer(payload[offset : offset + size], np.uint8)
            array = np.unpackbits(bits, count=count).astype(bool).reshape(shape)
        else:
            size = count * np.dtype(dtype).itemsize
            array = np.frombuffer(payload[offset : offset + size], dtype).reshape(shape).copy()
        if offset + size > len(payload):
            raise StateFormatError("tracking state is shorter than its head says")
        arrays.append(array)
        offset += size
    if offset != len(payload):
        raise StateFormatError("tracking state has bytes its head does not describe")
    return arrays
