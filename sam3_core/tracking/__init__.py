"""Video tracking: prompt objects on any frame of a video and propagate their masks, memory bounded.

The public names live here; each module holds one idea (docs/video.md).
"""

from sam3_core.tracking.errors import (
    FrameIndexError,
    FrameSizeError,
    NoPromptsError,
    StateFormatError,
    TrackingError,
    UnknownObjectError,
)
from sam3_core.tracking.graphs import TrackingNotSupportedError, VideoGraphs
from sam3_core.tracking.results import FrameResult, ObjectFrame
from sam3_core.tracking.serialise import from_bytes as state_from_bytes
from sam3_core.tracking.serialise import to_bytes as state_to_bytes
from sam3_core.tracking.session import FrameSource, TrackingSession
from sam3_core.tracking.state import SessionState

__all__ = [
    "FrameIndexError",
    "FrameResult",
    "FrameSizeError",
    "FrameSource",
    "NoPromptsError",
    "ObjectFrame",
    "SessionState",
    "StateFormatError",
    "TrackingError",
    "TrackingNotSupportedError",
    "TrackingSession",
    "UnknownObjectError",
    "VideoGraphs",
    "state_from_bytes",
    "state_to_bytes",
]
