"""The concept half of SAM3 as torch modules: one trunk run for both prompt kinds, then text, exemplars, DETR.

The real checkpoint is a `Sam3VideoModel`: one ViT trunk shared by the detector (`Sam3Model`: FPN neck,
CLIP text encoder, geometry encoder, DETR, mask decoder) and the tracker (its own neck, prompt encoder,
mask decoder). Why the exemplar encoder is a graph of its own: transformers runs the geometry encoder only
when boxes are given (zero boxes would still add a CLS token and change the answer), so the caller
concatenates [text tokens, exemplar tokens] and their masks, exactly as `Sam3Model.forward` does, and
text-only prompts never trace a zero-sized RoiAlign.
"""

from __future__ import annotations

import torch
from torch import nn

from sam3_core.tokenizer import TEXT_LENGTH
from sam3_export.tracker_graphs import tracker_embeddings


class UnifiedEncoderGraph(nn.Module):
    """pixel_values -> the tracker's three embeddings and the detector's three FPN levels, one trunk run."""

    def __init__(self, video: nn.Module) -> None:
        super().__init__()
        self.video = video

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        detector = self.video.detector_model.vision_encoder
        tracker = self.video.tracker_model
        trunk = detector.backbone(pixel_values).last_hidden_state
        side = pixel_values.shape[-1] // detector.config.backbone_config.patch_size
        spatial = trunk.view(trunk.shape[0], side, side, -1).permute(0, 3, 1, 2)
        tracker_levels, _ = self.video.tracker_neck(spatial)
        detector_levels, _ = detector.neck(spatial)
        # The detector's 0.5x level is unused, as the tracker's is.
        return (*tracker_embeddings(tracker_levels, tracker), *detector_levels[:3])


def video_tracker_embeddings(video: nn.Module, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """The oracle for the tracker's embeddings of a single frame: transformers' own Sam3VideoModel path (shared
    trunk, tracker neck, then the initial-conditioning-frame features: the no-memory embedding on 72x72)."""
    tracker = video.tracker_model
    with torch.no_grad():
        vision = video.detector_model.get_vision_features(pixel_values=pixel_values)
        features, positions = video.get_vision_features_for_tracker(vision)
        conditioned = tracker._prepare_memory_conditioned_features(
            inference_session=None,
            frame_idx=0,
            obj_idx=0,
            is_initial_conditioning_frame=True,
            current_vision_features=features[-1],
            current_vision_positional_embeddings=positions[-1],
            num_total_frames=1,
        )
    high_resolution = [
        feature.permute(1, 2, 0).view(pixel_values.shape[0], -1, *size)
        for feature, size in zip(features[:-1], tracker.backbone_feature_sizes[:-1], strict=True)
    ]
    return [*high_resolution, conditioned]


class TextEncoderGraph(nn.Module):
    """Token ids -> the projected text features the DETR consumes, one row per phrase."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.detector.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


def _positions(detector: nn.Module, levels: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The detector neck's sine position encodings: functions of the shapes only, constants in the graph."""
    encoding = detector.vision_encoder.neck.position_encoding
    return tuple(encoding(level.shape, level.device, level.dtype) for level in levels)


class ExemplarEncoderGraph(nn.Module):
    """Exemplar boxes -> prompt tokens, as `Sam3Model.forward` computes them when boxes are given."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, features_2: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        outputs = self.detector.geometry_encoder(
            box_embeddings=boxes,
            box_mask=torch.ones_like(labels, dtype=torch.bool),
            box_labels=labels,
            img_feats=(features_2,),
            img_pos_embeds=_positions(self.detector, (features_2,)),
        )
        return outputs.last_hidden_state


class ConceptDecoderGraph(nn.Module):
    """Detector features + prompt tokens -> every query's logit, box, mask and the presence logit."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(
        self,
        features_0: torch.Tensor,
        features_1: torch.Tensor,
        features_2: torch.Tensor,
        prompt_features: torch.Tensor,
        prompt_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        levels = (features_0, features_1, features_2)
        positions = _positions(self.detector, levels)
        # Sam3Model.forward drops the last (0.5x) level of what it is given: pass a placeholder for it.
        vision = Sam3VisionEncoderOutput(
            fpn_hidden_states=(*levels, features_2), fpn_position_encoding=(*positions, positions[-1])
        )
        outputs = self.detector(
            vision_embeds=vision,
            text_embeds=BaseModelOutputWithPooling(pooler_output=prompt_features),
            attention_mask=prompt_mask,
        )
        return outputs.pred_logits, outputs.pred_boxes, outputs.pred_masks, outputs.presence_logits


def example_prompt(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids with padding, two exemplar boxes (cx, cy, w, h) and their labels (one positive, one negative)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 49408, (1, TEXT_LENGTH), generator=generator)
    mask = torch.zeros((1, TEXT_LENGTH), dtype=torch.int64)
    mask[:, :5] = 1
    boxes = torch.rand((1, 2, 2), generator=generator) * 0.5 + 0.25
    sizes = torch.rand((1, 2, 2), generator=generator) * 0.3 + 0.05
    return ids, mask, torch.cat([boxes, sizes], dim=-1), torch.tensor([[1, 0]])
