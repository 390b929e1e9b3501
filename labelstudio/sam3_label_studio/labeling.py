"""What a project's labelling config asks of the backend: which image, which prompt tools, which answer.

Label Studio hands the config (XML) to /setup and to every /predict. The backend needs: the `<Image>`
the tools point at and the task data key holding its URL (`value="$image"`); the answer control,
`<BrushLabels>` (masks) or `<PolygonLabels>` (outlines), the first on that image, with its labels;
and which controls carry
prompts (`<KeyPointLabels>`, `<RectangleLabels>`, `<TextArea>` for a concept phrase).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

from sam3_label_studio.errors import BackendError

__all__ = ["ANSWER_TAGS", "Control", "LabelingConfig"]

# Answer control tag -> the result type Label Studio stores ("brushlabels" regions carry an RLE,
# "polygonlabels" ones the points of one outline).
ANSWER_TAGS = {"BrushLabels": "brushlabels", "PolygonLabels": "polygonlabels"}
PROMPT_TAGS = ("KeyPointLabels", "RectangleLabels", "TextArea")


@dataclass(frozen=True)
class Control:
    """One control tag of the config: its tag, name, the object it labels, and its label values."""

    tag: str
    name: str
    to_name: str
    labels: tuple[str, ...]

    @property
    def result_type(self) -> str:
        return ANSWER_TAGS[self.tag]


@dataclass(frozen=True)
class LabelingConfig:
    """The parts of one labelling config the backend uses."""

    image_name: str  # the <Image name=...> the answers are drawn on
    data_key: str  # the task data key of its URL: "image" for value="$image"
    answer: Control  # where masks go
    prompts: tuple[Control, ...]  # controls whose regions are prompts for `answer`'s image

    @classmethod
    def parse(cls, xml: str) -> LabelingConfig:
        """The config's first <Image> that has an answer control; BackendError (400) when none has."""
        try:
            root = ElementTree.fromstring(xml)
        except ElementTree.ParseError as error:
            raise BackendError(400, f"the labelling config is not valid XML: {error}") from error
        images = {e.get("name", ""): e.get("value", "") for e in root.iter("Image") if e.get("name")}
        controls = [_control(element) for element in root.iter() if element.tag in (*ANSWER_TAGS, *PROMPT_TAGS)]
        for name, value in images.items():
            answers = [c for c in controls if c.tag in ANSWER_TAGS and c.to_name == name]
            if answers:
                if not value.startswith("$") or len(value) < 2:
                    raise BackendError(400, f'<Image name="{name}"> needs value="$key" naming the task data field')
                prompts = tuple(c for c in controls if c.tag in PROMPT_TAGS and c.to_name == name)
                return cls(name, value[1:], answers[0], prompts)
        wanted = " or ".join(f"<{tag}>" for tag in ANSWER_TAGS)
        raise BackendError(
            400,
            f"the labelling config needs an <Image> with a {wanted} on it (toName = the image's name) "
            "for sam3's masks to go to",
        )

    def control(self, name: str) -> Control | None:
        """The prompt control called `name` (a context region's from_name)."""
        return next((c for c in self.prompts if c.name == name), None)

    def answer_label(self, wanted: str | None, what: str) -> str:
        """The answer control's label for a prompt labelled `wanted`: the same value, else its only label."""
        labels = self.answer.labels
        if wanted is not None:
            match = next((label for label in labels if label.casefold() == wanted.casefold()), None)
            if match is not None:
                return match
        if len(labels) == 1:
            return labels[0]
        choices = ", ".join(labels) or "none"
        given = f"'{wanted}'" if wanted else "no label"
        raise BackendError(
            400,
            f'{what} has {given}, which is not one of the labels of <{self.answer.tag} name="{self.answer.name}"> '
            f"({choices}): give the prompt tools the same labels as the answer",
        )


def _control(element: ElementTree.Element) -> Control:
    to_name = element.get("toName", "")
    labels = tuple(label.get("value", "") for label in element.iter("Label") if label.get("value"))
    return Control(element.tag, element.get("name", ""), to_name.split(",")[0], labels)
