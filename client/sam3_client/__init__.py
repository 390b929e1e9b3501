"""Python SDK for sam3-service: interactive SAM3 segmentation over gRPC.

    from sam3_client import Client
    with Client("localhost:50051") as sam3:
        result = sam3.segment("photo.jpg", points=[[500, 375]])
        mask = result.mask          # numpy bool, H x W at the photo's size
        buses = sam3.segment_concept("photo.jpg", "yellow school bus").instances
        car = sam3.segment("photo.jpg", points=[[500, 375]], object_key="car").objects[0]
        car = sam3.refine(car, points=[[620, 410]], labels=[0])   # more clicks, from the previous mask

`AsyncClient` has the same methods for asyncio. Transport options (TLS, token, retries,
wait_for_ready, message size) are `ChannelSettings`; default deadlines per method are `Deadlines`;
every failure is a `Sam3Error` carrying the gRPC status code and the server's reason.
"""

from sam3_client._channel import ChannelSettings
from sam3_client._prompts import ConceptOptions, ObjectPrompt, SegmentOptions
from sam3_client._results import (
    ConceptAnswer,
    ConceptResult,
    EncodeResult,
    Instance,
    Mask,
    ModelInfo,
    ObjectResult,
    Polygons,
    SegmentResult,
)
from sam3_client._rpcs import Deadlines
from sam3_client._tracking import SessionInfo, TrackedFrame, TrackedObject
from sam3_client.async_client import AsyncClient
from sam3_client.client import Client
from sam3_client.errors import Reason, Sam3Error
from sam3_client.video_session import AsyncVideoSession, VideoSession

__all__ = [
    "AsyncClient",
    "AsyncVideoSession",
    "ChannelSettings",
    "Client",
    "ConceptAnswer",
    "ConceptOptions",
    "ConceptResult",
    "Deadlines",
    "EncodeResult",
    "Instance",
    "Mask",
    "ModelInfo",
    "ObjectPrompt",
    "ObjectResult",
    "Polygons",
    "Reason",
    "Sam3Error",
    "SegmentOptions",
    "SegmentResult",
    "SessionInfo",
    "TrackedFrame",
    "TrackedObject",
    "VideoSession",
]
