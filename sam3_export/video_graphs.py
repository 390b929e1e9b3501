"""The video tracker's graphs as torch modules (docs/video.md): memory attention, the tracking decoder, the
memory encoder and the mask prompt's downsampler, all with objects on the batch dimension.

Every graph takes a frame's features as the encoder emits them (`image_embeddings.2` with SAM3's
`no_memory_embedding` already added, `tracker_graphs.tracker_embeddings`) and subtracts that vector where the
tracker wants the bare features: one encode serves clicks, concepts and tracking. `tracker` is a
`Sam3TrackerVideoModel` (a Sam3VideoModel's `tracker_model`, or a standalone one); `position` is the tracker
neck's sine position encoding of the 72x72 level, which transformers adds before memory attention.

Memory counts are dynamic axes and there are no validity masks: ONNX Runtime's fused CPU attention has no
memory-efficient path with a key mask (measured on one full-size cross-attention, 5184 queries x 51,904 keys:
5.1 s and 306 MB without a mask, 8.6 s and 1.4 GB with one), so the runtime groups objects whose memory
counts agree and feeds exactly the memories each group has.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def frame_features(tracker: nn.Module, embedding_2: torch.Tensor) -> torch.Tensor:
    """`image_embeddings.2` without SAM3's no-memory vector: the features memory attention conditions."""
    return embedding_2 - tracker.no_memory_embedding.reshape(1, -1, 1, 1)


def _rotate_pairwise(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(*x.shape[:-1], -1, 2)
    return torch.stack((-x[..., 1], x[..., 0]), dim=-1).flatten(start_dim=-2)


def _rope_attention(
    attention: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    rotated_frames: int,
) -> torch.Tensor:
    """transformers' Sam3TrackerVideoRoPEAttention on [B, L, D] tensors: RoPE on the queries and on the first
    `rotated_frames` x HW keys (the spatial memories; object pointers are not rotated). `cos` and `sin`
    [1, 1, HW, head_dim] broadcast over heads, and over memories too."""
    batch, heads, head_dim = query.shape[0], attention.num_attention_heads, attention.head_dim

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(batch, x.shape[1], heads, head_dim).transpose(1, 2)

    q, k, v = split(attention.q_proj(query)), split(attention.k_proj(key)), split(attention.v_proj(value))
    q = q * cos + _rotate_pairwise(q) * sin
    positions = cos.shape[-2]
    spatial = rotated_frames * positions
    k_rot = k[:, :, :spatial].reshape(batch, heads, rotated_frames, positions, head_dim)
    k_rot = k_rot * cos + _rotate_pairwise(k_rot) * sin
    k = torch.cat([k_rot.reshape(batch, heads, spatial, head_dim), k[:, :, spatial:]], dim=2)
    out = F.scaled_dot_product_attention(q, k, v, scale=attention.scaling)
    return attention.o_proj(out.transpose(1, 2).reshape(batch, -1, heads * head_dim))


class MemoryAttentionGraph(nn.Module):
    """A frame's features conditioned on one memory bank per object.

    Inputs: image_embeddings.2 [1, C, H, W]; memory_features [B, S, 64, H, W] (S memories per object);
    memory_time [B, S] int64 (which temporal encoding each memory takes: 6 for a prompted frame, k - 1 for
    the frame k steps back); object_pointers [B, P, C]; pointer_time [B, P] float32 (the pointer's frame
    distance over the pointer window, as transformers normalises it). Output: conditioned [B, C, H, W].
    """

    def __init__(self, tracker: nn.Module, position: torch.Tensor) -> None:
        super().__init__()
        self.tracker = tracker
        self.register_buffer("vision_position", position.flatten(2).transpose(1, 2), persistent=False)
        channels, (height, width) = tracker.mem_dim, tracker.backbone_feature_sizes[-1]
        memory_position = tracker.memory_encoder.position_encoding(
            torch.Size([1, channels, height, width]), position.device, position.dtype
        )
        self.register_buffer("memory_position", memory_position.flatten(2).transpose(1, 2)[:, None], persistent=False)
        attention = tracker.memory_attention
        cos, sin = attention.rotary_emb(position, attention.position_ids)
        self.register_buffer("cos", cos[None], persistent=False)  # [1, 1, HW, head_dim]: heads, then memories
        self.register_buffer("sin", sin[None], persistent=False)

    def forward(
        self,
        embedding_2: torch.Tensor,
        memory_features: torch.Tensor,
        memory_time: torch.Tensor,
        object_pointers: torch.Tensor,
        pointer_time: torch.Tensor,
    ) -> torch.Tensor:
        from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import get_1d_sine_pe

        tracker = self.tracker
        batch, slots, memory_channels = memory_features.shape[:3]
        _, channels, height, width = embedding_2.shape
        queries = frame_features(tracker, embedding_2).flatten(2).transpose(1, 2)
        queries = (queries + 0.1 * self.vision_position).expand(batch, -1, -1)

        memory = memory_features.flatten(3).transpose(2, 3)  # [B, S, HW, 64]
        temporal = tracker.memory_temporal_positional_encoding.reshape(-1, memory_channels)[memory_time]
        memory_position = self.memory_position + temporal[:, :, None, :]
        pointer_count = object_pointers.shape[1]
        splits = channels // memory_channels
        pointers = object_pointers.reshape(batch, pointer_count * splits, memory_channels)
        pointer_position = tracker.temporal_positional_encoding_projection_layer(
            get_1d_sine_pe(pointer_time, dim=channels)
        ).repeat_interleave(splits, dim=1)
        keys = torch.cat([memory.reshape(batch, -1, memory_channels), pointers], dim=1)
        key_position = torch.cat([memory_position.reshape(batch, -1, memory_channels), pointer_position], dim=1)

        attention = tracker.memory_attention
        for layer in attention.layers:
            query = layer.layer_norm1(queries)
            queries = queries + _rope_attention(layer.self_attn, query, query, query, self.cos, self.sin, 1)
            query = layer.layer_norm2(queries)
            queries = queries + _rope_attention(
                layer.cross_attn_image, query, keys + key_position, keys, self.cos, self.sin, slots
            )
            query = layer.layer_norm3(queries)
            queries = queries + layer.linear2(layer.activation(layer.linear1(query)))
        conditioned = attention.layer_norm(queries)
        return conditioned.transpose(1, 2).reshape(batch, channels, height, width)


class TrackingDecoderGraph(nn.Module):
    """The tracker's prompt encoder + mask decoder on conditioned features, every candidate kept.

    Inputs: conditioned [B, C, H, W]; image_embeddings.0/.1 of the frame [1, ...]; input_points [B, N, 2]
    (model pixels, box corners labelled 2 and 3, the "not a point" pad appended by the caller) and
    input_labels [B, N]; mask_inputs [B, 1, 4H, 4W] with use_mask_inputs [B] (1: a dense mask prompt, 0: none);
    object_present [B] (0 forces the "no object" pointer: a mask prompt with an empty mask).
    Outputs: masks [B, 4, 4H, 4W] (token 0 = the single-mask answer, 1..3 = the multimask ones), iou_scores
    [B, 4], object_score_logits [B, 1], object_pointers [B, 4, C] (one per mask token, gated by presence).
    The caller picks the answer as transformers does (multimask: best IoU of 1..3; else token 0 with the
    dynamic stability fallback), so one graph serves prompted and tracked frames.
    """

    def __init__(self, tracker: nn.Module) -> None:
        super().__init__()
        self.tracker = tracker

    def forward(
        self,
        conditioned: torch.Tensor,
        embedding_0: torch.Tensor,
        embedding_1: torch.Tensor,
        input_points: torch.Tensor,
        input_labels: torch.Tensor,
        mask_inputs: torch.Tensor,
        use_mask_inputs: torch.Tensor,
        object_present: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        tracker = self.tracker
        prompt_encoder, decoder = tracker.prompt_encoder, tracker.mask_decoder
        batch, channels, height, width = conditioned.shape
        sparse = prompt_encoder._embed_points(input_points[:, None], input_labels[:, None], pad=False)
        no_mask = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        use_mask = use_mask_inputs.reshape(-1, 1, 1, 1)
        dense = use_mask * prompt_encoder.mask_embed(mask_inputs) + (1 - use_mask) * no_mask
        tokens = torch.cat([decoder.obj_score_token.weight, decoder.iou_token.weight, decoder.mask_tokens.weight], 0)
        tokens = torch.cat([tokens[None, None].expand(batch, 1, -1, -1), sparse], dim=2)
        positional = tracker.get_image_wide_positional_embeddings().expand(batch, -1, -1, -1)
        tokens, image = decoder.transformer(
            point_embeddings=tokens,
            image_embeddings=conditioned + dense,
            image_positional_embeddings=positional,
            attention_similarity=None,
        )
        mask_tokens = tokens[:, 0, 2 : 2 + decoder.num_mask_tokens]
        image = image.transpose(2, 3).reshape(batch, channels, height, width)
        upscaled = decoder.upscale_conv1(image) + embedding_1
        upscaled = decoder.activation(decoder.upscale_layer_norm(upscaled))
        upscaled = decoder.activation(decoder.upscale_conv2(upscaled) + embedding_0)
        hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], 1)
        _, upscaled_channels, mask_height, mask_width = upscaled.shape
        masks = (hyper @ upscaled.reshape(batch, upscaled_channels, -1)).reshape(batch, -1, mask_height, mask_width)
        iou_scores = decoder.iou_prediction_head(tokens[:, 0, 1])
        object_score_logits = decoder.pred_obj_score_head(tokens[:, 0, 0])
        present = ((object_score_logits > 0).to(conditioned.dtype) * object_present.reshape(-1, 1))[:, :, None]
        pointers = tracker.object_pointer_proj(mask_tokens)
        pointers = present * pointers + (1 - present) * tracker.no_object_pointer
        return masks, iou_scores, object_score_logits, pointers


class MemoryEncoderGraph(nn.Module):
    """A frame's memory for each object: its mask + the frame's features -> 64 channels at 72x72.

    Inputs: image_embeddings.2 [1, C, H, W]; mask_logits [B, 1, h, w] (the chosen low-res logits, or a mask
    prompt's logits at the input size); binarize [B] bool (masks from prompts are thresholded, tracked ones go
    through a sigmoid); object_score_logits [B, 1] (absent objects get the occlusion embedding).
    Output: memory_features [B, 64, H, W] in float32 (transformers keeps them in bfloat16: the runtime rounds).
    """

    def __init__(self, tracker: nn.Module) -> None:
        super().__init__()
        self.tracker = tracker

    def forward(
        self,
        embedding_2: torch.Tensor,
        mask_logits: torch.Tensor,
        binarize: torch.Tensor,
        object_score_logits: torch.Tensor,
    ) -> torch.Tensor:
        tracker, config = self.tracker, self.tracker.config
        size = tracker.image_size
        memory_size = [4 * side for side in tracker.prompt_encoder.mask_input_size]
        # transformers upsamples to the image size, then (antialiased, which changes nothing when enlarging)
        # to the memory encoder's input size: 4x the low-res mask size (1152 for SAM3's 1008 input).
        high = F.interpolate(mask_logits, size=(size, size), mode="bilinear", align_corners=False)
        high = F.interpolate(high, size=memory_size, mode="bilinear", align_corners=False)
        mask = torch.where(binarize.reshape(-1, 1, 1, 1), (high > 0).to(high.dtype), torch.sigmoid(high))
        mask = mask * config.sigmoid_scale_for_mem_enc + config.sigmoid_bias_for_mem_enc
        features = frame_features(tracker, embedding_2).expand(mask.shape[0], -1, -1, -1)
        memory, _ = tracker.memory_encoder(features, mask)
        if tracker.occlusion_spatial_embedding_parameter is not None:
            absent = 1 - (object_score_logits > 0).to(memory.dtype).reshape(-1, 1, 1, 1)
            memory = memory + absent * tracker.occlusion_spatial_embedding_parameter.reshape(1, -1, 1, 1)
        return memory


class MaskPromptGraph(nn.Module):
    """A mask prompt -> the dense prompt the decoder takes for it, and the frame's bare features.

    transformers answers a mask prompt with the mask itself and asks the decoder only for the object
    pointer: the decoder then sees `mask_downsample(mask)` enlarged to the low-res size (antialiased, which
    changes nothing when enlarging) on the frame's features without memory and without the no-memory vector.
    Inputs: masks [B, 1, S, S] (0/1 at the input size), image_embeddings.2. Outputs: mask_inputs [B, 1, 4H, 4W],
    frame_features [1, C, H, W].
    """

    def __init__(self, tracker: nn.Module) -> None:
        super().__init__()
        self.tracker = tracker

    def forward(self, masks: torch.Tensor, embedding_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = list(self.tracker.prompt_encoder.mask_input_size)
        downsampled = self.tracker.mask_downsample(masks)
        mask_inputs = F.interpolate(downsampled, size=size, mode="bilinear", align_corners=False)
        return mask_inputs, frame_features(self.tracker, embedding_2)
