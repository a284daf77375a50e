"""Tests for genflow.samplers.maskgit: the cosine fixing schedule and MaskGIT decoding."""

import pytest
import torch

from genflow.samplers.maskgit import maskgit_decode, tokens_fixed_after_step

MASK, LEVELS = 16, 16


class PeakedLogits:
    """A fake network: puts all mass on one level everywhere, and counts its calls."""

    def __init__(self, level: int = 3):
        self.level, self.calls = level, 0

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        logits = torch.zeros(*tokens.shape, LEVELS)
        logits[..., self.level] = 50.0
        return logits


class FixedRandomLogits:
    """A fake network whose logits depend only on the position (not on the tokens)."""

    def __init__(self, shape, seed: int = 0):
        self.logits = torch.randn(*shape, LEVELS, generator=torch.Generator().manual_seed(seed)) * 2
        self.calls = 0

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.logits


def partly_masked(shape=(2, 3, 4, 4), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, LEVELS, shape, generator=g)
    return torch.where(torch.rand(shape, generator=g) < 0.6, torch.full_like(tokens, MASK), tokens)


@pytest.mark.parametrize("steps", [1, 2, 5, 8, 20])
@pytest.mark.parametrize("num_tokens", [0, 1, 7, 100, 1024])
def test_schedule_is_non_decreasing_and_fixes_all_at_the_last_step(steps, num_tokens):
    fixed = [tokens_fixed_after_step(step, steps, num_tokens) for step in range(steps)]
    assert fixed[-1] == num_tokens
    assert all(a <= b for a, b in zip(fixed, fixed[1:]))
    assert all(0 <= n <= num_tokens for n in fixed)


def test_decode_fills_every_masked_position_and_leaves_given_ones():
    tokens = partly_masked()
    masked = tokens == MASK
    out = maskgit_decode(PeakedLogits(3), tokens, MASK, steps=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == tokens.shape and out.dtype == tokens.dtype
    assert not (out == MASK).any()
    assert (out[masked] == 3).all()
    assert torch.equal(out[~masked], tokens[~masked])


def test_decode_without_masks_returns_the_input_without_calling_the_network():
    tokens = torch.randint(0, LEVELS, (2, 5))
    fn = PeakedLogits()
    assert torch.equal(maskgit_decode(fn, tokens, MASK, steps=3), tokens)
    assert fn.calls == 0


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_decode_calls_the_network_at_most_steps_times(steps):
    fn = PeakedLogits()
    out = maskgit_decode(fn, partly_masked(), MASK, steps=steps, generator=torch.Generator().manual_seed(0))
    assert 1 <= fn.calls <= steps
    assert not (out == MASK).any()


def test_decode_fixes_tokens_on_the_cosine_schedule():
    """After each step, exactly the scheduled number of the generated positions hold a level."""
    tokens = torch.full((1, 40), MASK)
    steps, history = 5, []

    def fn(current):
        history.append(int((current != MASK).sum()))
        return torch.randn(*current.shape, LEVELS)

    maskgit_decode(fn, tokens, MASK, steps=steps, generator=torch.Generator().manual_seed(0))
    assert history == [0] + [tokens_fixed_after_step(step, steps, 40) for step in range(steps - 1)]


def test_temperature_zero_takes_the_argmax():
    tokens = partly_masked(seed=1)
    masked = tokens == MASK
    fn = FixedRandomLogits(tokens.shape)
    out = maskgit_decode(fn, tokens, MASK, steps=3, temperature=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[masked], fn.logits.argmax(-1)[masked])
    assert torch.equal(out[~masked], tokens[~masked])


def test_median_level_picks_ink_when_ink_is_likely_but_its_level_is_spread():
    """p(black) = 0.2, the other 0.8 spread over levels 1..15: the mode is black, the median an ink level."""
    probs = torch.full((LEVELS,), 0.8 / 15)
    probs[0] = 0.2
    logits = probs.log().expand(1, 8, LEVELS)
    tokens = torch.full((1, 8), MASK)
    mode = maskgit_decode(lambda t: logits, tokens, MASK, steps=2, temperature=0.0)
    median = maskgit_decode(lambda t: logits, tokens, MASK, steps=2, temperature=0.0, greedy_level="median")
    assert (mode == 0).all()
    assert (median == 6).all()  # cumulative 0.2 + 0.053 k: 0.47 at level 5, 0.52 at level 6


def test_same_generator_seed_gives_the_same_tokens():
    tokens = partly_masked(shape=(2, 64), seed=2)
    fn = FixedRandomLogits(tokens.shape)
    first = maskgit_decode(fn, tokens, MASK, steps=4, generator=torch.Generator().manual_seed(7))
    second = maskgit_decode(fn, tokens, MASK, steps=4, generator=torch.Generator().manual_seed(7))
    other = maskgit_decode(fn, tokens, MASK, steps=4, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)  # the draws really depend on the generator


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"temperature": -1.0}, {"confidence_noise": -0.1}, {"greedy_level": "mean"}])
def test_invalid_settings_raise(kwargs):
    with pytest.raises(ValueError):
        maskgit_decode(PeakedLogits(), partly_masked(), MASK, **kwargs)
