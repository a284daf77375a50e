"""MaskGIT-style iterative decoding of masked tokens (Chang et al. 2022), as CoPilot4D uses it.

Start with the positions to generate set to the mask token. Each of ``K`` steps predicts every
token, samples a level for every still-masked position, and keeps the most confident ones: after
step ``i`` (``k = K - 1 - i`` counting down) ``ceil(cos(pi/2 * k / K) * N)`` of the ``N`` generated
positions are fixed, so the last step fixes all of them. Confidence is the sampled level's
log-probability plus Gumbel noise scaled by ``confidence_noise * (1 - (i + 1) / K)`` (annealed to 0),
which lets early steps explore. Fixed tokens are never changed; given tokens are never touched.

copilot4D samples at temperature 1 with ``confidence_noise`` 1 (its Gumbel scale ``k / K`` is this
annealing), but sizes the schedule by one frame's ``N`` while generating all future frames: its last
step then fixes ~90 % of them at once. Here ``N`` is every generated position, as intended.

At temperature 0 the level drawn is a point estimate: the ``mode`` (the most likely level) or the ``median`` (the smallest level whose cumulative probability reaches 1/2; the levels
are ordered intensities). With 16 levels the mode is biased to black wherever ink is likely but its
exact level is not (p(black) = 0.3 beats fifteen ink levels at ~0.05 each), while the median
chooses ink as soon as p(ink) > 1/2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["GREEDY_LEVELS", "maskgit_decode", "tokens_fixed_after_step"]

GREEDY_LEVELS = ("mode", "median")


def tokens_fixed_after_step(step: int, num_steps: int, num_tokens: int) -> int:
    """How many of ``num_tokens`` generated positions are fixed after step ``step`` (0-based) of ``num_steps``."""
    k = num_steps - 1 - step
    return min(num_tokens, math.ceil(math.cos(math.pi / 2 * k / num_steps) * num_tokens))


def _gumbel(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> Tensor:
    uniform = torch.rand(shape, generator=generator).clamp_(1e-12, 1 - 1e-7).to(device)
    return -torch.log(-torch.log(uniform))


@torch.no_grad()
def maskgit_decode(
    logits_fn: Callable[[Tensor], Tensor],
    tokens: Tensor,
    mask_token_id: int,
    *,
    steps: int = 20,
    temperature: float = 1.0,
    confidence_noise: float = 4.5,
    generator: torch.Generator | None = None,
    greedy_level: str = "mode",
) -> Tensor:
    """Fills every ``mask_token_id`` position of ``tokens``.

    Args:
        logits_fn: Maps tokens ``(B, *S)`` to logits ``(B, *S, V)`` (e.g. a network with its actions
            and temporal mask bound, possibly with classifier-free guidance).
        tokens: ``(B, *S)`` integer ids; positions equal to ``mask_token_id`` are generated.
        steps: Decoding steps ``K`` (1 = predict everything at once).
        temperature: Softmax temperature of the level draws; 0 takes a point estimate (``greedy_level``).
        confidence_noise: Scale of the annealed Gumbel noise added to confidences (0: purely greedy order).
        generator: CPU generator for the draws (reproducible on any device).
        greedy_level: At temperature 0, ``mode`` (most likely level) or ``median`` (ordered levels).

    Returns:
        ``(B, *S)`` tokens without mask ids; the given positions are unchanged.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if temperature < 0 or confidence_noise < 0:
        raise ValueError("temperature and confidence_noise must be >= 0")
    if greedy_level not in GREEDY_LEVELS:
        raise ValueError(f"greedy_level must be one of {', '.join(GREEDY_LEVELS)}, got {greedy_level!r}")
    batch = tokens.shape[0]
    current = tokens.clone()
    to_generate = (tokens == mask_token_id).reshape(batch, -1)
    num_tokens = to_generate.sum(dim=1)  # (B,)
    for step in range(steps):
        still_masked = (current == mask_token_id).reshape(batch, -1)
        if not bool(still_masked.any()):
            break
        logits = logits_fn(current).float()
        logits = logits.reshape(batch, -1, logits.shape[-1])
        log_probs = torch.log_softmax(logits, dim=-1)
        if temperature == 0 and greedy_level == "median":
            below = log_probs.exp().cumsum(dim=-1) < 0.5  # levels under the median
            sampled = below.sum(dim=-1).clamp_(max=log_probs.shape[-1] - 1)
        elif temperature == 0:
            sampled = log_probs.argmax(dim=-1)
        else:
            gumbel = _gumbel(log_probs.shape, generator, log_probs.device)
            sampled = (log_probs / temperature + gumbel).argmax(dim=-1)
        confidence = log_probs.gather(-1, sampled[..., None])[..., 0]
        noise_scale = confidence_noise * (1 - (step + 1) / steps)
        if noise_scale > 0:
            confidence = confidence + noise_scale * _gumbel(confidence.shape, generator, confidence.device)
        confidence = confidence.masked_fill(~still_masked, float("inf"))  # fixed / given tokens rank first
        confidence = confidence.masked_fill(~to_generate, float("inf"))
        fixed_total = torch.tensor(
            [tokens_fixed_after_step(step, steps, int(n)) for n in num_tokens], device=tokens.device
        )
        given = (~to_generate).sum(dim=1)
        rank = confidence.argsort(dim=1, descending=True).argsort(dim=1)  # 0 = most confident
        keep = rank < (given + fixed_total)[:, None]
        flat = current.reshape(batch, -1)
        newly_fixed = keep & still_masked
        flat = torch.where(newly_fixed, sampled.to(flat.dtype), flat)
        current = flat.reshape(tokens.shape)
    return current
