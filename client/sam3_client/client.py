"""The synchronous client: `segment(image, points=...)` in one call, Encode only when the store lacks it."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc

from sam3_client import _convert
from sam3_client._channel import ChannelSettings, Deadlines, Sam3Error, call_metadata, open_channel
from sam3_client._convert import EncodeResult, ObjectPrompt, SegmentResult
from sam3_client.proto import common_pb2, decoder_pb2_grpc, encoder_pb2_grpc


class Client:
    """Talks to a `sam3 serve` (one target) or to split encoder/decoder deployments.

    >>> with Client("localhost:50051") as sam3:
    ...     result = sam3.segment("photo.jpg", points=[[500, 375]])
    ...     mask = result.objects[0].mask            # numpy bool, H x W
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        encoder_target: str | None = None,
        decoder_target: str | None = None,
        settings: ChannelSettings | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        encoder_target = encoder_target or target
        decoder_target = decoder_target or target
        if not encoder_target or not decoder_target:
            raise ValueError("give a target (host:port of `sam3 serve`) or both encoder_target and decoder_target")
        self.settings = settings or ChannelSettings()
        self.deadlines = deadlines or Deadlines()
        self._decoder_channel = open_channel(grpc, decoder_target, self.settings)
        self._encoder_channel = (
            self._decoder_channel
            if encoder_target == decoder_target
            else open_channel(grpc, encoder_target, self.settings)
        )
        self._encoder = encoder_pb2_grpc.EncoderServiceStub(self._encoder_channel)
        self._decoder = decoder_pb2_grpc.DecoderServiceStub(self._decoder_channel)
        self._metadata = call_metadata(self.settings)

    def close(self) -> None:
        self._decoder_channel.close()
        if self._encoder_channel is not self._decoder_channel:
            self._encoder_channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: tuple[type[BaseException], BaseException, TracebackType] | Any) -> None:
        self.close()

    def encode(self, image: Any, *, force: bool = False, timeout: float | None = None) -> EncodeResult:
        """Stores the image's embeddings (no-op when already stored, unless force)."""
        request = _convert.encode_request(_convert.image_payload(image), force=force)
        try:
            response = self._encoder.Encode(request, timeout=timeout or self.deadlines.encode, metadata=self._metadata)
        except grpc.RpcError as error:
            raise Sam3Error.from_rpc(error) from None
        return _convert.encode_result(response)

    def segment(
        self,
        image: Any,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
        **options: Any,
    ) -> SegmentResult:
        """One object from clicks (labels 1 foreground / 0 background, default all 1) and/or a box.

        `image` is a path, bytes, a PIL image, a numpy array or an image id; options: mask="best" | "all" | 0..2,
        mask_format="rle" | "png" | "bits" | "none", low_res_logits=False, timeout=seconds.
        """
        return self.segment_objects(image, [ObjectPrompt(points, labels, box)], **options)

    def segment_objects(
        self,
        image: Any,
        objects: Sequence[ObjectPrompt],
        *,
        mask: int | str = "best",
        mask_format: str = "rle",
        low_res_logits: bool = False,
        timeout: float | None = None,
    ) -> SegmentResult:
        """Several objects in one call. Asks the decoder first; on NOT_FOUND encodes the image, then asks again."""
        payload = _convert.image_payload(image)
        request = _convert.segment_request(
            payload.image_id, objects, mask=mask, mask_format=mask_format, low_res_logits=low_res_logits
        )
        try:
            return _convert.segment_result(self._segment(request, timeout))
        except Sam3Error as error:
            if not error.is_not_encoded or payload.data is None:
                raise
        encoded = self.encode(payload.data)
        return _convert.segment_result(self._segment(request, timeout), encoded)

    def model_info(self, *, timeout: float | None = None) -> common_pb2.ModelInfo:
        try:
            return self._decoder.GetModelInfo(
                common_pb2.GetModelInfoRequest(), timeout=timeout or self.deadlines.info, metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise Sam3Error.from_rpc(error) from None

    def _segment(self, request: Any, timeout: float | None) -> Any:
        try:
            return self._decoder.Segment(request, timeout=timeout or self.deadlines.segment, metadata=self._metadata)
        except grpc.RpcError as error:
            raise Sam3Error.from_rpc(error) from None
