"""Python SDK and command line for sam3-service.

from sam3_client import Client
with Client("localhost:50051") as sam3:
    result = sam3.segment("photo.jpg", points=[[500, 375]])
"""

from sam3_client._channel import ChannelSettings, Deadlines, Sam3Error
from sam3_client._convert import EncodeResult, Mask, ObjectPrompt, ObjectResult, SegmentResult
from sam3_client.client import Client

__all__ = [
    "ChannelSettings",
    "Client",
    "Deadlines",
    "EncodeResult",
    "Mask",
    "ObjectPrompt",
    "ObjectResult",
    "Sam3Error",
    "SegmentResult",
]
