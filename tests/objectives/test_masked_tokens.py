"""Tests for genflow.objectives.masked_tokens: the three masking tasks, task sampling and the loss."""

import math

import numpy as np
import pytest
import torch

from genflow.errors import ConfigError
from genflow.objectives.masked_tokens import MaskedTokenObjective

MASK, LEVELS = 16, 16


def draws(batch: int, frames: int, side: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, LEVELS, (batch, frames, side, side), generator=g)
    noise = torch.rand(batch, frames, side, side, generator=g)
    frame_noise = torch.rand(batch, frames, 2, generator=g)
    return tokens, noise, frame_noise


def test_future_task_never_masks_past_frames_and_scores_only_future_ones():
    objective = MaskedTokenObjective(num_past=3)
    tokens, noise, frame_noise = draws(8, 7, 8)
    batch = objective.corrupt(tokens, "future", noise, frame_noise)
    assert batch.task == "future" and batch.temporal_mask == "causal"
    assert not batch.masked[:, :3].any()
    assert torch.equal(batch.tokens[:, :3], tokens[:, :3])
    assert batch.scored[:, 3:].all() and not batch.scored[:, :3].any()
    assert batch.masked[:, 3:].any()


def test_corrupt_replaces_exactly_the_masked_tokens_with_the_mask_id():
    objective = MaskedTokenObjective(num_past=2, task_weights={"future": 1, "joint": 1, "individual": 1})
    tokens, noise, frame_noise = draws(4, 5, 6)
    for task in ("future", "joint", "individual"):
        batch = objective.corrupt(tokens, task, noise, frame_noise)
        assert torch.equal(batch.tokens == MASK, batch.masked)
        assert torch.equal(batch.tokens[~batch.masked], tokens[~batch.masked])
        assert not (batch.masked & ~batch.scored).any()  # a masked token is always scored


def test_future_mask_ratio_is_one_draw_per_sequence_in_half_to_one():
    """Empirical masked fraction of each sequence's future tokens matches r = 0.5 + 0.5 u, u its frame-0 draw."""
    objective = MaskedTokenObjective(num_past=2, mask_ratio=(0.5, 1.0))
    tokens, noise, frame_noise = draws(16, 4, 64, seed=1)
    batch = objective.corrupt(tokens, "future", noise, frame_noise)
    drawn = 0.5 + 0.5 * frame_noise[:, 0, 0]
    empirical = batch.masked[:, 2:].float().mean(dim=(1, 2, 3))
    assert ((drawn >= 0.5) & (drawn <= 1.0)).all()
    torch.testing.assert_close(empirical, drawn, rtol=0, atol=0.03)  # 8192 tokens per sequence: std < 0.006
    assert (empirical >= 0.5 - 0.03).all()
    per_frame = batch.masked[:, 2:].float().mean(dim=(2, 3))  # the same ratio in every future frame
    torch.testing.assert_close(per_frame, drawn[:, None].expand_as(per_frame), rtol=0, atol=0.05)


def test_full_mask_probability_masks_the_whole_future_of_that_share_of_sequences():
    objective = MaskedTokenObjective(num_past=2, mask_ratio=(0.0, 0.2), full_mask_probability=0.5)
    tokens, noise, frame_noise = draws(400, 4, 4, seed=2)
    batch = objective.corrupt(tokens, "future", noise, frame_noise)
    whole = batch.masked[:, 2:].flatten(1).all(dim=1)
    assert torch.equal(whole, frame_noise[:, 0, 1] < 0.5)  # the sequences drawn, and only they (r <= 0.2 otherwise)
    assert 0.4 < whole.float().mean() < 0.6 and not batch.masked[:, :2].any()


def test_random_context_keeps_between_num_past_and_all_but_one_frames_clean_per_sequence():
    objective = MaskedTokenObjective(num_past=2, full_mask_probability=1.0, random_context=True)
    tokens, noise, frame_noise = draws(300, 6, 2, seed=3)
    batch = objective.corrupt(tokens, "future", noise, frame_noise)
    clean = (~batch.scored[:, :, 0, 0]).sum(dim=1)  # frames before the first scored one
    assert torch.equal(batch.scored[:, :, 0, 0], torch.arange(6)[None, :] >= clean[:, None])
    assert set(clean.tolist()) == {2, 3, 4, 5}  # every context length occurs, the last frame is always predicted
    assert torch.equal(batch.masked, batch.scored) and torch.equal(batch.tokens[~batch.masked], tokens[~batch.masked])


@pytest.mark.parametrize("probability", [-0.1, 1.5])
def test_full_mask_probability_outside_zero_one_is_a_config_error(probability):
    with pytest.raises(ConfigError, match="full_mask_probability"):
        MaskedTokenObjective(full_mask_probability=probability)


def test_future_task_needs_past_and_future_frames():
    tokens, noise, frame_noise = draws(1, 4, 2)
    for num_past in (0, 4):
        with pytest.raises(ConfigError, match="num_past"):
            MaskedTokenObjective(num_past=num_past).corrupt(tokens, "future", noise, frame_noise)


def test_joint_task_masks_past_frames_too_and_scores_picked_frames():
    objective = MaskedTokenObjective(num_past=3, task_weights={"joint": 1.0})
    tokens, noise, frame_noise = draws(8, 6, 8, seed=2)
    batch = objective.corrupt(tokens, "joint", noise, frame_noise)
    picked = frame_noise[..., 1] < 0.5
    assert batch.temporal_mask == "causal"
    assert batch.masked[:, :3].any()
    assert torch.equal(batch.scored, picked[:, :, None, None].expand_as(tokens))
    assert not batch.masked[~picked].any()
    assert 0 < picked.float().mean() < 1


def test_individual_task_masks_every_frame_with_identity_attention():
    objective = MaskedTokenObjective(task_weights={"individual": 1.0})
    tokens, noise, frame_noise = draws(4, 5, 16, seed=3)
    batch = objective.corrupt(tokens, "individual", noise, frame_noise)
    assert batch.temporal_mask == "identity"
    assert batch.scored.all()
    assert batch.masked.any(dim=(2, 3)).all()  # ratio >= 0.5 of 256 tokens: every frame has masks


def test_unknown_task_in_corrupt_raises():
    tokens, noise, frame_noise = draws(1, 4, 2)
    with pytest.raises(ConfigError, match="unknown masking task"):
        MaskedTokenObjective().corrupt(tokens, "past", noise, frame_noise)


def test_pick_task_follows_the_weights():
    objective = MaskedTokenObjective(task_weights={"future": 0.5, "joint": 0.4, "individual": 0.1})
    uniforms = np.random.default_rng(0).random(5000)
    picks = [objective.pick_task(float(u)) for u in uniforms]
    for task, weight in (("future", 0.5), ("joint", 0.4), ("individual", 0.1)):
        assert abs(picks.count(task) / len(picks) - weight) < 0.025, task
    assert objective.pick_task(0.0) == "future" and objective.pick_task(0.999999) == "individual"


def test_pick_task_never_draws_a_zero_weight_task():
    objective = MaskedTokenObjective(task_weights={"future": 1.0, "joint": 0.0, "individual": 0.0})
    assert {objective.pick_task(u) for u in np.linspace(0, 1, 101)} == {"future"}


def test_unknown_task_weight_key_raises_config_error():
    with pytest.raises(ConfigError, match="unknown task"):
        MaskedTokenObjective(task_weights={"future": 0.5, "inpainting": 0.5})


@pytest.mark.parametrize("kwargs", [{"task_weights": {"future": -1.0, "joint": 2.0}}, {"task_weights": {"future": 0.0}},
                                    {"mask_ratio": (0.8, 0.5)}, {"mask_ratio": (0.5, 1.5)}])
def test_invalid_weights_or_ratio_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        MaskedTokenObjective(**kwargs)


def test_loss_of_perfect_logits_is_zero_and_of_uniform_logits_is_ln16():
    objective = MaskedTokenObjective(num_past=2)
    tokens, noise, frame_noise = draws(2, 4, 4)
    batch = objective.corrupt(tokens, "future", noise, frame_noise)
    perfect = torch.nn.functional.one_hot(tokens, LEVELS).float() * 100.0
    assert objective.loss(perfect, tokens, batch).item() < 1e-6
    uniform = torch.zeros(*tokens.shape, LEVELS)
    assert objective.loss(uniform, tokens, batch).item() == pytest.approx(math.log(16), abs=1e-6)


def test_loss_ignores_unscored_tokens():
    objective = MaskedTokenObjective(num_past=2)
    tokens, noise, frame_noise = draws(2, 4, 4)
    batch = objective.corrupt(tokens, "future", noise, frame_noise)
    logits = torch.nn.functional.one_hot(tokens, LEVELS).float() * 100.0
    logits[:, :2] = torch.randn(2, 2, 4, 4, LEVELS) * 10  # past frames: garbage, not scored
    assert objective.loss(logits, tokens, batch).item() < 1e-6


def test_loss_is_zero_with_gradient_when_nothing_is_scored():
    objective = MaskedTokenObjective(task_weights={"joint": 1.0})
    tokens, noise, _ = draws(1, 3, 2)
    batch = objective.corrupt(tokens, "joint", noise, torch.ones(1, 3, 2) * 0.9)  # no frame picked
    logits = torch.randn(*tokens.shape, LEVELS, requires_grad=True)
    loss = objective.loss(logits, tokens, batch)
    assert loss.item() == 0.0 and loss.requires_grad


# --- copilot4D's full-mode switches -----------------------------------------------------------------
COPILOT4D_FULL = {"task_weights": {"future": 0.5, "joint": 0.4, "individual": 0.1}, "mask_schedule": "cosine", "ratio_per": "batch",
                  "mask_count": "exact", "random_tokens": 0.05, "joint_frames": "all", "joint_attention": "full", "loss_on": "all",
                  "label_smoothing": 0.1}


@pytest.mark.parametrize("task,unit_tokens,units_per_sequence", [("future", 4 * 256, 1), ("joint", 7 * 256, 1), ("individual", 256, 7)])
def test_exact_counts_mask_ceil_r_n_and_replace_floor_f_m_tokens_of_every_unit(task, unit_tokens, units_per_sequence):
    objective = MaskedTokenObjective(num_past=3, **COPILOT4D_FULL)
    tokens, noise, frame_noise = draws(5, 7, 16)
    level_noise = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(9))
    batch = objective.corrupt(tokens, task, noise, frame_noise, batch_draw=0.3, level_noise=level_noise, random_fraction=0.8)
    ratio = math.cos(0.3 * math.pi / 2)  # one ratio for the whole batch
    masked_count = math.ceil(ratio * unit_tokens)
    replaced_count = math.floor(0.8 * 0.05 * (unit_tokens - masked_count))
    units = (lambda m: m.reshape(5 * units_per_sequence, -1)) if units_per_sequence > 1 else (lambda m: m.reshape(5, -1))
    picked = slice(3, None) if task == "future" else slice(None)
    assert units(batch.masked[:, picked]).sum(1).tolist() == [masked_count] * 5 * units_per_sequence
    assert units(batch.replaced[:, picked]).sum(1).tolist() == [replaced_count] * 5 * units_per_sequence
    assert not (batch.masked & batch.replaced).any() and (batch.tokens[batch.replaced] < LEVELS).all()
    assert batch.scored.all()  # loss on every token of every frame
    assert batch.temporal_mask == {"future": "causal", "joint": "full", "individual": "identity"}[task]


def test_one_ratio_per_batch_masks_every_sequence_at_the_same_rate():
    objective = MaskedTokenObjective(num_past=2, ratio_per="batch")
    tokens, noise, frame_noise = draws(6, 6, 16)
    rates = objective.corrupt(tokens, "future", noise, frame_noise, batch_draw=0.0).masked[:, 2:].float().mean(dim=(1, 2, 3))
    assert torch.allclose(rates, torch.full_like(rates, 0.5), atol=0.05)  # r = 0.5 for all (bernoulli)
    rates = objective.corrupt(tokens, "future", noise, frame_noise, batch_draw=0.99).masked[:, 2:].float().mean(dim=(1, 2, 3))
    assert (rates > 0.95).all()
    with pytest.raises(ConfigError, match="batch_draw"):
        objective.corrupt(tokens, "future", noise, frame_noise)


def test_label_smoothing_enters_the_loss():
    tokens, noise, frame_noise = draws(2, 4, 4)
    logits = torch.randn(2, 4, 4, 4, 18)  # a tied head's 18 classes: targets are levels, the extra classes only normalise
    plain = MaskedTokenObjective(num_past=2, loss_on="all")
    smoothed = MaskedTokenObjective(num_past=2, loss_on="all", label_smoothing=0.1)
    batch = plain.corrupt(tokens, "future", noise, frame_noise)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 18), tokens.reshape(-1), label_smoothing=0.1)
    assert torch.allclose(smoothed.loss(logits, tokens, batch), expected)
    assert not torch.allclose(plain.loss(logits, tokens, batch), expected)


@pytest.mark.parametrize("bad", [{"mask_schedule": "linear"}, {"loss_on": "masked"}, {"random_tokens": 1.5}])
def test_unknown_objective_switches_are_clear_errors(bad):
    with pytest.raises(ConfigError, match="objective."):
        MaskedTokenObjective(**bad)
