"""TrackingSession: prompt objects on any frame, propagate their masks through a video, state bounded.

Each verb runs transformers' `Sam3TrackerVideoModel.forward` semantics on the exported graphs (docs/video.md):
a prompt is answered by running the model on its frame for every object (objects prompted on that frame for
the first time start from the frame's features alone; others are conditioned on their memories), and
propagation does the same frame after frame. Objects share one call per graph, grouped only where their
shapes differ. The state changes once per frame, after every graph of that frame has run: a caller that
stops a propagation (or an error) never leaves a half-updated object behind.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from sam3_core.embeddings import ImageEmbeddings
from sam3_core.preprocess import checked_size, scale_points
from sam3_core.prompts import Prompt, PromptError, check_coordinates, check_prompts
from sam3_core.tracking import bank
from sam3_core.tracking.bfloat16 import from_bfloat16_bits, to_bfloat16_bits
from sam3_core.tracking.errors import (
    FrameIndexError,
    FrameSizeError,
    NoPromptsError,
    StateFormatError,
    TrackingError,
    UnknownObjectError,
)
from sam3_core.tracking.graphs import DecoderRules, VideoGraphs
from sam3_core.tracking.resize import resize_antialiased
from sam3_core.tracking.results import FrameResult, ObjectFrame
from sam3_core.tracking.state import Conditioning, FramePrompt, ObjectState, SessionState

FrameSource = Callable[[int], ImageEmbeddings]
# transformers' mask logits for an object it thinks absent (NO_OBJ_SCORE), and a mask prompt's logits.
NO_OBJECT_LOGIT = -1024.0
MASK_PROMPT_SCALE, MASK_PROMPT_BIAS = 20.0, -10.0
_NOT_A_POINT = -1
_BOX_LABELS = (2, 3)
_DIRECTIONS = {"forward": (False,), "backward": (True,), "both": (False, True)}


@dataclass
class _Pass:
    """One object's pass through one frame, computed before the state changes."""

    state: ObjectState
    prompt: FramePrompt | None
    initial: bool  # a first answer on a prompted frame: stored as a conditioning frame
    mask_logits: np.ndarray | None = None
    score: float = 0.0
    pointer: np.ndarray | None = None
    memory_mask: np.ndarray | None = None  # [h, w] logits the memory encoder reads
    features: np.ndarray | None = None  # uint16 bfloat16 bits


def choose(
    masks: np.ndarray, iou: np.ndarray, pointers: np.ndarray, multimask: bool, rules: DecoderRules
) -> tuple[np.ndarray, np.ndarray]:
    """(mask logits, object pointer) from the decoder's four candidates, as transformers picks them:
    multimask -> the best IoU of masks 1..3 and its token's pointer; else mask 0, replaced by the best
    multimask one when mask 0 is unstable (its area changes by more than 2 % between logits of +-0.05),
    the pointer staying token 0's."""
    best = 1 + int(np.argmax(iou[1:]))
    if multimask:
        return masks[best], pointers[best]
    if rules.dynamic_multimask_via_stability:
        inner = np.float32(np.count_nonzero(masks[0] > rules.stability_delta))
        outer = np.float32(np.count_nonzero(masks[0] > -rules.stability_delta))
        stability = inner / outer if outer > 0 else np.float32(1.0)
        if stability < np.float32(rules.stability_thresh):
            return masks[best], pointers[0]
    return masks[0], pointers[0]


class TrackingSession:
    """One video's tracking: prompts in, masks out, state in `state` (plain data, `SessionState.to_bytes`).

    `frames(i)` returns frame i's embeddings from the image encoder (`sam3_core.predictor.encode`, or the
    fleet's store); the session asks for each frame it processes and keeps nothing of it. Not thread-safe:
    one caller at a time (the fleet serialises a session's requests).
    """

    def __init__(
        self,
        graphs: VideoGraphs,
        frames: FrameSource,
        *,
        video_size: tuple[int, int],
        num_frames: int | None,
        state: SessionState | None = None,
    ) -> None:
        video_size = checked_size(*video_size)
        if num_frames is not None and num_frames < 1:
            raise TrackingError(f"num_frames must be at least 1 (or None for a stream), got {num_frames}")
        if state is None:
            state = SessionState(graphs.model_id, video_size, num_frames)
        elif (state.model_id, state.video_size, state.num_frames) != (graphs.model_id, video_size, num_frames):
            raise StateFormatError(
                f"the state belongs to model {state.model_id}, a {state.video_size} video of {state.num_frames} "
                f"frames; this session is model {graphs.model_id}, {video_size}, {num_frames} frames"
            )
        self.graphs = graphs
        self._frames = frames
        self._state = state

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def object_ids(self) -> tuple[int, ...]:
        return tuple(self._state.objects)

    @property
    def num_frames(self) -> int | None:
        return self._state.num_frames

    @property
    def video_size(self) -> tuple[int, int]:
        return self._state.video_size

    def add_prompt(
        self,
        frame: int,
        obj_id: int,
        *,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
        mask: np.ndarray | None = None,
    ) -> FrameResult:
        """Sets `obj_id`'s prompt on `frame` (replacing one given before: pass every click each time) and
        answers with the frame's masks for every object."""
        self._check_frame(frame)
        prompt = self._prompt(points, labels, box, mask)
        existing = self._state.objects.get(int(obj_id))
        target = existing if existing is not None else ObjectState(int(obj_id))
        objects = [*self._state.objects.values()] + ([] if existing is not None else [target])
        result = self._step(frame, objects, {target.obj_id: prompt}, reverse=False)
        self._state.objects[target.obj_id] = target
        return result

    def remove_object(self, obj_id: int) -> None:
        self._object(obj_id)
        del self._state.objects[obj_id]

    def clear_prompts(self, frame: int, obj_id: int | None = None) -> None:
        """Forgets the prompts given on `frame` (for one object, or all) and the memories they made; an
        object left without any prompted frame is removed."""
        self._check_frame(frame)
        objects = [self._object(obj_id)] if obj_id is not None else list(self._state.objects.values())
        for state in objects:
            state.prompts.pop(frame, None)
            state.conditioning.pop(frame, None)
            if not state.conditioning:
                del self._state.objects[state.obj_id]

    def propagate(
        self,
        start_frame: int | None = None,
        *,
        direction: str = "forward",
        max_frames: int | None = None,
        obj_ids: Collection[int] | None = None,
    ) -> Iterator[FrameResult]:
        """Tracks from `start_frame` (default: the earliest prompted frame), start included, over at most
        `max_frames` further frames per direction, for `obj_ids` (default all). Lazy: one frame per step."""
        if direction not in _DIRECTIONS:
            raise TrackingError(f"direction must be one of {sorted(_DIRECTIONS)}, got {direction!r}")
        if max_frames is not None and max_frames < 0:
            raise TrackingError(f"max_frames must be 0 or more, got {max_frames}")
        ids = [state.obj_id for state in self._tracked(obj_ids)]
        prompted = [frame for state in self._state.objects.values() for frame in state.conditioning]
        start = min(prompted) if start_frame is None else start_frame
        self._check_frame(start)
        if self.num_frames is None and max_frames is None and direction != "backward":
            raise TrackingError("a stream of unknown length needs max_frames to propagate forward")
        return self._propagate(start, _DIRECTIONS[direction], max_frames, ids)

    def track(self, frame: int, *, reverse: bool, obj_ids: Collection[int] | None = None) -> FrameResult:
        """One frame of a propagation, exactly as `propagate` runs it (`reverse`: in a backward pass), for
        `obj_ids` (default all); the state holds the frame when it returns. Lets a caller drive its own
        order, e.g. resume a backward pass at frame 0, where `propagate` (like transformers) never starts."""
        objects = self._tracked(obj_ids)
        self._check_frame(frame)
        return self._step(frame, objects, {}, reverse=reverse)

    def _propagate(
        self, start: int, directions: tuple[bool, ...], max_frames: int | None, obj_ids: list[int]
    ) -> Iterator[FrameResult]:
        for reverse in directions:
            for frame in self._order(start, reverse, max_frames):
                yield self.track(frame, reverse=reverse, obj_ids=obj_ids)

    def _tracked(self, obj_ids: Collection[int] | None) -> list[ObjectState]:
        """The objects a propagation tracks: `obj_ids` (default all), once any object has a prompt."""
        objects = list(self._state.objects.values()) if obj_ids is None else [self._object(i) for i in obj_ids]
        if not objects or not any(state.conditioning for state in self._state.objects.values()):
            raise NoPromptsError()
        return objects

    def _order(self, start: int, reverse: bool, max_frames: int | None) -> range:
        """transformers' processing order (`propagate_in_video_iterator`), including its quirk of not
        tracking backwards at all from frame 0."""
        limit = max_frames if max_frames is not None else (self.num_frames or 0)
        if reverse:
            return range(start, max(start - limit, 0) - 1, -1) if start > 0 else range(0)
        end = start + limit if self.num_frames is None else min(start + limit, self.num_frames - 1)
        return range(start, end + 1)

    def _object(self, obj_id: int) -> ObjectState:
        if obj_id not in self._state.objects:
            raise UnknownObjectError(obj_id, self.object_ids)
        return self._state.objects[obj_id]

    def _check_frame(self, frame: int) -> None:
        if frame < 0 or (self.num_frames is not None and frame >= self.num_frames):
            raise FrameIndexError(frame, self.num_frames)

    def _prompt(
        self,
        points: Sequence[Sequence[float]],
        labels: Sequence[int] | None,
        box: Sequence[float] | None,
        mask: np.ndarray | None,
    ) -> FramePrompt:
        if mask is not None:
            if len(points) or box is not None:
                raise PromptError("mask", "a mask prompt replaces points and boxes: give one or the other")
            mask = np.asarray(mask)
            if mask.shape != self.video_size:
                raise PromptError("mask", f"shape {mask.shape}, expected the video's (height, width) {self.video_size}")
            return FramePrompt(mask=mask.astype(bool))
        prompt = Prompt.of(points, labels, box)
        check_prompts([prompt])
        check_coordinates([prompt], self.video_size)
        return FramePrompt(prompt.points, prompt.labels, prompt.box)

    def _features(self, frame: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        embeddings = self._frames(frame)
        if tuple(embeddings.original_size) != self.video_size:
            raise FrameSizeError(frame, tuple(embeddings.original_size), self.video_size)  # type: ignore[arg-type]
        first, second, third = (np.asarray(t, np.float32) for t in embeddings.tensors)
        return first, second, third

    def _tokens(self, prompt: FramePrompt | None) -> tuple[np.ndarray, np.ndarray]:
        """(points [N, 2] in model pixels, labels [N]) as transformers' video processor + prompt encoder
        build them: box corners first, then clicks, then the "not a point" pad; no prompt: two pads."""
        if prompt is None:
            return np.zeros((2, 2), np.float32), np.full(2, _NOT_A_POINT, np.int64)
        points, labels = [], []
        if prompt.box is not None:
            x1, y1, x2, y2 = prompt.box
            points += [(x1, y1), (x2, y2)]
            labels += list(_BOX_LABELS)
        points += list(prompt.points)
        labels += list(prompt.labels)
        size = (self.graphs.image_size, self.graphs.image_size)
        scaled = scale_points(np.array(points, np.float32).reshape(-1, 2), self.video_size, size)
        return np.concatenate([scaled, np.zeros((1, 2), np.float32)]), np.array([*labels, _NOT_A_POINT], np.int64)

    def _step(
        self, frame: int, objects: list[ObjectState], prompts: dict[int, FramePrompt], *, reverse: bool
    ) -> FrameResult:
        """transformers' forward on one frame for `objects`, then the state update (all or nothing)."""
        features = self._features(frame)
        passes = []
        for state in objects:
            prompt = prompts.get(state.obj_id)
            cached = state.conditioning.get(frame)
            item = _Pass(state, prompt, initial=prompt is not None and not state.is_tracked(frame))
            if prompt is None and cached is not None:
                item.mask_logits, item.score = cached.mask_logits, cached.object_score_logit
            passes.append(item)
        work = [p for p in passes if p.mask_logits is None]
        self._decode(frame, features, [p for p in work if p.prompt is None or p.prompt.mask is None], reverse)
        self._mask_prompts(features, [p for p in work if p.prompt is not None and p.prompt.mask is not None])
        self._encode_memories(features, work)
        for item in work:
            self._commit(frame, item)
        size = self.video_size
        return FrameResult(
            frame,
            tuple(ObjectFrame(p.state.obj_id, p.mask_logits, p.score, size) for p in passes),  # type: ignore[arg-type]
        )

    def _decode(self, frame: int, features: tuple[np.ndarray, ...], passes: list[_Pass], reverse: bool) -> None:
        """Memory attention (grouped by bank shape) then the decoder (grouped by prompt length)."""
        embedding_0, embedding_1, embedding_2 = features
        conditioned: dict[int, np.ndarray] = {}
        banks: dict[tuple[int, int], list[tuple[int, bank.MemoryBank]]] = {}
        for index, item in enumerate(passes):
            if item.initial:
                conditioned[index] = embedding_2[0]
            else:
                memory = bank.gather(
                    item.state, frame, reverse=reverse, num_frames=self.num_frames, limits=self.graphs.limits
                )
                banks.setdefault(memory.shape_key, []).append((index, memory))
        for group in banks.values():
            outputs = self.graphs.memory_attention(
                embedding_2,
                np.stack([np.stack([from_bfloat16_bits(m) for m in b.memories]) for _, b in group]),
                np.array([b.memory_time for _, b in group], np.int64),
                np.stack([_pointers(b.pointers, embedding_2.shape[1]) for _, b in group]),
                np.array([b.pointer_time for _, b in group], np.float32).reshape(len(group), -1),
            )
            conditioned.update({index: out for (index, _), out in zip(group, outputs, strict=True)})
        by_length: dict[int, list[int]] = {}
        tokens = [self._tokens(item.prompt) for item in passes]
        for index, (points, _) in enumerate(tokens):
            by_length.setdefault(len(points), []).append(index)
        for indices in by_length.values():
            masks, iou, scores, pointers = self.graphs.decode(
                np.stack([conditioned[i] for i in indices]),
                embedding_0,
                embedding_1,
                np.stack([tokens[i][0] for i in indices]),
                np.stack([tokens[i][1] for i in indices]),
            )
            for row, index in enumerate(indices):
                item = passes[index]
                count = item.prompt.point_count if item.prompt is not None else 0
                multimask = self.graphs.rules.multimask(item.initial, count)
                mask, pointer = choose(masks[row], iou[row], pointers[row], multimask, self.graphs.rules)
                item.score = float(scores[row, 0])
                item.mask_logits = mask if item.score > 0 else np.full_like(mask, NO_OBJECT_LOGIT)
                item.memory_mask, item.pointer = item.mask_logits, pointer

    def _mask_prompts(self, features: tuple[np.ndarray, ...], passes: list[_Pass]) -> None:
        """transformers' `_use_mask_as_output`: the mask is the answer; the decoder, on the frame's bare
        features, only makes the object pointer."""
        embedding_0, embedding_1, embedding_2 = features
        size = self.graphs.image_size
        for item in passes:
            mask = item.prompt.mask.astype(np.float32)  # type: ignore[union-attr]
            if mask.shape != (size, size):
                mask = (resize_antialiased(mask, size, size) >= 0.5).astype(np.float32)
            present = bool(mask.any())
            high = mask * np.float32(MASK_PROMPT_SCALE) + np.float32(MASK_PROMPT_BIAS)
            mask_inputs, bare = self.graphs.mask_prompt(mask[None, None], embedding_2)
            points, labels = self._tokens(None)
            masks, iou, _, pointers = self.graphs.decode(
                bare, embedding_0, embedding_1, points[None], labels[None], mask_inputs, np.array([present])
            )
            _, item.pointer = choose(masks[0], iou[0], pointers[0], True, self.graphs.rules)
            item.mask_logits = resize_antialiased(high, *self.graphs.mask_size)
            item.score = MASK_PROMPT_SCALE * present + MASK_PROMPT_BIAS
            item.memory_mask = high

    def _encode_memories(self, features: tuple[np.ndarray, ...], passes: list[_Pass]) -> None:
        """One memory encoder call per mask size. transformers binarises every object's mask in the call
        when any of them was prompted on this frame (`_batch_encode_memories`): so do we."""
        binarize = any(item.prompt is not None for item in passes)
        by_size: dict[tuple[int, ...], list[_Pass]] = {}
        for item in passes:
            by_size.setdefault(item.memory_mask.shape, []).append(item)  # type: ignore[union-attr]
        for group in by_size.values():
            memories = self.graphs.encode_memory(
                features[2],
                np.stack([item.memory_mask for item in group])[:, None],  # type: ignore[misc]
                np.full(len(group), binarize),
                np.array([[item.score] for item in group], np.float32),
            )
            for item, memory in zip(group, memories, strict=True):
                item.features = to_bfloat16_bits(memory)

    def _commit(self, frame: int, item: _Pass) -> None:
        state = item.state
        if item.prompt is not None:
            state.prompts[frame] = item.prompt
        if item.initial:
            state.conditioning[frame] = Conditioning(
                item.features,
                item.pointer,
                item.mask_logits,
                item.score,  # type: ignore[arg-type]
            )
        else:
            bank.remember(state, frame, item.features, item.pointer, self.graphs.limits)  # type: ignore[arg-type]
            state.mark_tracked(frame)


def _pointers(pointers: list[np.ndarray], channels: int) -> np.ndarray:
    """[P, C] float32, also when P is 0."""
    return np.stack(pointers).astype(np.float32) if pointers else np.zeros((0, channels), np.float32)
