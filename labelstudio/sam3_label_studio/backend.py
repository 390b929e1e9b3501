"""The ML backend's behaviour, one method per endpoint Label Studio calls (server.py only does HTTP).

- /setup: check the labelling config and the sam3 service; the answer's model version is the
  service's model id, so predictions are asked again when the model changes.
- /predict with a `context` (auto-annotation): the annotator's keypoints, rectangles or phrase ->
  one answer. Label Studio sends every smart region of the object each time: when they extend the
  previous request's (same task, its region ids and more), the object is refined from its previous
  mask, as SAM's interactive loop does (the worker remembers it under the task's object key).
  Without one ("Retrieve predictions", or predictions on task open): every instance of
  each answer label's name, as a concept phrase ("Banana", "Car"), on every task.
- /webhook TASKS_CREATED (Label Studio subscribes the backend to its project's events when the model
  is connected): pre-encode the new tasks' images in the background.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from sam3_client import Client, ConceptResult, ObjectPrompt, Reason, Sam3Error, SegmentResult
from sam3_label_studio.errors import BackendError, from_sam3
from sam3_label_studio.images import LabelStudio
from sam3_label_studio.labeling import LabelingConfig
from sam3_label_studio.preencode import PreEncoder
from sam3_label_studio.prompts import ConceptPrompt, LabelledObject, Prompts, from_context
from sam3_label_studio.regions import mask_format, regions

__all__ = ["Backend", "BackendOptions"]

log = logging.getLogger("sam3_label_studio")
Result = TypeVar("Result", SegmentResult, ConceptResult)
T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


class _Sized(Protocol):
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...


@dataclass(frozen=True)
class BackendOptions:
    """What the backend needs besides the sam3 client (each a flag / environment variable of the command)."""

    target: str  # where sam3 is called, for messages
    label_studio: LabelStudio  # Label Studio's address and token from the environment (may be unset)
    negative_labels: tuple[str, ...] = ("Negative", "Background")
    threshold: float = 0.5  # concept instances scoring below are dropped
    polygon_tolerance: float = 1.0  # pixels a <PolygonLabels> outline may stray from the mask's edge
    image_ids_seconds: float = 600.0  # how long a task image's id (and an object's prompt) is remembered


class Backend:
    """Answers Label Studio's calls with one shared, thread-safe sam3 `Client`."""

    def __init__(self, client: Client, options: BackendOptions) -> None:
        self.client = client
        self.options = options
        self._projects: dict[str, LabelStudio] = {}  # project id -> address and token from /setup
        self._image_ids: _Recent[tuple[str | None, str], str] = _Recent(options.image_ids_seconds)
        self._prompted: _Recent[str, frozenset[str]] = _Recent(options.image_ids_seconds)  # object key -> region ids
        self.pre_encoder = PreEncoder(self.pre_encode)
        self._model_version: str | None = None

    # ------------------------------------------------------------ endpoints

    def health(self) -> dict[str, Any]:
        """Cheap (Label Studio allows one second): no sam3 call."""
        return {"status": "UP", "model_class": "sam3", "pre_encode": self.pre_encoder.stats()}

    def setup(self, body: Mapping[str, Any]) -> dict[str, Any]:
        LabelingConfig.parse(str(body.get("schema") or ""))
        project = _project_id(body.get("project"))
        if project and (body.get("hostname") or body.get("access_token")):
            self._projects[project] = self.options.label_studio.completed_by(
                str(body.get("hostname") or ""), str(body.get("access_token") or "")
            )
        return {"model_version": self.model_version()}

    def predict(self, body: Mapping[str, Any]) -> dict[str, Any]:
        config = LabelingConfig.parse(str(body.get("label_config") or ""))
        tasks = body.get("tasks") or []
        if not isinstance(tasks, list) or not tasks:
            raise BackendError(400, "the request has no tasks")
        context = (body.get("params") or {}).get("context") or body.get("context")
        label_studio = self._label_studio(body.get("project"))
        if context and context.get("result"):
            prompts = from_context(context, config, self.options.negative_labels)
            project = _project_id(body.get("project"))
            return {"results": [self._interactive(tasks[0], config, prompts, label_studio, project)]}
        return {"results": [self._every_label(task, config, label_studio) for task in tasks]}

    def webhook(self, body: Mapping[str, Any]) -> dict[str, Any]:
        action = body.get("action")
        if action != "TASKS_CREATED":
            return {"status": "ignored", "action": action}
        project = body.get("project") or {}
        try:
            config = LabelingConfig.parse(str(project.get("label_config") or ""))
        except BackendError as error:
            return {"status": "ignored", "action": action, "reason": error.message}
        label_studio = self._label_studio(project.get("id"))
        images = [(str(t["data"][config.data_key]), t.get("id")) for t in _tasks_with(body.get("tasks"), config)]
        queued = self.pre_encoder.submit([(reference, task, label_studio) for reference, task in images])
        return {"status": "queued", "images": queued}

    def model_version(self) -> str:
        """The prefix "sam3-" and the served model's id: Label Studio asks again for predictions when it changes."""
        if self._model_version is None:
            info = self._sam3(lambda: self.client.model_info())
            self._model_version = f"sam3-{info.model_id}"
        return self._model_version

    # ------------------------------------------------------------ answers

    def _interactive(
        self,
        task: Mapping[str, Any],
        config: LabelingConfig,
        prompts: Prompts,
        label_studio: LabelStudio,
        project: str,
    ) -> dict[str, Any]:
        reference, task_id = _image_of(task, config)
        found: list[dict[str, Any]] = []
        if prompts.objects:
            objects = self._refined(f"label-studio:{project}:{task_id}", prompts.objects)
            options = self._mask_options(config)
            result = self._on_image(
                reference, task_id, label_studio, lambda image: self.client.segment_objects(image, objects, **options)
            )
            _same_size(result, prompts)
            for wanted, answer in zip(prompts.objects, result.objects, strict=True):
                if answer.masks and answer.masks[0].area > 0:  # an empty region is nothing to edit
                    found += regions(config, answer.masks[0], wanted.label, answer.iou_scores[answer.best_index])
        else:
            concepts = self._concepts(reference, task_id, label_studio, prompts.concepts, config)
            _same_size(concepts, prompts)
            found = self._instances(config, concepts, [c.label for c in prompts.concepts])
        return self._prediction(found)

    def _every_label(
        self, task: Mapping[str, Any], config: LabelingConfig, label_studio: LabelStudio
    ) -> dict[str, Any]:
        reference, task_id = _image_of(task, config)
        labels = list(config.answer.labels)
        if not labels:
            raise BackendError(400, f'<{config.answer.tag} name="{config.answer.name}"> has no labels to look for')
        try:
            prompts = [ConceptPrompt(label, label) for label in labels]
            result = self._concepts(reference, task_id, label_studio, prompts, config)
        except BackendError as error:
            raise BackendError(error.status, f"task {task_id}: {error.message}") from error
        return self._prediction(self._instances(config, result, labels))

    def _concepts(
        self,
        reference: str,
        task_id: int | None,
        label_studio: LabelStudio,
        concepts: Sequence[ConceptPrompt],
        config: LabelingConfig,
    ) -> ConceptResult:
        phrases = [c.phrase for c in concepts]
        exemplars = list(concepts[0].exemplars)
        options = self._mask_options(config)
        return self._on_image(
            reference,
            task_id,
            label_studio,
            lambda image: self.client.segment_concept(
                image, phrases, exemplars=exemplars, threshold=self.options.threshold, **options
            ),
        )

    def _refined(self, key: str, objects: list[LabelledObject]) -> list[ObjectPrompt]:
        """One object whose regions extend the last ones asked under `key` -> refined from its previous mask."""
        if len(objects) != 1 or not objects[0].regions:
            return [o.prompt for o in objects]
        (wanted,) = objects
        previous = self._prompted.get(key)
        self._prompted.put(key, wanted.regions)
        extends = previous is not None and previous < wanted.regions
        return [replace(wanted.prompt, object_key=key, mask_input="previous" if extends else None)]

    def _mask_options(self, config: LabelingConfig) -> dict[str, Any]:
        """The answer control's mask format, and for outlines how closely they follow the mask."""
        wanted = mask_format(config)
        if wanted == "polygon":
            return {"mask_format": wanted, "polygon_tolerance": self.options.polygon_tolerance}
        return {"mask_format": wanted}

    @staticmethod
    def _instances(config: LabelingConfig, result: ConceptResult, labels: Sequence[str]) -> list[dict[str, Any]]:
        return [
            found
            for answer, label in zip(result.concepts, labels, strict=True)
            for instance in answer.instances
            if instance.area > 0
            for found in regions(config, instance.encoded, label, instance.score)
        ]

    def _prediction(self, regions: list[dict[str, Any]]) -> dict[str, Any]:
        score = float(np.mean([r["score"] for r in regions])) if regions else 0.0
        return {"result": regions, "score": score, "model_version": self.model_version()}

    # ------------------------------------------------------------ images and sam3

    def _on_image(
        self, reference: str, task_id: int | None, label_studio: LabelStudio, call: Callable[[Any], Result]
    ) -> Result:
        """`call` on the task's image: by its id when sam3 stored it lately, else with the bytes read from
        Label Studio (sam3 encodes them if its store lacks them)."""
        key = (label_studio.url, reference)
        image_id = self._image_ids.get(key)
        if image_id is not None:
            try:
                return call(image_id)
            except Sam3Error as error:
                if error.reason is not Reason.EMBEDDING_NOT_FOUND:
                    raise from_sam3(error, self.options.target) from error
        data = label_studio.image(reference, task_id)
        result = self._sam3(lambda: call(data))
        self._image_ids.put(key, result.image_id)
        return result

    def pre_encode(self, reference: str, task_id: int | None, label_studio: LabelStudio) -> bool:
        """Encode one task image ahead of its first click; False when sam3 had it already."""
        key = (label_studio.url, reference)
        if self._image_ids.get(key) is not None:
            return False
        data = label_studio.image(reference, task_id)
        encoded = self._sam3(lambda: self.client.encode(data, prefetch=False, prewarm=True))
        self._image_ids.put(key, encoded.image_id)
        log.debug("task %s: image %s %s", task_id, encoded.image_id, "was stored" if encoded.cached else "encoded")
        return not encoded.cached

    def _sam3(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except Sam3Error as error:
            raise from_sam3(error, self.options.target) from error

    def _label_studio(self, project: Any) -> LabelStudio:
        """The environment's Label Studio, completed by what /setup said for this project."""
        return self._projects.get(_project_id(project), self.options.label_studio)


class _Recent(Generic[K, V]):
    """What the backend remembers for a while, least recently used first out: a task image's id in sam3's
    store (later clicks skip reading the image), the regions an object was last prompted with."""

    def __init__(self, seconds: float, entries: int = 4096) -> None:
        self._seconds, self._entries = seconds, entries
        self._ids: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            found = self._ids.get(key)
            if found is None or found[1] < time.monotonic():
                self._ids.pop(key, None)
                return None
            self._ids.move_to_end(key)
            return found[0]

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._ids[key] = (value, time.monotonic() + self._seconds)
            self._ids.move_to_end(key)
            while len(self._ids) > self._entries:
                self._ids.popitem(last=False)


def _project_id(project: Any) -> str:
    """Label Studio names a project "<id>.<created timestamp>" in /setup and /predict, by its id in webhooks."""
    return str(project or "").split(".")[0]


def _image_of(task: Mapping[str, Any], config: LabelingConfig) -> tuple[str, int | None]:
    data = task.get("data") or {}
    reference = data.get(config.data_key)
    if not isinstance(reference, str) or not reference:
        raise BackendError(400, f"task {task.get('id')} has no image URL in its data field '{config.data_key}'")
    return reference, task.get("id")


def _tasks_with(tasks: Any, config: LabelingConfig) -> list[Mapping[str, Any]]:
    return [
        t for t in tasks or () if isinstance(t, Mapping) and isinstance((t.get("data") or {}).get(config.data_key), str)
    ]


def _same_size(result: _Sized, prompts: Prompts) -> None:
    """Label Studio's percentages are of the image as it shows it; a mask at another size would be misplaced."""
    if (result.width, result.height) != (prompts.width, prompts.height):
        raise BackendError(
            409,
            f"Label Studio shows the image as {prompts.width} x {prompts.height} but sam3 decoded "
            f"{result.width} x {result.height} (an EXIF orientation the browser ignored?)",
        )
