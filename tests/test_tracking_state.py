"""The tracking session's state: plain data, bit-for-bit bytes, bounded per object, changed frame by frame;
and the errors its verbs give."""

from __future__ import annotations

import numpy as np
import pytest

import references
import video_references as refs
from sam3_core.prompts import PromptError
from sam3_core.tracking import (
    FrameIndexError,
    FrameSizeError,
    NoPromptsError,
    StateFormatError,
    TrackingError,
    TrackingNotSupportedError,
    TrackingSession,
    UnknownObjectError,
    VideoGraphs,
    state_from_bytes,
    state_to_bytes,
)
from sam3_core.tracking.bank import BankLimits, gather, remember, select_conditioning
from sam3_core.tracking.bfloat16 import from_bfloat16_bits, to_bfloat16_bits
from sam3_core.tracking.state import ObjectState

DISC = (0.25 * 160, 0.3 * 120)


def prompted_session() -> TrackingSession:
    session = refs.new_session()
    session.add_prompt(0, 1, points=[DISC])
    session.add_prompt(0, 2, box=(70, 40, 100, 70))
    return session


def results(frames) -> list[tuple[int, tuple[int, ...], list[float]]]:
    return [(r.frame, r.object_ids, [o.object_score_logit for o in r.objects]) for r in frames]


def test_state_round_trips_bit_for_bit_and_a_restored_session_continues_identically() -> None:
    uninterrupted = prompted_session()
    expected = results(uninterrupted.propagate(0))
    first = prompted_session()
    head = results(first.propagate(0, max_frames=3))
    data = state_to_bytes(first.state)
    restored = state_from_bytes(data)
    assert state_to_bytes(restored) == data
    second = TrackingSession(refs.graphs(), refs.frame_features, video_size=(120, 160), num_frames=10, state=restored)
    tail = results(second.propagate(3))
    assert head + tail[1:] == expected  # frame 3 is answered again when propagation restarts there
    assert state_to_bytes(second.state) == state_to_bytes(uninterrupted.state)


def test_memory_per_object_stays_flat_however_long_the_video() -> None:
    """A 60-frame stream: once the rings are full, every frame leaves the same arrays (only the frame
    numbers in the serialised head grow a digit)."""
    session = TrackingSession(
        refs.graphs(), lambda i: refs.frame_features(i % 10), video_size=(120, 160), num_frames=None
    )
    session.add_prompt(0, 1, points=[DISC])
    sizes = [
        (session.state.nbytes_per_object()[1], len(state_to_bytes(session.state)))
        for _ in session.propagate(0, max_frames=59)
    ]
    limits = refs.graphs().limits
    assert len(sizes) == 60
    steady = sizes[limits.max_object_pointers + 1 :]
    assert len({arrays for arrays, _ in steady}) == 1, sizes
    assert max(total for _, total in steady) - min(total for _, total in steady) < 64, sizes
    obj = session.state.objects[1]
    assert len(obj.recent_memories) == limits.num_maskmem and len(obj.recent_pointers) == limits.max_object_pointers
    assert obj.tracked == [(1, 60)]


def test_stopping_a_propagation_leaves_every_frame_before_it_committed() -> None:
    session = prompted_session()
    frames = session.propagate(0)
    for _ in range(3):
        next(frames)
    frames.close()
    assert all(state.tracked == [(1, 3)] for state in session.state.objects.values())


def test_one_step_resumes_a_backward_pass_at_frame_0_exactly_as_propagate_runs_it() -> None:
    """`propagate` never starts a backward pass at frame 0 (transformers' quirk): a pass stopped just before
    it goes on with `track`, to the same masks and the same state as the pass never stopped."""

    def session() -> TrackingSession:
        prompted = refs.new_session()
        prompted.add_prompt(3, 1, points=[DISC])
        return prompted

    uninterrupted = session()
    expected = list(uninterrupted.propagate(3, direction="backward"))
    assert [r.frame for r in expected] == [3, 2, 1, 0]
    resumed = session()
    head = list(resumed.propagate(3, direction="backward", max_frames=2))
    assert list(resumed.propagate(0, direction="backward")) == []
    step = resumed.track(0, reverse=True)
    assert results([*head, step]) == results(expected)
    np.testing.assert_array_equal(step.objects[0].mask_logits, expected[-1].objects[0].mask_logits)
    assert state_to_bytes(resumed.state) == state_to_bytes(uninterrupted.state)
    with pytest.raises(FrameIndexError):
        resumed.track(10, reverse=False)
    # Forward from 0 instead: another step (no later memories to condition on), another state.
    forward = session()
    list(forward.propagate(3, direction="backward", max_frames=2))
    forward.track(0, reverse=False)
    assert state_to_bytes(forward.state) != state_to_bytes(uninterrupted.state)


def test_clearing_a_new_prompt_restores_the_state_before_it() -> None:
    """With one object (a prompt runs every object on its frame: others would have tracked frame 6)."""
    session = refs.new_session()
    session.add_prompt(0, 1, points=[DISC])
    before = state_to_bytes(session.state)
    session.add_prompt(6, 1, points=[(120, 40)])  # frame 6 was never tracked: a second conditioning frame
    assert list(session.state.objects[1].conditioning) == [0, 6]
    session.clear_prompts(6, 1)
    assert state_to_bytes(session.state) == before
    session.clear_prompts(0)
    assert session.object_ids == ()


def test_the_bank_selects_conditioning_frames_as_transformers_does() -> None:
    frames = [0, 10, 20, 30, 40, 50]
    assert select_conditioning(25, frames, 4) == ([20, 30, 10, 40], [0, 50])
    assert select_conditioning(5, frames[:3], 4) == (frames[:3], [])
    state = ObjectState(1)
    limits = BankLimits(num_maskmem=3, max_cond_frame_num=4, max_object_pointers=4)
    pointer = np.zeros(4, np.float32)
    for frame in range(1, 9):
        remember(state, frame, np.full((1, 1, 1), frame, np.uint16), pointer + frame, limits)
    assert sorted(state.recent_memories) == [6, 7, 8] and sorted(state.recent_pointers) == [5, 6, 7, 8]
    from sam3_core.tracking.state import Conditioning

    state.conditioning[0] = Conditioning(np.zeros((1, 1, 1), np.uint16), pointer, np.zeros((2, 2), np.float32), 1.0)
    bank = gather(state, 9, reverse=False, num_frames=20, limits=limits)
    assert bank.memory_time == [2, 1, 0]  # the conditioning frame, then 2 and 1 frames back
    assert [int(m[0, 0, 0]) for m in bank.memories] == [0, 7, 8]
    assert [float(p[0]) for p in bank.pointers] == [0.0, 8.0, 7.0, 6.0]
    assert bank.pointer_time == pytest.approx([9 / 3, 1 / 3, 2 / 3, 3 / 3])


def test_pointers_come_from_the_selected_conditioning_frames_as_in_sam3() -> None:
    """SAM2/SAM3 (`_prepare_memory_conditioned_features`: `ptr_cond_outputs` from `selected_cond_outputs`)
    read the pointers of the at most 4 selected prompted frames; transformers reads every prompted frame's.
    They agree up to 4 prompted frames (the parity scenarios); past that we keep SAM3's rule, which is bounded."""
    from sam3_core.tracking.state import Conditioning

    state = ObjectState(1)
    limits = BankLimits()
    for frame in (0, 10, 20, 30, 40, 50):
        pointer = np.full(4, frame, np.float32)
        state.conditioning[frame] = Conditioning(np.zeros((1, 1, 1), np.uint16), pointer, np.zeros((2, 2)), 1.0)
    bank = gather(state, 25, reverse=False, num_frames=100, limits=limits)
    assert [int(p[0]) for p in bank.pointers] == [20, 10]  # selected: 20, 30, 10, 40; not after 25: 20, 10
    assert len(bank.memories) == 4


def test_bfloat16_rounds_to_nearest_even_like_torch() -> None:
    """Expected values from torch 2.14: `tensor(values).to(torch.bfloat16).float()`."""
    values = np.array([1.0, 1.00390625, 1.01171875, -3.14159, 65504.0, np.inf, 1e-40, np.nan], np.float32)
    restored = from_bfloat16_bits(to_bfloat16_bits(values))
    expected = np.array([1.0, 1.0, 1.015625, -3.140625, 65536.0, np.inf, 9.183549615799121e-41, np.nan], np.float32)
    np.testing.assert_array_equal(restored, expected)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: s.add_prompt(10, 1, points=[DISC]), FrameIndexError),
        (lambda s: s.add_prompt(-1, 1, points=[DISC]), FrameIndexError),
        (lambda s: s.add_prompt(0, 1), PromptError),
        (lambda s: s.add_prompt(0, 1, points=[(500, 10)]), PromptError),
        (lambda s: s.add_prompt(0, 1, points=[DISC], mask=np.ones((120, 160), bool)), PromptError),
        (lambda s: s.add_prompt(0, 1, mask=np.ones((10, 10), bool)), PromptError),
        (lambda s: s.remove_object(5), UnknownObjectError),
        (lambda s: list(s.propagate(0)), NoPromptsError),
        (lambda s: list(s.propagate(0, direction="sideways")), TrackingError),
        (lambda s: s.track(0, reverse=False), NoPromptsError),
    ],
)
def test_bad_requests_raise_errors_that_say_what_to_do(call, error) -> None:
    session = refs.new_session()
    with pytest.raises(error):
        call(session)
    assert session.object_ids == ()


def test_frames_of_another_size_are_refused() -> None:
    session = TrackingSession(refs.graphs(), refs.frame_features, video_size=(100, 100), num_frames=10)
    with pytest.raises(FrameSizeError, match="160x120"):
        session.add_prompt(0, 1, points=[(10, 10)])
    assert session.object_ids == ()


def test_damaged_or_foreign_states_are_refused() -> None:
    data = state_to_bytes(prompted_session().state)
    for damaged in (data[:-1], data[:10], b"nope" + data[4:], data[:40] + bytes([data[40] ^ 1]) + data[41:]):
        with pytest.raises(StateFormatError):
            state_from_bytes(damaged)
    with pytest.raises(StateFormatError, match="belongs to model"):
        TrackingSession(
            refs.graphs(), refs.frame_features, video_size=(120, 160), num_frames=11, state=state_from_bytes(data)
        )


def test_a_folder_without_the_video_graphs_says_how_to_get_them() -> None:
    with pytest.raises(TrackingNotSupportedError, match="sam3 models export"):
        VideoGraphs(references.MODEL_DIR)
