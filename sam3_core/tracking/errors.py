"""What a tracking session refuses, each with a message that says what to do instead.

Bad points, boxes and masks raise `sam3_core.prompts.PromptError` (the field is named), as for images.
"""

from __future__ import annotations


class TrackingError(ValueError):
    """A request a tracking session cannot carry out."""


class FrameIndexError(TrackingError):
    """A frame index outside the video."""

    def __init__(self, frame: int, num_frames: int | None) -> None:
        bound = f"0..{num_frames - 1}" if num_frames is not None else "0 or more"
        super().__init__(f"frame {frame} is outside the video: frames are numbered {bound}")


class UnknownObjectError(TrackingError):
    """An object id the session does not track."""

    def __init__(self, obj_id: int, known: tuple[int, ...]) -> None:
        super().__init__(f"object {obj_id} is not tracked in this session; objects: {list(known) or 'none yet'}")


class NoPromptsError(TrackingError):
    """Propagation with nothing to propagate."""

    def __init__(self) -> None:
        super().__init__("no object to propagate: prompt an object on some frame first (add_prompt)")


class FrameSizeError(TrackingError):
    """Frame features computed from an image of another size than the session's video."""

    def __init__(self, frame: int, size: tuple[int, int], expected: tuple[int, int]) -> None:
        super().__init__(
            f"frame {frame}'s features describe a {size[1]}x{size[0]} image, but the session's video is "
            f"{expected[1]}x{expected[0]}: encode the frames of this video"
        )


class StateFormatError(TrackingError):
    """Bytes that are not a tracking state this version can restore, or a state of another model."""
