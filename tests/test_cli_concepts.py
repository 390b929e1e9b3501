"""`sam3 segment --text / --exemplar`: every instance in one label PNG, listed by --json, coloured by --overlay."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import concept_references as refs
import references
from sam3_cli.main import main
from sam3_core.masks import label_image
from test_concept import predictor_for

IMAGE = "landscape.jpg"


def test_text_and_exemplars_write_a_label_image_and_the_instances(tmp_path: Path, capsys) -> None:
    output, summary, overlay = tmp_path / "instances.png", tmp_path / "instances.json", tmp_path / "overlay.png"
    flags = ["--text", "a dog", "--text", "cat", "--exemplar", "100,100,300,250", "--neg-exemplar=-5,300,200,400"]
    code = main(
        [
            "segment",
            "-i",
            str(refs.IMAGES_DIR / IMAGE),
            *flags,
            "--threshold",
            "0.3",
            "--model-dir",
            str(refs.MODEL_DIR),
            "-o",
            str(output),
            "--json",
            str(summary),
            "--overlay",
            str(overlay),
        ]
    )
    assert code == 0, capsys.readouterr().err
    exemplars = [((100, 100, 300, 250), True), ((-5, 300, 200, 400), False)]
    predictor = predictor_for(IMAGE)
    answers = {phrase: predictor.detect_concept(phrase, exemplars, threshold=0.3) for phrase in ("a dog", "cat")}
    expected = [(phrase, instance) for phrase, answer in answers.items() for instance in answer.instances]
    listed = json.loads(summary.read_text())["instances"]
    assert [(item["index"], item["concept"]) for item in listed] == [(k + 1, c) for k, (c, _) in enumerate(expected)]
    for item, (_, instance) in zip(listed, expected, strict=True):
        assert item["score"] == pytest.approx(instance.score) and item["box"] == pytest.approx(list(instance.box))
        assert item["area"] == int(instance.mask().sum())
    labels = np.asarray(Image.open(output))
    assert labels.shape == (480, 640) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= set(range(len(expected) + 1))
    assert Image.open(overlay).size == (640, 480)
    out = capsys.readouterr().out
    for phrase, answer in answers.items():
        assert f"{phrase!r}: presence {answer.presence:.4f}, {len(answer.instances)} instance(s) above 0.3\n" in out


def test_presence_is_printed_and_written_when_nothing_passes_the_threshold(tmp_path: Path, capsys) -> None:
    """The first thing to look at when a phrase finds nothing: is the concept in the image at all."""
    summary = tmp_path / "instances.json"
    image, flags = str(refs.IMAGES_DIR / IMAGE), ["--model-dir", str(refs.MODEL_DIR), "--json", str(summary)]
    assert (
        main(["segment", "-i", image, "--text", "cat", "--threshold", "1", "-o", str(tmp_path / "i.png"), *flags]) == 0
    )
    presence = predictor_for(IMAGE).detect_concept("cat", threshold=1.0).presence
    assert 0 < presence < 1
    assert f"'cat': presence {presence:.4f}, 0 instance(s) above 1\n" in capsys.readouterr().out
    written = json.loads(summary.read_text())
    assert written["instances"] == []
    assert written["concepts"] == [{"concept": "cat", "presence": pytest.approx(presence), "instances": 0}]


def test_overlapping_instances_go_to_the_higher_score() -> None:
    first, second = np.zeros((2, 3), bool), np.zeros((2, 3), bool)
    first[:, :2], second[:, 1:] = True, True
    assert label_image([first, second], [0.4, 0.9], 2, 3).tolist() == [[1, 2, 2], [1, 2, 2]]
    assert label_image([first, second], [0.9, 0.4], 2, 3).tolist() == [[1, 1, 2], [1, 1, 2]]
    assert label_image([first] * 300, [0.5] * 300, 2, 3).dtype == np.uint16


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--text", "dog", "--point", "5,5"], "not both"),
        (
            ["--text", "dog", "--server", "no-port"],
            "--server no-port has no port (gRPC would dial 443): give HOST:PORT",
        ),
        (["--exemplar", "1,2,3"], "--exemplar '1,2,3': expected 4 comma-separated numbers"),
        (["--text", "dog", "--threshold", "2"], "--threshold 2.0"),
        (["--exemplar", "30,30,10,10"], "x2 > x1"),
    ],
)
def test_bad_concept_flags_are_one_line_errors(flags: list[str], message: str, capsys) -> None:
    code = main(["segment", "-i", str(refs.IMAGES_DIR / "tiny_17x23.png"), *flags, "--model-dir", str(refs.MODEL_DIR)])
    err = capsys.readouterr().err
    assert code == 2  # a usage error, like argparse's own
    assert message in err and err.count("\n") == 1


def test_a_tracker_only_folder_says_it_cannot_do_concepts(capsys) -> None:
    code = main(
        ["segment", "-i", str(refs.IMAGES_DIR / IMAGE), "--text", "dog", "--model-dir", str(references.MODEL_DIR)]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "clicks and boxes only" in err and "sam3 models export" in err
