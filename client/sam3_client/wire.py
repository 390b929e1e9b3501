"""What both ends agree on beyond the .proto messages: how an image is named, what a click's label is.

The workers import these from the SDK, so each rule is written once for client and server.
"""

from __future__ import annotations

import hashlib
import re

from sam3_client.proto import decoder_pb2

__all__ = ["POINT_LABELS", "image_id", "is_image_id", "label_from_wire"]

_IMAGE_ID = re.compile(r"[0-9a-f]{64}")  # always fullmatch: `$` would let a trailing newline through
# Click labels as SAM users pass them (1 foreground "include this", 0 background "exclude this")
# -> their wire values.
POINT_LABELS = {1: decoder_pb2.POINT_LABEL_FOREGROUND, 0: decoder_pb2.POINT_LABEL_BACKGROUND}
_FROM_WIRE: dict[int, int] = {wire: label for label, wire in POINT_LABELS.items()}


def image_id(data: bytes) -> str:
    """An image's id: the sha256 of its encoded bytes, as 64 lowercase hex digits (the store's key)."""
    return hashlib.sha256(data).hexdigest()


def is_image_id(text: str) -> bool:
    """Whether `text` has the form of an image id (it may still not be stored)."""
    return bool(_IMAGE_ID.fullmatch(text))


def label_from_wire(value: int) -> int | None:
    """A wire PointLabel -> 1 / 0; None when unset (never read as foreground) or unknown to this version."""
    return _FROM_WIRE.get(value)
