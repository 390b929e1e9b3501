"""The video tracker's four graphs of a model folder (docs/video.md), run with ONNX Runtime.

`sam3 models export` writes them beside the encoder and the click graphs, with a "video" section in
manifest.json that says how transformers drives them (memory sizes, multimask rules). Frame features are
the encoder's usual three embeddings: this class never runs the encoder.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from sam3_core import graphs
from sam3_core.model import ModelNotFoundError, RuntimeOptions
from sam3_core.tracking.bank import BankLimits


class TrackingNotSupportedError(ModelNotFoundError):
    """A folder without the video graphs (onnx-community's, or exported before they existed)."""

    def __init__(self, folder: Path, missing: str) -> None:
        super().__init__(
            f"model folder {folder} cannot track objects through a video: {missing}. Export a folder with the "
            "video graphs with `sam3 models export --checkpoint DIR --out DIR` (a Sam3VideoModel checkpoint) or "
            "`--random-init --config tiny|full`."
        )


@dataclass(frozen=True)
class DecoderRules:
    """When transformers asks its mask decoder for three masks, and how it falls back from one."""

    multimask_output_in_sam: bool
    multimask_output_for_tracking: bool
    multimask_min_pt_num: int
    multimask_max_pt_num: int
    dynamic_multimask_via_stability: bool
    stability_delta: float
    stability_thresh: float

    def multimask(self, initial: bool, point_count: int) -> bool:
        """transformers' `_use_multimask`: box corners count as points, the pad does not."""
        wanted = self.multimask_output_in_sam and (initial or self.multimask_output_for_tracking)
        return wanted and self.multimask_min_pt_num <= point_count <= self.multimask_max_pt_num


class VideoGraphs:
    """Memory attention, the tracking decoder, the memory encoder and the mask prompt, with the rules
    the folder's manifest records for them."""

    def __init__(self, folder: str | os.PathLike[str], *, runtime: RuntimeOptions = RuntimeOptions()) -> None:
        self.folder = Path(folder)
        missing = graphs.missing_video_parts(self.folder)
        if missing:
            raise TrackingNotSupportedError(self.folder, f"{', '.join(missing)} missing")
        video: dict[str, Any] = json.loads((self.folder / "manifest.json").read_text())["video"]
        self.image_size = int(video["image_size"])
        self.limits = BankLimits(
            num_maskmem=int(video["num_maskmem"]),
            max_cond_frame_num=int(video["max_cond_frame_num"]),
            max_object_pointers=int(video["max_object_pointers_in_encoder"]),
        )
        self.rules = DecoderRules(
            multimask_output_in_sam=bool(video["multimask_output_in_sam"]),
            multimask_output_for_tracking=bool(video["multimask_output_for_tracking"]),
            multimask_min_pt_num=int(video["multimask_min_pt_num"]),
            multimask_max_pt_num=int(video["multimask_max_pt_num"]),
            dynamic_multimask_via_stability=bool(video["dynamic_multimask_via_stability"]),
            stability_delta=float(video["dynamic_multimask_stability_delta"]),
            stability_thresh=float(video["dynamic_multimask_stability_thresh"]),
        )
        options, providers = runtime.session_options(), runtime.resolved_providers()
        self._sessions = {
            name: ort.InferenceSession(str(self.folder / name), sess_options=options, providers=providers)
            for name in graphs.VIDEO_FILES
        }
        digest = hashlib.sha256()
        for name in graphs.VIDEO_FILES:
            for part in graphs.data_files(self.folder / name):
                with part.open("rb") as handle:
                    digest.update(hashlib.file_digest(handle, "sha256").digest())
        self.model_id = f"video-{digest.hexdigest()[:16]}"
        decoder_inputs = {i.name: i.shape for i in self._sessions[graphs.TRACKING_DECODER_FILE].get_inputs()}
        self.mask_size = (int(decoder_inputs["mask_inputs"][2]), int(decoder_inputs["mask_inputs"][3]))

    def _run(self, name: str, input_names: tuple[str, ...], outputs: tuple[str, ...], *values: np.ndarray) -> list:
        return self._sessions[name].run(list(outputs), dict(zip(input_names, values, strict=True)))

    def memory_attention(
        self,
        embedding_2: np.ndarray,
        memory_features: np.ndarray,
        memory_time: np.ndarray,
        object_pointers: np.ndarray,
        pointer_time: np.ndarray,
    ) -> np.ndarray:
        """[1, C, H, W] frame features + per-object banks [B, S, 64, H, W], [B, S], [B, P, C], [B, P] ->
        conditioned features [B, C, H, W]."""
        (conditioned,) = self._run(
            graphs.MEMORY_ATTENTION_FILE,
            graphs.MEMORY_ATTENTION_INPUTS,
            (graphs.MEMORY_ATTENTION_OUTPUT,),
            embedding_2,
            memory_features,
            memory_time.astype(np.int64),
            object_pointers,
            pointer_time.astype(np.float32),
        )
        return conditioned

    def decode(
        self,
        conditioned: np.ndarray,
        embedding_0: np.ndarray,
        embedding_1: np.ndarray,
        points: np.ndarray,
        labels: np.ndarray,
        mask_inputs: np.ndarray | None = None,
        object_present: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """-> (masks [B, 4, h, w], iou_scores [B, 4], object_score_logits [B, 1], object_pointers [B, 4, C])."""
        count = conditioned.shape[0]
        use_mask = np.full(count, 0.0 if mask_inputs is None else 1.0, np.float32)
        if mask_inputs is None:
            mask_inputs = np.zeros((count, 1, *self.mask_size), np.float32)
        present = np.ones(count, np.float32) if object_present is None else object_present.astype(np.float32)
        masks, iou, scores, pointers = self._run(
            graphs.TRACKING_DECODER_FILE,
            graphs.TRACKING_DECODER_INPUTS,
            graphs.TRACKING_DECODER_OUTPUTS,
            conditioned,
            embedding_0,
            embedding_1,
            points.astype(np.float32),
            labels.astype(np.int64),
            mask_inputs,
            use_mask,
            present,
        )
        return masks, iou, scores, pointers

    def encode_memory(
        self, embedding_2: np.ndarray, mask_logits: np.ndarray, binarize: np.ndarray, object_score_logits: np.ndarray
    ) -> np.ndarray:
        """Masks [B, 1, h, w] (low-res logits, or a mask prompt's at the input size) -> memories [B, 64, H, W]."""
        (features,) = self._run(
            graphs.MEMORY_ENCODER_FILE,
            graphs.MEMORY_ENCODER_INPUTS,
            (graphs.MEMORY_ENCODER_OUTPUT,),
            embedding_2,
            mask_logits.astype(np.float32),
            binarize.astype(bool),
            object_score_logits.astype(np.float32),
        )
        return features

    def mask_prompt(self, masks: np.ndarray, embedding_2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masks [B, 1, S, S] (0/1 at the input size) -> (the decoder's mask_inputs, the bare frame features)."""
        mask_inputs, features = self._run(
            graphs.MASK_PROMPT_FILE, graphs.MASK_PROMPT_INPUTS, graphs.MASK_PROMPT_OUTPUTS, masks, embedding_2
        )
        return mask_inputs, features
