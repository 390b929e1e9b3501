"""The tracker's two graphs as torch modules: the vision encoder and the click/box decoder.

They reproduce onnx-community/sam3-tracker-ONNX's contract (docs/model-contract.md), with one correction:
the encoder adds `no_memory_embedding` to the 72x72 level as SAM3 itself does (`tracker_embeddings`;
transformers' `Sam3TrackerModel.get_image_embeddings` drops it). The decoder never adds the "not a point"
pad that transformers appends to clicks-only prompts: callers append (0, 0, label -1) themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


def tracker_embeddings(fpn_levels: Sequence[torch.Tensor], tracker: nn.Module) -> tuple[torch.Tensor, ...]:
    """The tracker neck's FPN levels -> the three embeddings the click decoder reads, as SAM3 computes them.

    The neck returns NCHW levels at 4x, 2x, 1x and 0.5x the trunk's 72x72 grid; the tracker uses the
    first three. conv_s0/conv_s1 project the two high-resolution ones (to 32 and 64 channels) and
    `no_memory_embedding` goes onto the 72x72 level: SAM3 adds it to every frame without memory,
    single images included. transformers' `Sam3TrackerModel` adds it to the 0.5x level, which it then
    discards (docs/model-contract.md). `tracker` is a Sam3TrackerModel or a Sam3VideoModel's tracker.
    """
    high_res_0, high_res_1, lowest = fpn_levels[:3]
    no_memory = tracker.no_memory_embedding.reshape(1, -1, 1, 1)
    return (tracker.mask_decoder.conv_s0(high_res_0), tracker.mask_decoder.conv_s1(high_res_1), lowest + no_memory)


class VisionEncoderGraph(nn.Module):
    """pixel_values -> the three embeddings the tracker's mask decoder consumes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tracker_embeddings(self.model.vision_encoder(pixel_values).fpn_hidden_states, self.model)


def image_embeddings(model: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What the exported encoder computes, in torch (the SAM3 semantics, unlike `get_image_embeddings`)."""
    with torch.no_grad():
        return VisionEncoderGraph(model)(pixel_values)


class PromptDecoderGraph(nn.Module):
    """Prompt encoder + mask decoder on precomputed embeddings, always with three candidate masks."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_points: torch.Tensor,
        input_labels: torch.Tensor,
        input_boxes: torch.Tensor,
        embedding_0: torch.Tensor,
        embedding_1: torch.Tensor,
        embedding_2: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        prompt_encoder = self.model.prompt_encoder
        batch, prompts = input_points.shape[0], input_points.shape[1]
        point_tokens = prompt_encoder._embed_points(input_points, input_labels, pad=False)
        box_tokens = prompt_encoder._embed_boxes(input_boxes)
        # [B,0,3,D] when no prompt has a box: reshaping to [B,P,0,D] lets clicks-only prompts through.
        box_tokens = box_tokens.reshape(batch, prompts, -1, box_tokens.shape[-1])
        sparse = torch.cat([point_tokens, box_tokens], dim=2)
        height, width = embedding_2.shape[-2:]
        dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, height, width)
        positional = self.model.get_image_wide_positional_embeddings().repeat(batch, 1, 1, 1)
        masks, iou_scores, _, object_score_logits = self.model.mask_decoder(
            image_embeddings=embedding_2,
            image_positional_embeddings=positional,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            high_resolution_features=[embedding_0, embedding_1],
        )
        return iou_scores, masks, object_score_logits


@dataclass(frozen=True)
class GraphInputs:
    """Example inputs used to trace (and then to validate) the tracker's graphs."""

    pixel_values: torch.Tensor
    points: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor


def example_inputs(image_size: int, seed: int) -> GraphInputs:
    generator = torch.Generator().manual_seed(seed)
    points = torch.rand((1, 2, 3, 2), generator=generator) * image_size
    labels = torch.tensor([[[1, 0, 1], [1, 1, -10]]], dtype=torch.int64)
    corners = torch.rand((1, 2, 2, 2), generator=generator).sort(dim=2).values * image_size
    return GraphInputs(
        pixel_values=torch.randn((1, 3, image_size, image_size), generator=generator),
        points=points,
        labels=labels,
        boxes=corners.reshape(1, 2, 4),
    )
