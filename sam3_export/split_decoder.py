"""The click decoder split in two: the image's share once per image, the click's share per click.

Same weights and the same function as `prompt_encoder_mask_decoder.onnx` (transformers'
Sam3TrackerMaskDecoder), rearranged so a click does about half the arithmetic:

- Once per image (`mask_decoder_image.onnx`, run when an image enters a decoder's cache): the image
  tokens with the no-mask embedding, the first two-way layer's image-side projections (its
  token-to-image keys and values, its image-to-token queries; nothing about them depends on the
  prompt), and the high-resolution features laid out the way the click graph adds them.
- Per click (`mask_decoder_click.onnx`): everything else. A click has few tokens T (6 output tokens
  + its points/box corners) against N = 5184 image tokens, so attention projections on the image side
  are folded into the token side: (X Wq) K^T = X (Wq K^T) costs N*C*heads*T instead of N*C*C/2, about
  2.3x less for a click or a box. The two transposed convolutions (kernel 2, stride 2: no overlap) are
  matrix products in a space-to-depth layout, so the upscaling needs no transposes; only the three
  output masks are put back in raster order.

- Per click with a mask prompt (`mask_decoder_mask_prompt.onnx`, then the click graph): a mask prompt
  (the previous answer's low-res logits) replaces the no-mask embedding in the image tokens, so the
  image-side projections that depend on it are recomputed for that click; the high-resolution features
  do not depend on it and stay cached. Plain clicks never run it.

The result equals the original graph's up to float32 rounding (sums in another order); `sam3 bench`
reports the mask-pixel agreement, and tests/test_split_decoder.py checks it against transformers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sam3_core.graphs import (
    DECODER_DYNAMIC_AXES,
    DECODER_OUTPUTS,
    DECODER_PROMPT_INPUTS,
    EMBEDDING_NAMES,
    SPLIT_CLICK_FILE,
    SPLIT_IMAGE_FILE,
    SPLIT_IMAGE_OUTPUTS,
    SPLIT_MASK_FILE,
    SPLIT_MASK_INPUTS,
    SPLIT_MASK_OUTPUTS,
)
from sam3_export.tracing import trace

# Output tokens ahead of the prompt's: object score, IoU, then the four mask tokens (0 = single mask).
_OBJECT_SCORE, _IOU, _FIRST_MASK, _MASK_TOKENS = 0, 1, 2, 4


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[..., L, heads*d] -> [..., heads, L, d]"""
    return x.unflatten(-1, (heads, -1)).transpose(-3, -2)


def _channels_last(embedding: torch.Tensor) -> torch.Tensor:
    """[1, C, H, W] -> [H*W, C] (a reshape, not an index: no Gather copy in the graph)."""
    return embedding.reshape(embedding.shape[1], -1).transpose(0, 1)


def _mix(attention: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention over projected heads [..., h, L, d], then the output projection."""
    weights = torch.softmax(q @ k.transpose(-1, -2) * attention.scaling, dim=-1)
    return attention.o_proj((weights @ v).transpose(-3, -2).flatten(-2))


def _with_position(model: nn.Module, keys: torch.Tensor) -> torch.Tensor:
    """Image tokens [N, C] plus the image-wide positional embedding."""
    return keys + model.get_image_wide_positional_embeddings()[0].flatten(1).transpose(0, 1)


def _first_layer_image_side(model: nn.Module, keys: torch.Tensor, with_pe: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Image tokens with their dense prompt [N, C] (and `_with_position` of them) -> (the tokens, the first
    two-way layer's token-to-image keys and values [h,N,d], its image-to-token queries [N,h*d]): everything
    the dense prompt reaches."""
    first = model.mask_decoder.transformer.layers[0]
    to_image = first.cross_attn_token_to_image
    heads = to_image.num_attention_heads
    return (
        keys,
        _split_heads(to_image.k_proj(with_pe), heads).contiguous(),  # [h,N,d]
        _split_heads(to_image.v_proj(keys), heads).contiguous(),
        first.cross_attn_image_to_token.q_proj(with_pe),  # [N,h*d]
    )


class ImageSide(nn.Module):
    """embeddings 0/1/2 -> the per-image tensors of `graphs.SPLIT_IMAGE_OUTPUTS`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, embedding_0: torch.Tensor, embedding_1: torch.Tensor, embedding_2: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        decoder = self.model.mask_decoder
        height, width = embedding_2.shape[-2:]
        dense = self.model.prompt_encoder.no_mask_embed.weight  # [1, C]: no mask prompt
        keys = _channels_last(embedding_2) + dense  # [N, C]
        with_pe = _with_position(self.model, keys)
        # Space-to-depth, channels last: s1[n, a] is pixel (2h+ay, 2w+ax) of the 2x grid with a = (ay, ax);
        # s0[n, a, b] is (4h+2ay+by, 4w+2ax+bx) of the 4x grid. Built by low-rank transposes of large
        # blocks (a 7-axis permute is ~4x slower in ONNX Runtime); the convolutions' biases go in too.
        s1 = _channels_last(embedding_1)  # [(h, ay, w, ax), C1]
        s1 = s1.reshape(height, 2, width, -1).transpose(1, 2).reshape(height * width, 4, -1)
        s0 = _channels_last(embedding_0)  # [(h, ay, by, w, ax, bx), C0]
        s0 = s0.reshape(height, 4, width, -1).transpose(1, 2)  # [h, w, (ay, by), (ax, bx, C0)]
        s0 = s0.reshape(height * width, 2, 2, 2, -1).transpose(2, 3).reshape(height * width, 4, 4, -1)
        return (
            *_first_layer_image_side(self.model, keys, with_pe),
            s1 + decoder.upscale_conv1.bias,
            s0 + decoder.upscale_conv2.bias,
        )


class MaskPromptSide(nn.Module):
    """A mask prompt + the image side's `image_tokens` -> the four image-side tensors it changes
    (`graphs.SPLIT_MASK_OUTPUTS`), which then replace the cached ones in one run of the click graph.

    The mask is one object's previous low-res logits [1, 1, h, w] (clamped by the caller, as SAM3 does);
    transformers embeds it with the prompt encoder's `mask_embed` where the no-mask embedding would be.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_masks: torch.Tensor, image_tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        prompt_encoder = self.model.prompt_encoder
        dense = _channels_last(prompt_encoder.mask_embed(input_masks))  # [N, C]
        keys = (image_tokens - prompt_encoder.no_mask_embed.weight) + dense  # the cached tokens carry no-mask
        return _first_layer_image_side(self.model, keys, _with_position(self.model, keys))


class ClickSide(nn.Module):
    """Prompts + the per-image tensors -> iou_scores, pred_masks, object_score_logits (three masks)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        decoder = model.mask_decoder
        self.heads = decoder.transformer.layers[0].cross_attn_token_to_image.num_attention_heads
        self.grid = tuple(model.prompt_encoder.image_embedding_size)  # (H, W) of the image tokens

    # -- attention where both sides are tokens (small): as transformers computes it
    def _attend(
        self, attention: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> torch.Tensor:
        q = _split_heads(attention.q_proj(query), self.heads)
        k = _split_heads(attention.k_proj(key), self.heads)
        v = _split_heads(attention.v_proj(value), self.heads)
        return _mix(attention, q, k, v)

    # -- tokens attend to the image; the image's key/value projections folded into the tokens
    def _tokens_to_image(
        self, attention: nn.Module, tokens: torch.Tensor, image_with_pe: torch.Tensor, image: torch.Tensor
    ) -> torch.Tensor:
        """tokens [Q,T,C]; image_with_pe, image [Q|1,N,C] -> [Q,T,C]."""
        q = _split_heads(attention.q_proj(tokens), self.heads)  # [Q,h,T,d]
        w_k = attention.k_proj.weight.unflatten(0, (self.heads, -1))  # [h,d,C]
        folded = q @ w_k  # [Q,h,T,C]
        bias = (q * attention.k_proj.bias.unflatten(0, (self.heads, -1)).unsqueeze(-2)).sum(-1, keepdim=True)
        scores = (folded.flatten(1, 2) @ image_with_pe.transpose(-1, -2)).unflatten(1, (self.heads, -1)) + bias
        weights = torch.softmax(scores * attention.scaling, dim=-1)  # [Q,h,T,N]
        mixed = (weights.flatten(1, 2) @ image).unflatten(1, (self.heads, -1))  # [Q,h,T,C]
        # Rows of `weights` sum to 1, so the value bias passes through unchanged.
        w_v = attention.v_proj.weight.unflatten(0, (self.heads, -1))  # [h,d,C]
        values = mixed @ w_v.transpose(-1, -2) + attention.v_proj.bias.unflatten(0, (self.heads, -1)).unsqueeze(-2)
        return attention.o_proj(values.transpose(1, 2).flatten(-2))

    def _tokens_to_precomputed_image(
        self, attention: nn.Module, tokens: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        """The first layer's: image keys and values [h,N,d], projected once per image."""
        return _mix(attention, _split_heads(attention.q_proj(tokens), self.heads), keys, values)

    # -- the image attends to the tokens: scores come out as [Q,N,h*T], the output projection is folded
    def _image_to_tokens(self, attention: nn.Module, scores: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """scores [Q,N,h*T] (unscaled); tokens [Q,T,C] (the values' input) -> [Q,N,C]."""
        weights = torch.softmax((scores * attention.scaling).unflatten(-1, (self.heads, -1)), dim=-1).flatten(-2)
        v = _split_heads(attention.v_proj(tokens), self.heads)  # [Q,h,T,d]
        w_o = attention.o_proj.weight.transpose(0, 1).unflatten(0, (self.heads, -1))  # [h,d,C]
        return weights @ (v @ w_o).flatten(1, 2) + attention.o_proj.bias

    def _token_keys(self, attention: nn.Module, tokens_with_pe: torch.Tensor) -> torch.Tensor:
        return _split_heads(attention.k_proj(tokens_with_pe), self.heads)  # [Q,h,T,d]

    def _scores_from_projected(self, image_queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """image_queries [N,h*d] (projected once per image) x token keys [Q,h,T,d] -> [Q,N,h*T], through a
        block-diagonal [h*d, h*T] matrix so no image-sized tensor is transposed."""
        eye = torch.eye(self.heads, dtype=keys.dtype)
        block = keys.transpose(-1, -2).unsqueeze(3) * eye[None, :, None, :, None]  # [Q,h,d,h,T]
        return image_queries @ block.flatten(1, 2).flatten(-2)

    def _scores_folded(self, attention: nn.Module, image_with_pe: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(X Wq + bq) K^T = X (Wq K^T) + bq K^T: image [Q,N,C] x token keys [Q,h,T,d] -> [Q,N,h*T]."""
        w_q = attention.q_proj.weight.unflatten(0, (self.heads, -1))  # [h,d,C]
        folded = (keys @ w_q).flatten(1, 2).transpose(1, 2)  # [Q,C,h*T]
        bias = (keys * attention.q_proj.bias.unflatten(0, (self.heads, -1)).unsqueeze(-2)).sum(-1)  # [Q,h,T]
        return image_with_pe @ folded + bias.flatten(1).unsqueeze(1)

    def forward(
        self,
        input_points: torch.Tensor,
        input_labels: torch.Tensor,
        input_boxes: torch.Tensor,
        image_tokens: torch.Tensor,
        first_keys: torch.Tensor,
        first_values: torch.Tensor,
        first_image_queries: torch.Tensor,
        high_res_1: torch.Tensor,
        high_res_0: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model, decoder = self.model, self.model.mask_decoder
        transformer = decoder.transformer
        batch, prompts = input_points.shape[0], input_points.shape[1]
        point_tokens = model.prompt_encoder._embed_points(input_points, input_labels, pad=False)
        box_tokens = model.prompt_encoder._embed_boxes(input_boxes)
        box_tokens = box_tokens.reshape(batch, prompts, -1, box_tokens.shape[-1])
        sparse = torch.cat([point_tokens, box_tokens], dim=2).flatten(0, 1)  # [Q,S,C], Q = batch*prompts
        output_tokens = torch.cat(
            [decoder.obj_score_token.weight, decoder.iou_token.weight, decoder.mask_tokens.weight]
        )
        prompt_pe = torch.cat([output_tokens.expand(sparse.shape[0], -1, -1), sparse], dim=1)  # [Q,T,C]
        image_pe = model.get_image_wide_positional_embeddings()[0].flatten(1).transpose(0, 1)  # [N,C]
        first, second = transformer.layers

        # Layer 0 (no positional embedding on its self-attention, which replaces the tokens).
        queries = first.layer_norm1(self._attend(first.self_attn, prompt_pe, prompt_pe, prompt_pe))
        attended = self._tokens_to_precomputed_image(
            first.cross_attn_token_to_image, queries + prompt_pe, first_keys, first_values
        )
        queries = first.layer_norm2(queries + attended)
        queries = first.layer_norm3(queries + first.mlp(queries))
        attention = first.cross_attn_image_to_token
        keys = self._token_keys(attention, queries + prompt_pe)
        scores = self._scores_from_projected(first_image_queries, keys)
        keys = first.layer_norm4(image_tokens + self._image_to_tokens(attention, scores, queries))  # [Q,N,C]

        # Layer 1.
        query = queries + prompt_pe
        queries = second.layer_norm1(queries + self._attend(second.self_attn, query, query, queries))
        attended = self._tokens_to_image(second.cross_attn_token_to_image, queries + prompt_pe, keys + image_pe, keys)
        queries = second.layer_norm2(queries + attended)
        queries = second.layer_norm3(queries + second.mlp(queries))
        attention = second.cross_attn_image_to_token
        scores = self._scores_folded(attention, keys + image_pe, self._token_keys(attention, queries + prompt_pe))
        keys = second.layer_norm4(keys + self._image_to_tokens(attention, scores, queries))

        # Final token-to-image attention.
        final = transformer.final_attn_token_to_image
        attended = self._tokens_to_image(final, queries + prompt_pe, keys + image_pe, keys)
        queries = transformer.layer_norm_final_attn(queries + attended)

        # Upscaling: ConvTranspose(k=2, s=2) == per-pixel matrix product into 2x2 sub-pixels.
        conv1, conv2 = decoder.upscale_conv1, decoder.upscale_conv2
        w1 = conv1.weight.permute(0, 2, 3, 1).flatten(1)  # [C, (ay,ax,c1)]
        up = (keys @ w1).unflatten(-1, (4, -1)) + high_res_1  # [Q,N,4,c1]; the image side added the bias
        up = decoder.activation(_layer_norm(decoder.upscale_layer_norm, up))
        w2 = conv2.weight.permute(0, 2, 3, 1).flatten(1)  # [c1, (by,bx,c0)]
        up = (up @ w2).unflatten(-1, (4, -1)) + high_res_0  # [Q,N,4,4,c0]
        up = decoder.activation(up).flatten(1, 3)  # [Q, N*16, c0]

        mask_tokens = queries[:, _FIRST_MASK : _FIRST_MASK + _MASK_TOKENS]
        hyper_in = torch.stack(
            [mlp(mask_tokens[:, i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
        )  # [Q,4,c0]
        masks = hyper_in[:, 1:] @ up.transpose(1, 2)  # [Q,3,N*16] in space-to-depth order
        height, width = self.grid
        masks = masks.unflatten(-1, (height, width, 2, 2, 2, 2)).permute(0, 1, 2, 4, 6, 3, 5, 7)
        masks = masks.reshape(batch, prompts, 3, height * 4, width * 4)
        iou = decoder.iou_prediction_head(queries[:, _IOU])[:, 1:].reshape(batch, prompts, 3)
        objects = decoder.pred_obj_score_head(queries[:, _OBJECT_SCORE]).reshape(batch, prompts, 1)
        return iou, masks, objects


def _layer_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Sam3TrackerLayerNorm(channels_first) over the last axis of a channels-last tensor."""
    return torch.nn.functional.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def export_split_decoder(model: nn.Module, out_dir: Path, embeddings: tuple[torch.Tensor, ...]) -> None:
    """Writes mask_decoder_image.onnx, mask_decoder_click.onnx and mask_decoder_mask_prompt.onnx beside the
    standard decoder."""
    image_side = ImageSide(model).eval()
    trace(image_side, embeddings, out_dir / SPLIT_IMAGE_FILE, EMBEDDING_NAMES, SPLIT_IMAGE_OUTPUTS)
    with torch.no_grad():
        prepared = image_side(*embeddings)
    example = (torch.tensor([[[[100.0, 200.0]]]]), torch.tensor([[[1]]], dtype=torch.int64), torch.zeros((1, 0, 4)))
    trace(
        ClickSide(model).eval(),
        (*example, *prepared),
        out_dir / SPLIT_CLICK_FILE,
        [*DECODER_PROMPT_INPUTS, *SPLIT_IMAGE_OUTPUTS],
        DECODER_OUTPUTS,
        DECODER_DYNAMIC_AXES,
    )
    height, width = embeddings[0].shape[-2:]  # the low-res masks have the finest embedding's size
    mask = torch.zeros((1, 1, height, width))
    trace(MaskPromptSide(model), (mask, prepared[0]), out_dir / SPLIT_MASK_FILE, SPLIT_MASK_INPUTS, SPLIT_MASK_OUTPUTS)
