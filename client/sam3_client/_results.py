"""What comes back: the results of every call, as plain values that decode their masks on first use.

Built from response messages by `_messages`; the public ones are re-exported by `sam3_client`. A new
mask format is a name in `_prompts.MASK_FORMATS` and a branch of `Mask`'s decoding.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sam3_client import masks
from sam3_client._prompts import MASK_FORMATS, Box, ObjectPrompt, SegmentOptions
from sam3_client.errors import Sam3Error
from sam3_client.proto import decoder_pb2

_FORMAT_NAMES = {value: name for name, value in MASK_FORMATS.items()}


@dataclass(frozen=True)
class EncodeResult:
    """The stored embedding's identity: pass `image_id` to segment() to skip hashing and uploading."""

    image_id: str
    width: int
    height: int
    cached: bool  # the store already held it: the model did not run
    model_id: str
    timings: dict[str, float] = field(default_factory=dict)  # server-side milliseconds per stage
    error: Sam3Error | None = None  # encode_many only: this image failed, the stream carried on


@dataclass(frozen=True)
class Polygons:
    """A mask's outline as the worker traced it: one ring per part of the mask and per hole in it.

    Coordinates are pixel edges: pixel (column c, row r) is the square (c, r)-(c + 1, r + 1), so corners
    are whole numbers from 0 to width / height. `coco` is COCO's "segmentation" polygon list (one flat
    [x0, y0, x1, y1, ...] per ring, holes included); COCO tools fill every ring, so they lose the holes:
    `outer` leaves them out, `to_mask()` cuts them (the even-odd rule) and, at tolerance 0, gives the
    mask back exactly.
    """

    rings: list[np.ndarray]  # int32 [n, 2] corners (x, y) per ring; the ring closes back to its first corner
    holes: list[bool]  # rings[k] bounds a hole (runs counter-clockwise on screen; parts run clockwise)
    width: int
    height: int
    tolerance: float  # pixels: how far the simplified outline may stray from the traced one

    @property
    def coco(self) -> list[list[float]]:
        """Every ring as COCO's flat [x0, y0, x1, y1, ...] list (holes too: see `outer`)."""
        return [ring.reshape(-1).astype(float).tolist() for ring in self.rings]

    @property
    def outer(self) -> list[list[float]]:
        """The rings of the mask's parts only (no holes), as `coco`: what a tool that fills every ring wants."""
        return [ring for ring, hole in zip(self.coco, self.holes, strict=True) if not hole]

    def to_mask(self) -> np.ndarray:
        """The boolean H x W mask the rings enclose (even-odd at pixel centres: holes stay holes)."""
        return masks.rasterize_polygons(self.coco, self.height, self.width)


@dataclass(frozen=True)
class Mask:
    """One returned mask, kept as it arrived (COCO RLE runs, PNG, packed bits or polygons), decoded on first use.

    `area` and `bbox` are the server's (computed from the pixels): reading them decodes nothing. `mask`
    is the boolean H x W array at the original size and `rle` the pycocotools dict
    {"size": [h, w], "counts": [...]}; both are None when the request asked for mask_format="none".
    With mask_format="polygon", `polygons` is the outline as it arrived and `mask` fills it.
    """

    index: int  # which of the decoder's 3 candidates
    iou_score: float
    bbox: tuple[int, int, int, int]  # COCO x, y, width, height
    area: int
    message: decoder_pb2.Mask = field(repr=False, compare=False)  # what arrived

    @property
    def format(self) -> str:
        """How the mask travelled: "rle", "png", "bits", "polygon" or "none" (the SegmentOptions names)."""
        return _FORMAT_NAMES.get(self.message.format, "png")

    @functools.cached_property
    def mask(self) -> np.ndarray | None:
        message = self.message
        if self.format == "none":
            return None
        if self.format == "rle":
            return masks.decode_rle(message.rle.counts, message.rle.height, message.rle.width)
        if self.format == "bits":
            return masks.decode_packed_bits(message.data, message.height, message.width)
        if self.polygons is not None:
            return self.polygons.to_mask()
        return masks.decode_png(message.data)

    @functools.cached_property
    def polygons(self) -> Polygons | None:
        """The outline, when the mask travelled as polygons (mask_format="polygon"); else None."""
        if self.format != "polygon":
            return None
        message = self.message
        rings = [np.asarray(ring.points, np.int32).reshape(-1, 2) for ring in message.polygons.rings]
        holes = [ring.hole for ring in message.polygons.rings]
        return Polygons(rings, holes, message.width, message.height, message.polygons.tolerance)

    @functools.cached_property
    def rle(self) -> dict[str, Any] | None:
        if self.format == "rle":
            return {"size": [self.message.rle.height, self.message.rle.width], "counts": list(self.message.rle.counts)}
        return None if self.mask is None else masks.encode_rle(self.mask)


@dataclass(frozen=True)
class ObjectResult:
    """The result for one ObjectPrompt: the selected mask(s), all 3 IoU scores, presence probability.

    It remembers what was asked (`prompt`, `image_id`, `options`), so `Client.refine(result, points=...)`
    asks again with more clicks and this answer's mask.
    """

    masks: list[Mask]
    iou_scores: list[float]
    best_index: int
    presence: float  # probability the prompted object is in the image at all
    low_res_logits: np.ndarray | None = None  # [masks, 288, 288] float32, when asked for
    mask_input_used: bool = False  # a previous mask went into this answer (sent, or remembered by object_key)
    image_id: str = field(default="", repr=False)
    prompt: ObjectPrompt | None = field(default=None, repr=False, compare=False)  # what this answers
    options: SegmentOptions = field(default_factory=lambda: SegmentOptions(), repr=False, compare=False)

    @property
    def mask(self) -> np.ndarray | None:
        """The first returned mask (the chosen one, unless all three were asked for)."""
        return self.masks[0].mask if self.masks else None

    @property
    def chosen_logits(self) -> np.ndarray | None:
        """The low-res logits of the mask a refinement continues from (the returned one; the best of three
        with mask="all"), when low_res_logits were asked for: what `mask_input` takes."""
        if self.low_res_logits is None or len(self.low_res_logits) == 0:
            return None
        chosen = self.best_index if len(self.low_res_logits) == len(self.iou_scores) > 1 else 0
        logits: np.ndarray = self.low_res_logits[chosen]
        return logits


@dataclass(frozen=True)
class SegmentResult:
    """Masks for every object of one request, in request order."""

    image_id: str
    width: int
    height: int
    objects: list[ObjectResult]
    model_id: str
    timings: dict[str, float] = field(default_factory=dict)  # server-side milliseconds per stage
    encoded: EncodeResult | None = None  # set when the call had to Encode the image first
    request_id: str = ""  # segment_stream: the index of the request this answers, as a string
    skipped: bool = False  # segment_stream: a newer request for the same object_key superseded this one
    error: Sam3Error | None = None  # segment_stream: this request failed, the session carried on

    @property
    def mask(self) -> np.ndarray | None:
        """The first object's chosen mask: the answer of a one-object segment()."""
        return self.objects[0].mask if self.objects else None


@dataclass(frozen=True)
class ModelInfo:
    """What a decoder serves: check that encoder and decoder workers are compatible (equal model_id)."""

    model_id: str  # encoder weights + preprocessing; part of every store key
    variant: str  # "fp32", "fp16", "int8", "q4", ...
    image_size: int  # side of the square the encoder sees, e.g. 1008
    mask_size: int  # side of the low-resolution mask logits, e.g. 288
    embeddings: dict[str, tuple[tuple[int, ...], str]]  # name -> (shape, stored dtype), in decoder input order
    server_version: str
    # "added": image_embeddings.2 includes SAM3's no-memory embedding, as SAM3 does; "absent": masks differ
    # from SAM3's own (an encoder exported from transformers' image tracker); "unknown": the folder cannot tell.
    no_memory_embedding: str


@dataclass(frozen=True)
class Instance:
    """One instance of a concept: its score, the model's box, and its mask as it arrived."""

    score: float  # sigmoid(logit) x presence
    box: Box  # the model's box, in original pixels (not clipped to the image)
    area: int  # mask pixels (0 with mask_format="none")
    encoded: Mask = field(repr=False, compare=False)

    @property
    def mask(self) -> np.ndarray | None:
        """Boolean H x W at the original size (None with mask_format="none")."""
        return self.encoded.mask

    @property
    def rle(self) -> dict[str, Any] | None:
        return self.encoded.rle


@dataclass(frozen=True)
class ConceptAnswer:
    """Every instance of one concept, in the model's query order."""

    text: str | None
    presence: float  # how sure the model is that the concept is in the image at all
    instances: list[Instance]
    label_png: bytes = field(default=b"", repr=False)  # with label_image=True: pixel k = instances[k - 1]

    @property
    def label_image(self) -> np.ndarray | None:
        """The label image as an array (uint8, or uint16 beyond 255 instances), when it was asked for."""
        return masks.decode_label_png(self.label_png) if self.label_png else None


@dataclass(frozen=True)
class ConceptResult:
    """The answers of one segment_concept call, one per concept, in request order."""

    image_id: str
    width: int
    height: int
    concepts: list[ConceptAnswer]
    model_id: str
    timings: dict[str, float] = field(default_factory=dict)  # server-side milliseconds per stage
    encoded: EncodeResult | None = None  # set when the call had to Encode the image first

    @property
    def instances(self) -> list[Instance]:
        """The first concept's instances: the answer of a one-concept call."""
        return self.concepts[0].instances if self.concepts else []
