"""Named model sizes for random-weight exports: "full" (SAM3 itself) and "tiny" (the test fixtures).

"tiny" keeps every I/O shape of the real model (1008 input, the tracker's 256/64/32-channel embeddings at
72/144/288, 256-channel detector features, 32 text tokens, CLIP's 49,408-token vocabulary, 200 queries,
288x288 masks) and shrinks only what is inside the graphs: a 2-layer ViT of width 32, a narrower click
decoder MLP, a 1-layer CLIP of width 16, one layer each for the geometry encoder and the DETR
encoder/decoder, and a 2x2 RoiAlign (7x7 in the real model: its 256x256x7x7 projection alone would be
13 MB of fixture). The fixtures therefore exercise the true tensor contract, the true store sizes and the
true decoder cost, at a few MB of ONNX.
"""

from __future__ import annotations

from typing import Any

from sam3_core.tokenizer import TEXT_LENGTH

_TINY_BACKBONE = {
    "model_type": "sam3_vit_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "global_attn_indexes": [1],
}
_TINY_MASK_DECODER = {"mlp_dim": 256, "iou_head_hidden_dim": 64}

# Sam3TrackerConfig overrides per size (a `--tracker-only` export).
TRACKER_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"vision_config": {"backbone_config": _TINY_BACKBONE}, "mask_decoder_config": _TINY_MASK_DECODER},
    "full": {},
}

_TINY_VISION = {"model_type": "sam3_vision_model", "backbone_config": _TINY_BACKBONE}
_TINY_DETR = {"num_layers": 1, "intermediate_size": 256}
# Sam3VideoConfig overrides per size (the default export: clicks and concepts from one trunk).
VIDEO_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "detector_config": {
            "vision_config": _TINY_VISION,
            "text_config": {
                "model_type": "clip_text_model",
                "vocab_size": 49408,
                "hidden_size": 16,
                "intermediate_size": 32,
                "projection_dim": 16,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "max_position_embeddings": TEXT_LENGTH,
                "hidden_act": "gelu",
            },
            "geometry_encoder_config": {"num_layers": 1, "intermediate_size": 256, "roi_size": 2},
            "detr_encoder_config": _TINY_DETR,
            "detr_decoder_config": _TINY_DETR,
        },
        "tracker_config": {
            "vision_config": _TINY_VISION,
            "mask_decoder_config": _TINY_MASK_DECODER,
            "memory_attention_num_layers": 1,
            "memory_attention_feed_forward_hidden_size": 64,
            "memory_fuser_num_layers": 1,
            "memory_fuser_intermediate_dim": 64,
        },
    },
    "full": {},
}

# Sam3TrackerVideoConfig of the committed video fixture (tests/fixtures/model-tiny-video): the tiny ViT, with a
# 224-pixel input (16x16 features) and 128 hidden channels, so that memory attention, which scales with the
# square of the feature map and with the hidden size, costs milliseconds in tests. Memory channels stay 64
# (transformers hard-codes the cross-attention's key width) and 128 // 64 = 2 keeps the split of each object
# pointer into tokens under test. The full-size shapes are checked by exporting "tiny" or "full" with --validate.
_MICRO = 128
_MICRO_VIDEO_TRACKER: dict[str, Any] = {
    "vision_config": {
        "model_type": "sam3_vision_model",
        "backbone_config": {**_TINY_BACKBONE, "image_size": 224, "window_size": 8, "pretrain_image_size": 112},
        "fpn_hidden_size": _MICRO,
    },
    "prompt_encoder_config": {"hidden_size": _MICRO},
    "mask_decoder_config": {"hidden_size": _MICRO, "mlp_dim": 128, "iou_head_hidden_dim": 32},
    "image_size": 224,
    "memory_attention_hidden_size": _MICRO,
    "memory_attention_num_layers": 1,
    "memory_attention_feed_forward_hidden_size": 64,
    "memory_encoder_hidden_size": _MICRO,
    "mask_downsampler_embed_dim": _MICRO,
    "memory_fuser_embed_dim": _MICRO,
    "memory_fuser_num_layers": 1,
    "memory_fuser_intermediate_dim": 64,
}
# Sam3TrackerVideoConfig overrides per size (a standalone video tracker: the fixture, and the benchmark's
# comparison with transformers on the same weights).
VIDEO_TRACKER_CONFIGS: dict[str, dict[str, Any]] = {"micro": _MICRO_VIDEO_TRACKER, "full": {}}
