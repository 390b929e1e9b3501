"""sam3_core.prompts: validation with field names, transformers' token layout, and batching by token count."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sam3_core.prompts import Prompt, PromptError, PromptLimits, build_batches, object_tokens, validate

SIZE = (480, 640)  # (height, width)
MODEL = (1008, 1008)


def click(x: float = 10.0, y: float = 20.0, label: int = 1) -> Prompt:
    return Prompt(((x, y),), (label,))


def field_of(prompts, size=SIZE, limits=PromptLimits()) -> PromptError:
    with pytest.raises(PromptError) as info:
        validate(prompts, size, limits)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(info.value.field + ": ")
    return info.value


# ------------------------------------------------------------------------------------------------
# Prompt.of
# ------------------------------------------------------------------------------------------------


def test_prompt_of_defaults_labels_to_foreground():
    prompt = Prompt.of([[1, 2], [3, 4]])
    assert prompt.points == ((1.0, 2.0), (3.0, 4.0))
    assert prompt.labels == (1, 1)
    assert prompt.box is None


def test_prompt_of_accepts_arrays():
    prompt = Prompt.of(np.array([[1.5, 2.5]]), np.array([0]), np.array([1, 2, 3, 4]))
    assert prompt.points == ((1.5, 2.5),)
    assert prompt.labels == (0,)
    assert prompt.box == (1.0, 2.0, 3.0, 4.0)
    assert all(type(v) is int for v in prompt.labels)


def test_prompt_of_box_only():
    prompt = Prompt.of(box=[1, 2, 3, 4])
    assert prompt.points == () and prompt.labels == ()


# ------------------------------------------------------------------------------------------------
# validate
# ------------------------------------------------------------------------------------------------


def test_valid_request_passes():
    validate(
        [click(), Prompt.of([[0, 0], [640, 480]], [1, 0], [1, 1, 639, 479]), Prompt.of(box=[0, 0, 640, 480])], SIZE
    )


def test_empty_request():
    assert field_of([]).field == "objects"


def test_object_with_nothing():
    assert field_of([click(), Prompt()]).field == "objects[1]"


def test_too_many_objects():
    limits = PromptLimits(max_objects=3)
    validate([click()] * 3, SIZE, limits)
    error = field_of([click()] * 4, limits=limits)
    assert error.field == "objects"
    assert "4" in str(error) and "3" in str(error)


def test_too_many_points():
    limits = PromptLimits(max_points=2)
    validate([Prompt.of([[1, 1], [2, 2]])], SIZE, limits)
    error = field_of([Prompt.of([[1, 1], [2, 2], [3, 3]])], limits=limits)
    assert error.field == "objects[0].points"


def test_labels_length_mismatch():
    error = field_of([click(), Prompt(((1.0, 1.0), (2.0, 2.0)), (1,))])
    assert error.field == "objects[1].labels"
    assert "1 labels for 2 points" in str(error)


@pytest.mark.parametrize("label", [2, 3, -1, -10])
def test_model_internal_labels_refused_from_users(label):
    error = field_of([Prompt(((5.0, 5.0), (6.0, 6.0)), (1, label))])
    assert error.field == "objects[0].points[1].label"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("axis", ["x", "y"])
def test_non_finite_coordinates(bad, axis):
    point = (bad, 5.0) if axis == "x" else (5.0, bad)
    error = field_of([Prompt((point,), (1,))])
    assert error.field == f"objects[0].points[0].{axis}"
    assert "finite" in str(error)


def test_negative_x_names_field_and_range():
    error = field_of([click(x=-5)])
    assert error.field == "objects[0].points[0].x"
    assert "-5" in str(error)
    assert "0..640" in str(error)


def test_y_checked_against_height_not_width():
    validate([click(x=5, y=480)], SIZE)
    error = field_of([click(x=5, y=481)])
    assert error.field == "objects[0].points[0].y"
    assert "0..480" in str(error)


def test_far_edge_is_inside():
    validate([click(x=640, y=480), click(x=0, y=0)], SIZE)
    assert field_of([click(x=640.001, y=0)]).field == "objects[0].points[0].x"


def test_second_object_is_named():
    assert field_of([click(), click(), click(y=-1)]).field == "objects[2].points[0].y"


@pytest.mark.parametrize("box", [(10, 10, 10, 20), (10, 10, 5, 20), (10, 20, 30, 20), (10, 20, 30, 5)])
def test_degenerate_box(box):
    error = field_of([Prompt.of(box=box)])
    assert error.field == "objects[0].box"


@pytest.mark.parametrize(
    ("box", "name"),
    [((-1, 0, 10, 10), "x1"), ((0, -1, 10, 10), "y1"), ((0, 0, 641, 10), "x2"), ((0, 0, 10, 481), "y2")],
)
def test_box_outside_image(box, name):
    assert field_of([Prompt.of(box=box)]).field == f"objects[0].box.{name}"


def test_box_with_nan():
    assert field_of([Prompt.of(box=(0, 0, math.nan, 10))]).field == "objects[0].box.x2"


# ------------------------------------------------------------------------------------------------
# object_tokens
# ------------------------------------------------------------------------------------------------


def test_clicks_only_get_one_pad():
    points, labels = object_tokens(Prompt.of([[1, 2], [3, 4]], [1, 0]), appends_pad_point=False)
    assert points == [(1.0, 2.0), (3.0, 4.0), (0.0, 0.0)]
    assert labels == [1, 0, -1]


def test_clicks_only_no_pad_when_graph_appends_it():
    points, labels = object_tokens(Prompt.of([[1, 2], [3, 4]], [1, 0]), appends_pad_point=True)
    assert points == [(1.0, 2.0), (3.0, 4.0)]
    assert labels == [1, 0]


def test_box_becomes_corner_tokens():
    points, labels = object_tokens(Prompt.of(box=[10, 20, 30, 40]), appends_pad_point=False)
    assert points == [(10.0, 20.0), (30.0, 40.0), (0.0, 0.0)]
    assert labels == [2, 3, -1]


def test_box_and_clicks_clicks_first_and_single_pad():
    points, labels = object_tokens(Prompt.of([[5, 6]], [0], [10, 20, 30, 40]), appends_pad_point=False)
    assert points == [(5.0, 6.0), (10.0, 20.0), (30.0, 40.0), (0.0, 0.0)]
    assert labels == [0, 2, 3, -1]


@pytest.mark.parametrize("clicks", [[], [[5, 6]]], ids=["box-only", "box-and-click"])
def test_box_without_own_pad_when_graph_appends_it(clicks):
    """BUG (prompts.py, object_tokens): a graph that appends the "not a point" pad itself
    (transformers' `_embed_points(..., pad=True)`) adds it after every token row, box rows included.
    transformers' box embedding is corners 2, 3 plus ONE not-a-point token, so with
    appends_pad_point=True the box must contribute only its two corners; today the row ends in two
    not-a-point tokens, an extra token the mask decoder attends to."""
    prompt = Prompt.of(clicks, None, [10, 20, 30, 40])
    points, labels = object_tokens(prompt, appends_pad_point=True)
    assert labels == [1] * len(clicks) + [2, 3]
    assert points[-2:] == [(10.0, 20.0), (30.0, 40.0)]


def test_object_tokens_does_not_mutate_prompt():
    prompt = Prompt.of([[1, 2]])
    object_tokens(prompt, appends_pad_point=False)
    assert prompt.points == ((1.0, 2.0),) and prompt.labels == (1,)


# ------------------------------------------------------------------------------------------------
# build_batches
# ------------------------------------------------------------------------------------------------


def test_single_click_tensors():
    (batch,) = build_batches([click(x=320, y=120)], SIZE, MODEL)
    assert batch.object_indices == (0,)
    assert batch.points.dtype == np.float32 and batch.labels.dtype == np.int64
    assert batch.points.shape == (1, 1, 2, 2) and batch.labels.shape == (1, 1, 2)
    np.testing.assert_allclose(batch.points[0, 0, 0], [320 * 1008 / 640, 120 * 1008 / 480], rtol=1e-6)
    np.testing.assert_array_equal(batch.points[0, 0, 1], [0, 0])
    assert batch.labels[0, 0].tolist() == [1, -1]
    assert batch.empty_boxes.shape == (1, 0, 4) and batch.empty_boxes.dtype == np.float32


def test_scaling_is_per_axis():
    """x by model_w / W and y by model_h / H: a non-square model size tells the axes apart."""
    (batch,) = build_batches([Prompt.of(box=[100, 50, 200, 150])], (300, 400), (1024, 512), appends_pad_point=False)
    expected = np.array([[100 * 512 / 400, 50 * 1024 / 300], [200 * 512 / 400, 150 * 1024 / 300], [0, 0]])
    np.testing.assert_allclose(batch.points[0, 0], expected, rtol=1e-6)
    assert batch.labels[0, 0].tolist() == [2, 3, -1]


def test_random_points_scaled_like_transformers():
    rng = np.random.default_rng(1)
    height, width = 333, 517
    xy = rng.uniform(0, 1, (5, 2)) * [width, height]
    (batch,) = build_batches([Prompt.of(xy)], (height, width), MODEL, appends_pad_point=True)
    expected = (xy * [1008 / width, 1008 / height]).astype(np.float32)
    np.testing.assert_allclose(batch.points[0, 0], expected, rtol=1e-6)


def test_equal_token_counts_share_a_batch_in_request_order():
    prompts = [
        Prompt.of([[1, 1]]),  # 2 tokens
        Prompt.of(box=[1, 1, 9, 9]),  # 3 tokens
        Prompt.of([[2, 2], [3, 3]], [1, 0]),  # 3 tokens
        Prompt.of([[4, 4]], [0]),  # 2 tokens
    ]
    batches = build_batches(prompts, (10, 10), (10, 10))
    by_indices = {b.object_indices: b for b in batches}
    assert set(by_indices) == {(0, 3), (1, 2)}
    two = by_indices[(0, 3)]
    assert two.points.shape == (1, 2, 2, 2)
    assert two.labels[0].tolist() == [[1, -1], [0, -1]]
    np.testing.assert_array_equal(two.points[0, :, 0], [[1, 1], [4, 4]])
    three = by_indices[(1, 2)]
    assert three.points.shape == (1, 2, 3, 2)
    assert three.labels[0].tolist() == [[2, 3, -1], [1, 0, -1]]
    np.testing.assert_array_equal(three.points[0, 1, :2], [[2, 2], [3, 3]])


def test_every_object_in_exactly_one_batch():
    rng = np.random.default_rng(2)
    prompts = [Prompt.of(rng.uniform(0, 10, (int(n), 2))) for n in rng.integers(1, 5, 20)]
    batches = build_batches(prompts, (10, 10), MODEL)
    seen = sorted(i for b in batches for i in b.object_indices)
    assert seen == list(range(20))
    for batch in batches:
        assert batch.points.shape[:3] == batch.labels.shape
        assert batch.points.shape[1] == len(batch.object_indices)
        assert list(batch.object_indices) == sorted(batch.object_indices)
        for row, index in enumerate(batch.object_indices):
            assert batch.points.shape[2] == len(prompts[index].points) + 1
            np.testing.assert_allclose(batch.points[0, row, :-1], np.array(prompts[index].points) * 100.8, rtol=1e-6)


def test_unequal_counts_never_padded_together():
    batches = build_batches([Prompt.of([[1, 1]]), Prompt.of([[1, 1], [2, 2]])], (10, 10), MODEL)
    assert len(batches) == 2
    for batch in batches:
        assert (batch.labels[0, :, -1] == -1).all()
        assert (batch.labels[0, :, :-1] == 1).all()


def test_appends_pad_point_changes_grouping_only_by_pad():
    prompts = [Prompt.of([[1, 1]]), Prompt.of([[1, 1], [2, 2]])]
    with_pad = build_batches(prompts, (10, 10), MODEL, appends_pad_point=False)
    without = build_batches(prompts, (10, 10), MODEL, appends_pad_point=True)
    assert [b.points.shape[2] for b in with_pad] == [2, 3]
    assert [b.points.shape[2] for b in without] == [1, 2]
    assert -1 not in np.concatenate([b.labels.ravel() for b in without])
