"""Video tracking against transformers' Sam3TrackerVideoModel on the same weights: every answer of every
scenario (prompt-time answers and propagated frames) within 99.9 % of mask pixels and 1e-4 of object score."""

from __future__ import annotations

import numpy as np
import pytest

import video_references as refs


@pytest.mark.parametrize("scenario", sorted(refs.index()["scenarios"]))
def test_every_answer_matches_transformers(scenario: str) -> None:
    expected = refs.answers(scenario)
    ours = list(refs.replay(refs.new_session(), refs.index()["scenarios"][scenario]))
    assert len(ours) == len(expected)
    for step, (result, answer) in enumerate(zip(ours, expected, strict=True)):
        assert (result.frame, result.object_ids) == (answer.frame, answer.obj_ids), step
        agreement = (result.masks() == answer.masks).mean(axis=(1, 2))
        assert agreement.min() >= 0.999, (step, agreement)
        scores = np.array([obj.object_score_logit for obj in result.objects])
        np.testing.assert_allclose(scores, answer.object_score_logits, atol=1e-4, rtol=0, err_msg=f"answer {step}")


def test_the_references_have_objects_seen_and_masks_that_differ_between_frames() -> None:
    """Random weights could answer the same mask everywhere, or nothing: then parity would prove little."""
    answers = refs.answers("clicks-boxes-corrections")
    assert all((answer.object_score_logits > 0).all() for answer in answers)
    first = {(a.frame, obj): m for a in answers for obj, m in zip(a.obj_ids, a.masks, strict=True)}
    differing = [
        key for key, mask in first.items() if key[0] > 0 and (mask != first.get((0, key[1]), mask)).mean() > 0.01
    ]
    assert len(differing) > 5
