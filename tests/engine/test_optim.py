"""genflow.engine.optim: the optimiser a config asks for, the warm-up and decay schedule, the EMA and the
resumable data order. No training: tiny modules and hand-stepped schedules."""

import math

import pytest
import torch
from torch import nn

from genflow.engine import TrainConfig
from genflow.engine.optim import EpochBatchSampler, ExponentialMovingAverage, build_lr_schedule, build_optimizer


def lrs(cfg: TrainConfig, total_steps: int, steps: int, steps_per_epoch: int = 1) -> list[float]:
    """The learning rate of optimiser steps 0 .. steps-1 (what each step uses) under `cfg`'s schedule."""
    optimizer = build_optimizer(nn.Linear(1, 1), cfg)
    schedule = build_lr_schedule(optimizer, cfg, total_steps, steps_per_epoch=steps_per_epoch)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return seen


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_the_optimizer_is_the_one_configured_with_its_hyper_parameters(name, cls):
    cfg = TrainConfig(optimizer=name, lr=0.02, betas=(0.8, 0.9), weight_decay=0.1)
    optimizer = build_optimizer(nn.Linear(2, 2), cfg)
    group = optimizer.param_groups[0]
    assert type(optimizer) is cls
    assert (group["lr"], group["betas"], group["weight_decay"]) == (0.02, (0.8, 0.9), 0.1)


def test_frozen_parameters_are_not_optimised():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].requires_grad_(False)
    optimizer = build_optimizer(model, TrainConfig())
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in model[1].parameters()}


def test_a_recipe_s_parameter_groups_keep_their_own_weight_decay_and_lr():
    model = nn.Linear(2, 2)
    groups = [{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.0, "lr": 0.5}]  # no decay on the bias
    optimizer = build_optimizer(model, TrainConfig(optimizer="adamw", lr=0.01, weight_decay=0.1), groups)
    weight, bias = optimizer.param_groups
    assert (weight["weight_decay"], weight["lr"]) == (0.1, 0.01)
    assert (bias["weight_decay"], bias["lr"]) == (0.0, 0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(1.0)
    model.weight.grad, model.bias.grad = torch.zeros_like(model.weight), torch.zeros_like(model.bias)
    optimizer.step()  # zero gradients: only decoupled decay moves a weight
    assert torch.allclose(model.weight, torch.full_like(model.weight, 1 - 0.01 * 0.1)) and torch.equal(model.bias, torch.ones(2))


def test_warmup_rises_linearly_to_the_peak_then_constant_holds_it():
    cfg = TrainConfig(lr=1.0, warmup_steps=4, lr_schedule="constant")
    assert lrs(cfg, total_steps=10, steps=8) == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0])


def test_cosine_decays_from_the_peak_after_warmup_to_min_lr_at_the_last_step():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=2, lr_schedule="cosine")
    seen = lrs(cfg, total_steps=10, steps=13)  # 2 warm-up steps, 8 of decay, then past the end
    assert seen[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert seen[6] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert seen[4] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 8)))
    assert seen[10:] == pytest.approx([0.1] * 3)  # the floor, and it stays there
    assert all(a >= b for a, b in zip(seen[1:], seen[2:]))


def test_linear_decays_in_equal_steps_to_min_lr():
    cfg = TrainConfig(lr=2.0, min_lr=0.4, lr_schedule="linear")
    assert lrs(cfg, total_steps=4, steps=6) == pytest.approx([2.0, 1.6, 1.2, 0.8, 0.4, 0.4])


def test_ema_follows_the_weights_at_its_decay_and_copies_buffers():
    model = nn.BatchNorm1d(2)
    ema = ExponentialMovingAverage(model, decay=0.75)
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())
    with torch.no_grad():
        model.weight.fill_(5.0)  # was 1
        model.running_mean.fill_(3.0)
    ema.update(model)
    assert torch.allclose(ema.model.weight, torch.full((2,), 0.75 * 1 + 0.25 * 5))
    assert torch.equal(ema.model.running_mean, torch.full((2,), 3.0))
    ema.update(model)
    assert torch.allclose(ema.model.weight, torch.full((2,), 0.75 * 2 + 0.25 * 5))
    assert model.weight[0] == 5.0  # the EMA is a copy: the trained model is untouched


def test_the_data_order_depends_only_on_seed_and_epoch():
    def order(seed, epoch):
        return list(EpochBatchSampler(20, 4, seed=seed, epoch=epoch))

    batches = order(1, 0)
    assert len(batches) == 5 and sorted(i for b in batches for i in b) == list(range(20))
    assert order(1, 0) == batches and order(1, 1) != batches and order(2, 0) != batches


def test_a_resumed_epoch_replays_the_rest_of_the_uninterrupted_order():
    full = list(EpochBatchSampler(22, 4, seed=3, epoch=2))  # 5 whole batches: the last 2 samples are dropped
    rest = EpochBatchSampler(22, 4, seed=3, epoch=2, start_batch=3)
    assert len(full) == 5 and len(rest) == 2 and list(rest) == full[3:]


def test_processes_split_each_global_batch_into_their_rows():
    one = list(EpochBatchSampler(24, 6, seed=0, epoch=1))
    ranks = [list(EpochBatchSampler(24, 6, seed=0, epoch=1, rank=r, world_size=3)) for r in range(3)]
    assert all(len(batch) == 2 for batches in ranks for batch in batches)
    assert [sum((ranks[r][b] for r in range(3)), []) for b in range(4)] == one


def test_without_shuffle_the_order_is_the_dataset_s():
    assert list(EpochBatchSampler(6, 3, seed=5, epoch=7, shuffle=False)) == [[0, 1, 2], [3, 4, 5]]


def test_an_epoch_interval_holds_the_lr_through_each_epoch_as_torch_s_per_epoch_cosine():
    cfg = TrainConfig(lr=1.0, lr_schedule="cosine", min_lr=0.01, lr_interval="epoch")
    seen = lrs(cfg, total_steps=4 * 3, steps=12, steps_per_epoch=3)
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4, eta_min=0.01)
    per_epoch = []
    for _ in range(4):
        per_epoch.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    assert seen == pytest.approx([lr for lr in per_epoch for _ in range(3)])
    assert len(set(seen)) == 4 and seen != lrs(TrainConfig(lr=1.0, lr_schedule="cosine", min_lr=0.01), 12, 12)
