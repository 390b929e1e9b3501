"""Concept prompts: a noun phrase and/or exemplar boxes -> every matching instance in the image.

The detector half of SAM3 (transformers' `Sam3Model` is the oracle), on the features a unified vision
encoder emits next to the tracker's embeddings, so clicks and concepts share one trunk run. Three small
sessions: the text encoder (its output is cached per phrase: phrases repeat far more than images), the
exemplar encoder (boxes -> prompt tokens) and the concept decoder (200 queries -> logits, boxes, masks and
one presence logit). Post-processing is `Sam3Processor.post_process_instance_segmentation`'s: score =
sigmoid(logit) x sigmoid(presence), kept when above the threshold, in query order, no NMS; masks are
the sigmoid resized bilinearly to the original size, then > 0.5; boxes are scaled, not clipped.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from sam3_core.cache import LruCache
from sam3_core.graphs import (
    BOX_ONLY_TEXT,
    CONCEPT_DECODER_FILE,
    CONCEPT_OUTPUTS,
    CONCEPT_PROMPT_INPUTS,
    DETECTOR_OUTPUTS,
    EXEMPLAR_ENCODER_FILE,
    EXEMPLAR_INPUTS,
    TEXT_ENCODER_FILE,
    TEXT_INPUTS,
    missing_concept_files,
)
from sam3_core.model import ConceptsNotSupportedError, RuntimeOptions
from sam3_core.postprocess import MASK_PROBABILITY_THRESHOLD, upsample_logits
from sam3_core.tokenizer import ClipTokenizer

DEFAULT_THRESHOLD = 0.5  # on the instance score, sigmoid(logit) x presence


@dataclass(frozen=True)
class DetectorFeatures:
    """The detector's FPN levels for one image ([1, 256, 288, 288], [.., 144, 144], [.., 72, 72])."""

    tensors: tuple[np.ndarray, ...]
    original_size: tuple[int, int]  # (height, width)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


@dataclass(frozen=True)
class TextFeatures:
    """The text encoder's output for one phrase: [1, 32, C] float32 features and the [1, 32] bool mask."""

    features: np.ndarray
    mask: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.features.nbytes + self.mask.nbytes


@dataclass(frozen=True)
class Exemplar:
    """An example box (x1, y1, x2, y2 in original pixels): positive = "more like this", else "not this"."""

    box: tuple[float, float, float, float]
    positive: bool = True

    @classmethod
    def of(cls, value: Exemplar | tuple[Sequence[float], bool] | Sequence[float]) -> Exemplar:
        """Accepts an Exemplar, a (box, positive) pair, or a bare box (positive)."""
        if isinstance(value, Exemplar):
            return value
        items = list(value)
        if len(items) == 2 and isinstance(items[1], bool | np.bool_):
            box, positive = items[0], bool(items[1])
        else:
            box, positive = items, True
        coordinates = tuple(float(v) for v in box)
        if len(coordinates) != 4 or not all(math.isfinite(v) for v in coordinates):
            raise ValueError(f"an exemplar box is 4 finite numbers x1, y1, x2, y2; got {box!r}")
        x1, y1, x2, y2 = coordinates
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"an exemplar box needs x2 > x1 and y2 > y1; got {coordinates}")
        return cls((x1, y1, x2, y2), positive)


@dataclass(frozen=True)
class ConceptInstance:
    """One detected instance: the query that found it, its score, its box and (lazily) its mask."""

    query: int  # which of the decoder's queries (the order transformers returns instances in)
    score: float  # sigmoid(logit) x presence
    presence: float  # sigmoid(presence logit): is the concept in the image at all (shared by all instances)
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original pixels, not clipped to the image
    low_res_probabilities: np.ndarray  # float32 [h, w], sigmoid of the mask logits at the decoder's resolution
    original_size: tuple[int, int]  # (height, width)

    def mask(self) -> np.ndarray:
        """Boolean mask at the original size: probabilities resized bilinearly, then > 0.5."""
        return upsample_logits(self.low_res_probabilities, *self.original_size) > MASK_PROBABILITY_THRESHOLD


@dataclass(frozen=True)
class ConceptAnswer:
    """What one concept query found: the instances above the threshold and the presence score, which
    says how sure the model is that the concept is in the image at all (also when nothing passed)."""

    instances: list[ConceptInstance]
    presence: float


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x.astype(np.float32))), dtype=np.float32)


def prompt_phrase(text: str | None) -> str:
    """What the text encoder is run on for a concept: its phrase, or Sam3Processor's "visual" for boxes only."""
    return BOX_ONLY_TEXT if text is None else text


class ConceptModel:
    """The three concept sessions of a model folder and the tokenizer; text features cached per phrase
    (`text_cache_bytes`: 8 MiB holds ~250 phrases at full size, 33 KB each)."""

    def __init__(
        self, folder: str | Path, *, runtime: RuntimeOptions = RuntimeOptions(), text_cache_bytes: int = 8 << 20
    ):
        self.folder = Path(folder)
        if missing_concept_files(self.folder):
            raise ConceptsNotSupportedError(self.folder)
        providers = runtime.resolved_providers()

        def session(name: str) -> ort.InferenceSession:
            return ort.InferenceSession(
                str(self.folder / name), sess_options=runtime.session_options(), providers=providers
            )

        self.tokenizer = ClipTokenizer(self.folder)
        self.text_encoder = session(TEXT_ENCODER_FILE)
        self.exemplar_encoder = session(EXEMPLAR_ENCODER_FILE)
        self.decoder = session(CONCEPT_DECODER_FILE)
        self._phrases: LruCache[str, TextFeatures] = LruCache(text_cache_bytes)

    @property
    def detector_shapes(self) -> list[tuple[int | str, ...]]:
        """The detector features' shapes the concept decoder takes (what a stored value must have)."""
        inputs = {i.name: i for i in self.decoder.get_inputs()}
        return [tuple(inputs[name].shape) for name in DETECTOR_OUTPUTS]

    @property
    def queries(self) -> int:
        """How many instances one run can find at most: the decoder's queries (200 in SAM3's DETR decoder)."""
        outputs = {o.name: o for o in self.decoder.get_outputs()}
        return int(outputs[CONCEPT_OUTPUTS[0]].shape[1])

    def text_key(self, phrase: str) -> str:
        """A name for the phrase's text features: the sha256 of its token ids, so phrases the tokenizer
        reads alike ("Dog ", "dog") share one entry and different ones never do."""
        ids, _ = self.tokenizer([phrase])
        return hashlib.sha256(np.ascontiguousarray(ids, np.int64).tobytes()).hexdigest()

    def encode_text(self, phrase: str) -> TextFeatures:
        """Runs the text encoder on one phrase (no cache)."""
        ids, mask = self.tokenizer([phrase])
        (features,) = self.text_encoder.run(None, dict(zip(TEXT_INPUTS, (ids, mask), strict=True)))
        return TextFeatures(np.asarray(features, np.float32), mask.astype(bool))

    def text_features(self, phrase: str) -> TextFeatures:
        """The phrase's text features from a least-recently-used cache by phrase, else the text encoder
        (run once for a phrase however many threads ask for it at once)."""
        return self._phrases.get_or_compute(phrase, lambda: self.encode_text(phrase))

    def exemplar_features(self, features: DetectorFeatures, exemplars: Sequence[Exemplar]) -> np.ndarray:
        """[1, N + 1, C] prompt tokens for N >= 1 boxes, normalised as Sam3Processor does (cx, cy, w, h in [0, 1])."""
        height, width = features.original_size
        corners = np.array([e.box for e in exemplars], np.float32).reshape(-1, 2, 2)
        corners /= np.array([width, height], np.float32)
        x0, y0, x1, y1 = corners.reshape(-1, 4).T
        boxes = np.stack([(x0 + x1) / np.float32(2), (y0 + y1) / np.float32(2), x1 - x0, y1 - y0], axis=-1)
        labels = np.array([[1 if e.positive else 0 for e in exemplars]], np.int64)
        feeds = (features.tensors[2], boxes[None], labels)
        (tokens,) = self.exemplar_encoder.run(None, dict(zip(EXEMPLAR_INPUTS, feeds, strict=True)))
        return np.asarray(tokens, np.float32)

    def detect(
        self,
        features: DetectorFeatures,
        text: str | None = None,
        exemplars: Iterable[Exemplar | tuple[Sequence[float], bool] | Sequence[float]] = (),
        threshold: float = DEFAULT_THRESHOLD,
        *,
        text_features: TextFeatures | None = None,
    ) -> ConceptAnswer:
        """Every instance scoring above `threshold`, in query order (as transformers returns them), and the
        presence score, which is there even when no instance passes the threshold.

        `text_features`: the phrase's features when the caller keeps its own cache (the services do,
        in Redis); else `text_features(text)`.
        """
        boxes = [Exemplar.of(e) for e in exemplars]
        if text is not None and not text.strip():
            raise ValueError("the text prompt is empty: give a noun phrase, exemplar boxes, or both")
        if text is None and not boxes:
            raise ValueError("a concept prompt needs a text phrase, exemplar boxes, or both")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
        if text_features is None:
            text_features = self.text_features(prompt_phrase(text))
        prompt, mask = text_features.features, text_features.mask
        if boxes:
            tokens = self.exemplar_features(features, boxes)
            prompt = np.concatenate([prompt, tokens], axis=1)
            mask = np.concatenate([mask, np.ones(tokens.shape[:2], bool)], axis=1)
        feeds = dict(zip((*DETECTOR_OUTPUTS, *CONCEPT_PROMPT_INPUTS), (*features.tensors, prompt, mask), strict=True))
        logits, pred_boxes, masks, presence_logits = self.decoder.run(None, feeds)
        presence = _sigmoid(presence_logits[0])
        scores = _sigmoid(logits[0]) * presence
        height, width = features.original_size
        scale = np.array([width, height, width, height], np.float32)
        instances = [
            ConceptInstance(
                query=int(q),
                score=float(scores[q]),
                presence=float(presence[0]),
                box=tuple(float(v) for v in pred_boxes[0, q] * scale),  # type: ignore[arg-type]
                low_res_probabilities=_sigmoid(masks[0, q]),
                original_size=features.original_size,
            )
            for q in np.flatnonzero(scores > threshold)
        ]
        return ConceptAnswer(instances, float(presence[0]))
