"""Set an image once, predict many prompts: the in-process API SAM users know from `SamPredictor`.

`encode` and `decode` are the two pure steps the services also use; `Predictor` holds one image's
embeddings between calls. Masks are upsampled lazily, one at a time, because a 4000x3000 mask costs
more than the decoder itself and most callers want only the best one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from sam3_core.concept import (
    DEFAULT_THRESHOLD,
    ConceptAnswer,
    ConceptInstance,
    ConceptModel,
    DetectorFeatures,
    Exemplar,
)
from sam3_core.embeddings import ImageEmbeddings
from sam3_core.images import ImageInput, ImageLimits, load_image
from sam3_core.masks import CocoRle
from sam3_core.model import ConceptsNotSupportedError, DecoderEmbeddings, MaskInputNotSupportedError, Sam3Model
from sam3_core.postprocess import MASK_LOGIT_THRESHOLD, upsample_logits, upsample_logits_to_mask, upsample_logits_to_rle
from sam3_core.preprocess import pixel_values
from sam3_core.prompts import Prompt, PromptLimits, build_batches, validate
from sam3_core.timing import StageTimer


@dataclass(frozen=True)
class ObjectPrediction:
    """The decoder's answer for one object: three candidate masks, their IoU estimates, presence."""

    iou_scores: np.ndarray  # float32 (3,), already sigmoided by the model
    object_score_logit: float
    low_res_logits: np.ndarray  # float32 (3, h, w) mask logits at the decoder's resolution
    original_size: tuple[int, int]  # (height, width)

    @property
    def best_index(self) -> int:
        return int(np.argmax(self.iou_scores))

    @property
    def presence(self) -> float:
        """Probability that the object is in the image at all: sigmoid of the object score."""
        return float(1.0 / (1.0 + np.exp(-self.object_score_logit)))

    def mask(self, index: int | None = None) -> np.ndarray:
        """Boolean H x W mask at the original size; the best one (highest IoU) unless told otherwise."""
        chosen = self.best_index if index is None else _check_index(index, len(self.iou_scores))
        return upsample_logits_to_mask(self.low_res_logits[chosen], *self.original_size)

    def mask_rle(self, index: int | None = None) -> CocoRle:
        """The same mask as COCO RLE, computed without materialising H x W pixels for smooth masks."""
        chosen = self.best_index if index is None else _check_index(index, len(self.iou_scores))
        return upsample_logits_to_rle(self.low_res_logits[chosen], *self.original_size)

    def masks(self) -> np.ndarray:
        """All candidate masks, boolean [3, H, W]."""
        return upsample_logits(self.low_res_logits, *self.original_size) > MASK_LOGIT_THRESHOLD


def _check_index(index: int, count: int) -> int:
    if not 0 <= index < count:
        raise IndexError(f"mask index {index} out of range: the model returns masks 0..{count - 1}")
    return index


def _run_encoder(
    model: Sam3Model, rgb: np.ndarray, timer: StageTimer | None, run_options: ort.RunOptions | None, detector: bool
) -> tuple[np.ndarray, ...]:
    timer = timer or StageTimer()
    with timer.stage("preprocess"):
        inputs = pixel_values(rgb, model.preprocessing)
    with timer.stage("model"):
        return model.run_encoder(inputs, run_options, detector_features=detector)


def encode(
    model: Sam3Model, rgb: np.ndarray, timer: StageTimer | None = None, run_options: ort.RunOptions | None = None
) -> ImageEmbeddings:
    """RGB uint8 H x W x 3 -> ImageEmbeddings (float32) for this model."""
    tensors = _run_encoder(model, rgb, timer, run_options, detector=False)
    return ImageEmbeddings(tensors, (int(rgb.shape[0]), int(rgb.shape[1])), model.model_id)


def encode_with_detector(
    model: Sam3Model, rgb: np.ndarray, timer: StageTimer | None = None, run_options: ort.RunOptions | None = None
) -> tuple[ImageEmbeddings, DetectorFeatures]:
    """One run of a unified encoder -> the click embeddings and the concept detector's features."""
    tensors = _run_encoder(model, rgb, timer, run_options, detector=True)
    size = (int(rgb.shape[0]), int(rgb.shape[1]))
    return ImageEmbeddings(tensors[:3], size, model.model_id), DetectorFeatures(tensors[3:], size)


def decode(
    model: Sam3Model,
    embeddings: ImageEmbeddings,
    prompts: Sequence[Prompt],
    *,
    limits: PromptLimits = PromptLimits(),
    timer: StageTimer | None = None,
) -> list[ObjectPrediction]:
    """Runs the prompt encoder + mask decoder for every object; results in the order of `prompts`.

    Prepares the embeddings for the decoder first unless they already are (`Sam3Model.decoder_embeddings`):
    callers decoding one image many times (the Predictor, the decoder's cache) prepare them once.
    """
    timer = timer or StageTimer()
    if not isinstance(embeddings, DecoderEmbeddings):
        with timer.stage("prepare"):
            embeddings = model.decoder_embeddings(embeddings)
    with timer.stage("prompt"):
        validate(prompts, embeddings.original_size, limits, model.mask_size)
        if not model.accepts_mask_input and any(p.mask_input is not None for p in prompts):
            raise MaskInputNotSupportedError(model.folder)
        batches = build_batches(
            prompts, embeddings.original_size, model.preprocessing.size, appends_pad_point=model.appends_pad_point
        )
    results: list[ObjectPrediction | None] = [None] * len(prompts)
    for batch in batches:
        with timer.stage("model"):
            iou, masks, object_logits = model.run_decoder(
                batch.points, batch.labels, batch.empty_boxes, embeddings, batch.mask_input
            )
        for row, index in enumerate(batch.object_indices):
            results[index] = ObjectPrediction(
                iou_scores=iou[0, row],
                object_score_logit=float(object_logits[0, row, 0]),
                low_res_logits=masks[0, row],
                original_size=embeddings.original_size,
            )
    return [r for r in results if r is not None]


class Predictor:
    """`set_image` once (the expensive encoder), then `predict` clicks and boxes, or `predict_concept` phrases
    and exemplar boxes, any number of times against it. With a unified folder one encode serves both."""

    def __init__(
        self,
        model: Sam3Model,
        *,
        image_limits: ImageLimits = ImageLimits(),
        prompt_limits: PromptLimits = PromptLimits(),
        concepts: ConceptModel | None = None,
    ) -> None:
        self.model = model
        self.image_limits = image_limits
        self.prompt_limits = prompt_limits
        self._concepts = concepts
        self._embeddings: ImageEmbeddings | None = None
        self._prepared: DecoderEmbeddings | None = None  # the same, prepared for the decoder once
        self._detector_features: DetectorFeatures | None = None

    def set_image(self, image: ImageInput) -> ImageEmbeddings:
        """Encodes the image (path, bytes, PIL image or array); returns the embeddings, which serialise.

        A unified encoder's detector features are kept too, for `predict_concept`, from the same run.
        """
        rgb = load_image(image, self.image_limits)
        if self.model.has_detector_features:
            self._embeddings, self._detector_features = encode_with_detector(self.model, rgb)
        else:
            self._embeddings, self._detector_features = encode(self.model, rgb), None
        self._prepared = self.model.decoder_embeddings(self._embeddings)
        return self._embeddings

    def set_embeddings(self, embeddings: ImageEmbeddings) -> None:
        """Reuses click embeddings computed earlier (or elsewhere) for the same model (clicks only)."""
        if embeddings.model_id != self.model.model_id:
            raise ValueError(
                f"embeddings are for model {embeddings.model_id}, this predictor runs {self.model.model_id}"
            )
        self._embeddings = embeddings
        self._prepared = self.model.decoder_embeddings(embeddings)
        self._detector_features = None

    @property
    def concepts(self) -> ConceptModel:
        """The concept sessions, loaded on first use (clicks-only callers never pay for them)."""
        if self._concepts is None:
            self._concepts = ConceptModel(self.model.folder, runtime=self.model.runtime)
        return self._concepts

    def predict_concept(
        self,
        text: str | None = None,
        exemplars: Iterable[Exemplar | tuple[Sequence[float], bool] | Sequence[float]] = (),
        threshold: float = DEFAULT_THRESHOLD,
    ) -> list[ConceptInstance]:
        """Every instance of a noun phrase and/or like the exemplar boxes ((x1, y1, x2, y2), positive)."""
        return self.detect_concept(text, exemplars, threshold).instances

    def detect_concept(
        self,
        text: str | None = None,
        exemplars: Iterable[Exemplar | tuple[Sequence[float], bool] | Sequence[float]] = (),
        threshold: float = DEFAULT_THRESHOLD,
    ) -> ConceptAnswer:
        """`predict_concept` with the presence score, which is there even when no instance passes the threshold."""
        if self._detector_features is None:
            if self._embeddings is None or self.model.has_detector_features:
                raise RuntimeError("call set_image() before predict_concept()")
            raise ConceptsNotSupportedError(self.model.folder, self.model.encoder_path)
        return self.concepts.detect(self._detector_features, text, exemplars, threshold)

    @property
    def embeddings(self) -> ImageEmbeddings:
        if self._embeddings is None:
            raise RuntimeError("call set_image() (or set_embeddings()) before predict()")
        return self._embeddings

    def predict(
        self,
        points: Sequence[Sequence[float]] | np.ndarray | None = None,
        labels: Sequence[int] | np.ndarray | None = None,
        box: Sequence[float] | np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
    ) -> ObjectPrediction:
        """One object from clicks (labels: 1 foreground, 0 background; default all foreground) and/or a box.

        `mask_input` refines an earlier answer, as SamPredictor's: one mask's low-res logits
        (`previous.low_res_logits[previous.best_index]`), sent with all the clicks so far plus the new ones.
        """
        return self.predict_objects([Prompt.of(points, labels, box, mask_input)])[0]

    def predict_objects(self, prompts: Sequence[Prompt]) -> list[ObjectPrediction]:
        """Several objects in one call, one result per prompt, in order."""
        if self._prepared is None:
            raise RuntimeError("call set_image() (or set_embeddings()) before predict()")
        return decode(self.model, self._prepared, prompts, limits=self.prompt_limits)
