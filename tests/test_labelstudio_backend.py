"""The Label Studio ML backend (labelstudio/, sam3-label-studio) against a real sam3 service on loopback.

What Label Studio sends is written here as Label Studio 1.23 sends it (tests/test_labelstudio_server.py
proves the same against a real Label Studio). Task images are served by a small HTTP server that, like
Label Studio, wants a token; the mask the backend returns must be the SDK's mask for the same prompt.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import concept_references
from sam3_client import Client
from sam3_client.masks import rasterize_polygons
from sam3_label_studio.backend import Backend, BackendOptions
from sam3_label_studio.brush import mask_to_rle
from sam3_label_studio.errors import BackendError
from sam3_label_studio.images import LabelStudio
from sam3_label_studio.labeling import LabelingConfig
from sam3_label_studio.prompts import from_context
from sam3_label_studio.server import create_server
from service_stack import Stack, running
from test_concept_service import unified_model

IMAGE = concept_references.IMAGES_DIR / "landscape.jpg"
WIDTH, HEIGHT = 640, 480
TOKEN = "legacy-token-123"
THRESHOLD = 0.45  # the tiny random-weight model scores "Dog" instances 0.42-0.48 on this image: keep a few
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="mask" toName="image"><Label value="Cat"/><Label value="Dog"/></BrushLabels>
  <KeyPointLabels name="click" toName="image" smart="true">
    <Label value="Cat" smart="true"/><Label value="Dog" smart="true"/><Label value="Background" smart="true"/>
  </KeyPointLabels>
  <RectangleLabels name="box" toName="image" smart="true"><Label value="Cat"/><Label value="Dog"/></RectangleLabels>
  <TextArea name="phrase" toName="image" editable="true"/>
</View>"""


# ---------------------------------------------------------------- the brush RLE, read back by its format


def decode_brush(rle: list[int]) -> np.ndarray:
    """Label Studio's brush RLE -> its RGBA values, written from the format (thi.ng rle-pack), bit by bit."""
    bits = np.unpackbits(np.array(rle, dtype=np.uint8))
    position = 0

    def read(count: int) -> int:
        nonlocal position
        value = int("".join(map(str, bits[position : position + count])) or "0", 2)
        position += count
        return value

    total, word = read(32), read(5) + 1
    fields = [read(4) + 1 for _ in range(4)]
    out = np.zeros(total, dtype=np.uint8)
    index = 0
    while index < total:
        repeated = read(1)
        end = index + 1 + read(fields[read(2)])
        if repeated:
            out[index:end] = read(word)
        else:
            for i in range(index, end):
                out[i] = read(word)
        index = end
    return out


def as_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    values = decode_brush(rle).reshape(height, width, 4)
    assert (values == values[:, :, :1]).all(), "every RGBA channel of a pixel is the same"
    return values[:, :, 3] == 255


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((3, 5), bool),
        np.ones((1, 1), bool),
        np.random.default_rng(0).random((37, 53)) > 0.5,  # runs of one pixel: 4 values each
        np.pad(np.ones((150, 170), bool), 20),  # runs of 680 values: 16-bit fields
        np.ones((200, 400), bool),  # one run of 320000 values: split at 65536
        np.eye(300, dtype=bool),
    ],
    ids=["empty", "one-pixel", "speckled", "square", "longer-than-a-field", "diagonal"],
)
def test_brush_rle_reads_back_to_the_mask(mask: np.ndarray) -> None:
    assert np.array_equal(as_mask(mask_to_rle(mask), *mask.shape), mask)


def test_brush_rle_bytes_are_label_studios() -> None:
    # 1 x 2 mask, one background then one foreground pixel: header (count 8, word 8, fields 3/4/8/16),
    # then two repeated runs of 4 values (flag 1, field 0, length-1 = 3 in 3 bits, the byte), then padding.
    header = f"{8:032b}{7:05b}{2:04b}{3:04b}{7:04b}{15:04b}"
    body = f"100011{0:08b}100011{255:08b}"
    bits = header + body
    bits += "0" * (8 - len(bits) % 8)
    assert mask_to_rle(np.array([[False, True]])) == [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def test_a_mask_must_be_two_dimensional() -> None:
    with pytest.raises(ValueError, match="H x W"):
        mask_to_rle(np.zeros((2, 2, 2), bool))


# ---------------------------------------------------------------- labelling configs and prompts


def test_the_config_names_the_image_field_answer_and_prompt_tools() -> None:
    config = LabelingConfig.parse(CONFIG)
    assert (config.image_name, config.data_key) == ("image", "image")
    assert (config.answer.name, config.answer.labels) == ("mask", ("Cat", "Dog"))
    assert [c.name for c in config.prompts] == ["click", "box", "phrase"]


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<View><Image name='i' value='$img'/></View>", "needs an <Image> with a <BrushLabels>"),
        ("<View><Image name='i' value='$img'/", "not valid XML"),
        ("<View><Image name='i' value='img'/><BrushLabels name='b' toName='i'/></View>", 'value="\\$key"'),
    ],
)
def test_a_config_sam3_cannot_answer_is_refused_saying_why(xml: str, message: str) -> None:
    with pytest.raises(BackendError, match=message) as refused:
        LabelingConfig.parse(xml)
    assert refused.value.status == 400


def keypoint(x: float, y: float, label: str = "Cat", **extra: Any) -> dict[str, Any]:
    """A smart keypoint as Label Studio serialises it, at pixel (x, y) of the 640 x 480 image."""
    value = {"x": x / WIDTH * 100, "y": y / HEIGHT * 100, "width": 0.5, "keypointlabels": [label]}
    return {"from_name": "click", "to_name": "image", "type": "keypointlabels", "original_width": WIDTH,
            "original_height": HEIGHT, "image_rotation": 0, "value": value, "origin": "manual", **extra}  # fmt: skip


def rectangle(x1: float, y1: float, x2: float, y2: float, label: str = "Cat", rotation: float = 0) -> dict[str, Any]:
    value = {"x": x1 / WIDTH * 100, "y": y1 / HEIGHT * 100, "width": (x2 - x1) / WIDTH * 100,
             "height": (y2 - y1) / HEIGHT * 100, "rotation": rotation, "rectanglelabels": [label]}  # fmt: skip
    return {"from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": WIDTH,
            "original_height": HEIGHT, "image_rotation": 0, "value": value}  # fmt: skip


def phrase(text: str) -> dict[str, Any]:
    return {"from_name": "phrase", "to_name": "image", "type": "textarea", "original_width": WIDTH,
            "original_height": HEIGHT, "value": {"text": [text]}}  # fmt: skip


def prompts_of(*regions: dict[str, Any]):
    return from_context({"result": list(regions)}, LabelingConfig.parse(CONFIG), ("Negative", "Background"))


def test_keypoints_are_clicks_in_pixels_and_alt_clicks_or_background_labels_are_negative() -> None:
    prompts = prompts_of(keypoint(300, 200), keypoint(20, 20, is_positive=False), keypoint(600, 40, "Background"))
    (only,) = prompts.objects
    np.testing.assert_allclose(only.prompt.points, [(300, 200), (20, 20), (600, 40)])
    assert list(only.prompt.labels) == [1, 0, 0] and only.label == "Cat"
    assert (prompts.width, prompts.height) == (WIDTH, HEIGHT)


def test_one_rectangle_takes_every_click_and_several_are_one_object_each() -> None:
    (single,) = prompts_of(rectangle(100, 80, 600, 450), keypoint(300, 200)).objects
    np.testing.assert_allclose(single.prompt.box, (100, 80, 600, 450))
    np.testing.assert_allclose(single.prompt.points, [(300, 200)])
    first, second = prompts_of(
        rectangle(0, 0, 100, 100), rectangle(200, 200, 400, 400, "Dog"), keypoint(300, 300, is_positive=False)
    ).objects
    assert (first.label, list(first.prompt.points)) == ("Cat", [])
    assert (second.label, list(second.prompt.labels)) == ("Dog", [0])
    np.testing.assert_allclose(second.prompt.points, [(300, 300)])


def test_a_rotated_rectangle_prompts_with_the_upright_box_around_it() -> None:
    (rotated,) = prompts_of(rectangle(100, 100, 200, 150, rotation=90)).objects
    # 90 degrees clockwise about the top-left corner (100, 100): x from 50 to 100, y from 100 to 200.
    np.testing.assert_allclose(rotated.prompt.box, (50, 100, 100, 200), atol=1e-9)


def test_a_phrase_asks_for_a_concept_labelled_by_itself_or_by_a_label_prefix() -> None:
    assert [(c.phrase, c.label) for c in prompts_of(phrase("dog")).concepts] == [("dog", "Dog")]
    (concept,) = prompts_of(phrase("Cat: a tabby cat"), rectangle(10, 10, 50, 50)).concepts
    assert (concept.phrase, concept.label) == ("a tabby cat", "Cat")
    ((box, positive),) = concept.exemplars
    np.testing.assert_allclose(box, (10, 10, 50, 50))
    assert positive


@pytest.mark.parametrize(
    ("regions", "message"),
    [
        ([keypoint(5, 5, is_positive=False)], "add a foreground click"),
        ([keypoint(5, 5, "Horse")], "'Horse', which is not one of the labels"),
        ([phrase("a horse")], "not one of the labels"),
        ([dict(keypoint(5, 5), image_rotation=90)], "rotated image"),
        ([keypoint(5, 5), dict(rectangle(1, 1, 9, 9), original_width=99)], "disagree on the image's size"),
        ([], "no keypoint, rectangle or text"),
    ],
)
def test_prompts_sam3_cannot_take_are_refused_saying_what_to_do(regions: list[dict], message: str) -> None:
    with pytest.raises(BackendError, match=message):
        prompts_of(*regions)


# ---------------------------------------------------------------- the backend over HTTP, sam3 and an image server


class ImageServer:
    """Serves the test image at /data/upload/1/landscape.jpg to requests with Label Studio's token, and
    /elsewhere redirecting to a second origin that records the headers it got."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.other = self._start(self._other_origin())
        self.main = self._start(self._label_studio())

    def _start(self, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def url(self, server: ThreadingHTTPServer) -> str:
        return f"http://127.0.0.1:{server.server_address[1]}"

    def _label_studio(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/elsewhere":
                    self.send_response(302)
                    self.send_header("Location", owner.url(owner.other) + "/image.jpg")
                    self.end_headers()
                elif self.headers.get("Authorization") != f"Token {TOKEN}":
                    self.send_error(401)
                else:
                    owner.reply(self)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def _other_origin(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.seen.append(dict(self.headers))
                owner.reply(self)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    @staticmethod
    def reply(handler: BaseHTTPRequestHandler) -> None:
        data = IMAGE.read_bytes()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def close(self) -> None:
        for server in (self.main, self.other):
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    server = ImageServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def sam3(redis_url: str) -> Iterator[Stack]:
    with running(redis_url, f"labelstudio-{uuid.uuid4().hex[:8]}", model=unified_model()) as stack:
        yield stack


class Running:
    def __init__(self, backend: Backend, url: str) -> None:
        self.backend, self.url = backend, url

    def call(self, path: str, body: dict[str, Any] | None = None, auth: str | None = None) -> tuple[int, str, Any]:
        """(status, reason phrase, JSON body) of a call as Label Studio makes it."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth else {})}
        request = urllib.request.Request(self.url + path, data, headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, response.reason, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, error.reason, json.loads(error.read())

    def predict(
        self, tasks: list[dict[str, Any]], *regions: dict[str, Any], config: str = CONFIG
    ) -> tuple[int, str, Any]:
        context = {"result": list(regions)} if regions else None
        body = {"tasks": tasks, "project": "1.1700000000", "label_config": config, "params": {"context": context}}
        return self.call("/predict", body)


@contextmanager
def serve(
    target: str, label_studio: LabelStudio, polygon_tolerance: float = 1.0, **server_options: Any
) -> Iterator[Running]:
    with Client(target) as client:
        options = BackendOptions(target, label_studio, threshold=THRESHOLD, polygon_tolerance=polygon_tolerance)
        backend = Backend(client, options)
        server = create_server(backend, "127.0.0.1", 0, threads=4, **server_options)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            yield Running(backend, f"http://127.0.0.1:{server.effective_port}")
        finally:
            server.close()
            thread.join(10)


@pytest.fixture(scope="module")
def backend(sam3: Stack, images: ImageServer) -> Iterator[Running]:
    with serve(sam3.target, LabelStudio(images.url(images.main), TOKEN)) as running_backend:
        yield running_backend


def task(path: str = "/data/upload/1/landscape.jpg", task_id: int = 7) -> dict[str, Any]:
    return {"id": task_id, "data": {"image": path}, "project": 1}


def test_health_and_setup_answer_as_label_studio_expects(backend: Running, sam3: Stack) -> None:
    status, _, health = backend.call("/health")
    assert status == 200 and health["status"] == "UP"
    status, _, setup = backend.call(
        "/setup", {"project": "1.1700000000", "schema": CONFIG, "hostname": "", "access_token": ""}
    )
    with Client(sam3.target) as client:
        assert (status, setup) == (200, {"model_version": f"sam3-{client.model_info().model_id}"})


def test_a_click_comes_back_as_the_sdks_mask_in_label_studios_rle(backend: Running, sam3: Stack) -> None:
    status, _, answer = backend.predict([task()], keypoint(300, 200), keypoint(20, 20, is_positive=False))
    assert status == 200
    (prediction,) = answer["results"]
    (result,) = prediction["result"]
    with Client(sam3.target) as client:
        expected = client.segment(IMAGE, points=[[300, 200], [20, 20]], labels=[1, 0])
    assert result["type"] == "brushlabels" and result["value"]["brushlabels"] == ["Cat"]
    assert (result["from_name"], result["to_name"]) == ("mask", "image")
    assert (result["original_width"], result["original_height"]) == (WIDTH, HEIGHT)
    assert np.array_equal(as_mask(result["value"]["rle"], HEIGHT, WIDTH), expected.mask)
    assert result["score"] == pytest.approx(max(expected.objects[0].iou_scores))
    assert prediction["model_version"].startswith("sam3-")


@pytest.fixture(scope="module")
def dogs(sam3: Stack) -> list[np.ndarray]:
    """The SDK's masks of every instance of "Dog" (concept queries take seconds: asked once)."""
    with Client(sam3.target) as client:
        found = [i.mask for i in client.segment_concept(IMAGE, "Dog", threshold=THRESHOLD).instances if i.area]
    assert len(found) >= 2, "the comparison needs instances to compare"
    return found


def test_a_box_and_a_phrase_answer_too(backend: Running, sam3: Stack, dogs: list[np.ndarray]) -> None:
    status, _, boxed = backend.predict([task()], rectangle(100, 80, 600, 450, "Dog"))
    assert status == 200
    status, _, concept = backend.predict([task()], phrase("Dog"))
    assert status == 200
    with Client(sam3.target) as client:
        box = client.segment(IMAGE, box=[100, 80, 600, 450]).mask
    (region,) = boxed["results"][0]["result"]
    assert region["value"]["brushlabels"] == ["Dog"]
    assert np.array_equal(as_mask(region["value"]["rle"], HEIGHT, WIDTH), box)
    found = concept["results"][0]["result"]
    assert [r["value"]["brushlabels"] for r in found] == [["Dog"]] * len(dogs)
    assert all(np.array_equal(as_mask(r["value"]["rle"], HEIGHT, WIDTH), m) for r, m in zip(found, dogs, strict=True))


def test_without_a_prompt_every_task_gets_every_labels_instances(backend: Running, dogs: list[np.ndarray]) -> None:
    one_label = CONFIG.replace(
        '<Label value="Cat"/><Label value="Dog"/></BrushLabels>', '<Label value="Dog"/></BrushLabels>'
    )
    body = {"tasks": [task(), task(task_id=8)], "project": "1.1700000000", "label_config": one_label, "params": {}}
    status, _, answer = backend.call("/predict", body)
    assert status == 200 and len(answer["results"]) == 2
    for prediction in answer["results"]:
        found = prediction["result"]
        assert [r["value"]["brushlabels"] for r in found] == [["Dog"]] * len(dogs)
        assert all(
            np.array_equal(as_mask(r["value"]["rle"], HEIGHT, WIDTH), m) for r, m in zip(found, dogs, strict=True)
        )


def test_images_elsewhere_get_no_label_studio_token_even_through_a_redirect(
    backend: Running, images: ImageServer
) -> None:
    images.seen.clear()
    status, _, _ = backend.predict([task(images.url(images.main) + "/elsewhere", task_id=9)], keypoint(300, 200))
    assert status == 200
    assert images.seen and all("Authorization" not in headers for headers in images.seen)
    inline = "data:image/jpeg;base64," + base64.b64encode(IMAGE.read_bytes()).decode()
    assert backend.predict([task(inline, task_id=10)], keypoint(300, 200))[0] == 200


def test_failures_read_as_what_to_do_in_the_status_line(backend: Running, sam3: Stack, images: ImageServer) -> None:
    status, reason, body = backend.predict([task()], keypoint(5, 5, "Horse"))
    assert status == 400 and "not one of the labels" in reason and body["error"].startswith(reason[:50])
    status, reason, _ = backend.predict([task(task_id=11)], dict(keypoint(300, 200), original_width=641))
    assert status == 409 and "640 x 480" in reason
    for key, expected in ((None, "set LABEL_STUDIO_API_KEY"), ("wrong", "with the configured token")):
        with serve(sam3.target, LabelStudio(images.url(images.main), key)) as other:
            status, reason, _ = other.predict([task("/data/upload/1/other.jpg", task_id=12)], keypoint(300, 200))
        assert status == 502 and expected in reason and "HTTP 401" in reason
    status, reason, _ = backend.call("/setup", {"project": "1.1", "schema": "<View/>"})
    assert status == 400 and "needs an <Image>" in reason
    assert backend.call("/nowhere")[0] == 404


def test_an_unreachable_sam3_is_named_with_the_variable_that_sets_it(images: ImageServer) -> None:
    with serve("127.0.0.1:1", LabelStudio(images.url(images.main), TOKEN)) as down:
        status, reason, _ = down.predict([task()], keypoint(300, 200))
    assert status == 502 and "127.0.0.1:1 is unreachable" in reason and "SAM3_SERVER" in reason


def test_basic_auth_guards_every_call(sam3: Stack, images: ImageServer) -> None:
    good = "Basic " + base64.b64encode(b"ls:s3cret").decode()
    bad = "Basic " + base64.b64encode(b"ls:guess").decode()
    with serve(sam3.target, LabelStudio(images.url(images.main), TOKEN), basic_auth=("ls", "s3cret")) as guarded:
        assert guarded.call("/health")[0] == 401
        assert guarded.call("/health", auth=good)[0] == 200 and guarded.call("/health", auth=bad)[0] == 401


def test_imported_tasks_are_encoded_before_anyone_clicks(backend: Running, sam3: Stack) -> None:
    other = IMAGE.with_name("portrait.png")
    inline = "data:image/png;base64," + base64.b64encode(other.read_bytes()).decode()
    event = {"action": "TASKS_CREATED", "project": {"id": 1, "label_config": CONFIG}, "tasks": [task(inline, 20)]}
    assert backend.call("/webhook", event)[2] == {"status": "queued", "images": 1}
    assert backend.call("/webhook", {"action": "PROJECT_UPDATED"})[2]["status"] == "ignored"
    deadline = time.monotonic() + 60
    while backend.call("/health")[2]["pre_encode"]["waiting"] or not backend.backend.pre_encoder.stats()["encoded"]:
        assert time.monotonic() < deadline, backend.call("/health")[2]
        time.sleep(0.2)
    with Client(sam3.target) as client:  # by id only: it fails unless the image was stored
        assert client.segment(hashlib.sha256(other.read_bytes()).hexdigest(), points=[[10, 10]]).mask is not None


def test_the_main_readme_gives_the_commands_the_backends_readme_gives_and_its_test_runs() -> None:
    """tests/test_labelstudio_server.py runs labelstudio/README.md's commands; the main README repeats them."""
    root = Path(__file__).resolve().parent.parent
    blocks = [
        re.findall(r"^```bash\n(.*?)^```", (root / name).read_text(), re.M | re.S)
        for name in ("README.md", "labelstudio/README.md")
    ]
    assert blocks[1][0] in blocks[0]
    assert "pip install ./client ./labelstudio" in blocks[1][0]


POLYGON_CONFIG = CONFIG.replace("BrushLabels", "PolygonLabels")


def test_a_polygon_config_gets_one_outline_region_per_part_in_percent(sam3: Stack, images: ImageServer) -> None:
    """At tolerance 0 the outlines are the mask's own pixel edges: filled, they cover the mask and add
    only its holes (Label Studio's polygons have none)."""
    with serve(sam3.target, LabelStudio(images.url(images.main), TOKEN), polygon_tolerance=0) as exact:
        status, _, answer = exact.predict([task()], keypoint(300, 200), config=POLYGON_CONFIG)
    assert status == 200
    found = answer["results"][0]["result"]
    with Client(sam3.target) as client:
        outline = client.segment(IMAGE, points=[[300, 200]], mask_format="polygon", polygon_tolerance=0)
    polygons = outline.objects[0].masks[0].polygons
    assert len(found) == len(polygons.outer) > 0
    rings = []
    for region, expected in zip(found, polygons.outer, strict=True):
        assert region["type"] == "polygonlabels" and region["value"]["polygonlabels"] == ["Cat"]
        assert region["value"]["closed"] and region["from_name"] == "mask"
        points = np.array(region["value"]["points"]) * [WIDTH / 100, HEIGHT / 100]
        np.testing.assert_allclose(points.reshape(-1), expected, atol=1e-9)
        rings.append(points.reshape(-1).tolist())
    # Label Studio fills each polygon region on its own: their union covers the mask, holes filled.
    union = np.zeros((HEIGHT, WIDTH), bool)
    for ring in rings:
        union |= rasterize_polygons([ring], HEIGHT, WIDTH)
    assert (union >= outline.mask).all()
    holes = [ring for ring, hole in zip(polygons.coco, polygons.holes, strict=True) if hole]
    assert np.array_equal(union & ~outline.mask, union & rasterize_polygons(holes, HEIGHT, WIDTH) & ~outline.mask)


def test_more_clicks_on_the_same_object_refine_its_previous_mask(backend: Running, sam3: Stack) -> None:
    """Label Studio resends every smart keypoint: when the regions extend the last request's, the backend
    asks for SAM's refinement from the previous mask; a new object starts afresh."""
    first, second = dict(keypoint(300, 200), id="click-1"), dict(keypoint(20, 20, is_positive=False), id="click-2")
    other = dict(keypoint(500, 100), id="click-3")
    answers = [backend.predict([task(task_id=30)], *regions) for regions in ([first], [first, second], [other])]
    assert [status for status, _, _ in answers] == [200, 200, 200]
    masks = [as_mask(a["results"][0]["result"][0]["value"]["rle"], HEIGHT, WIDTH) for _, _, a in answers]
    with Client(sam3.target) as client:
        start = client.segment(IMAGE, points=[[300, 200]], object_key="the reference").objects[0]
        refined = client.refine(start, points=[[20, 20]], labels=[0])
        plain = client.segment(IMAGE, points=[[300, 200], [20, 20]], labels=[1, 0]).mask
        fresh = client.segment(IMAGE, points=[[500, 100]]).mask
    assert refined.mask_input_used and not np.array_equal(refined.mask, plain)  # refinement changes the answer
    assert np.array_equal(masks[0], start.mask)
    assert np.array_equal(masks[1], refined.mask)
    assert np.array_equal(masks[2], fresh)
