"""namo-fm and namo-diffusion: generate where to push the blocking object (NAMO goal masks) with a DiT.

Input of the network, as the source system: 5 context channels (robot, robot goal, movable objects,
static walls, target object) + 2 coordinate-grid channels + the noisy target-goal channel = 8
channels at 64 x 64; output 1 channel. Masks live in [-1, 1] (object = +1); a sample is the mask
where the generated channel is > 0.

- `namo-fm` (source config `train_fb_flow_matching`): flow matching on the affine paths
  condot | cosine | vp | linear_vp | polynomial, velocity prediction, ODE sampling euler | midpoint |
  rk4 | dopri5. Time convention (all genflow flows): t = 0 noise, t = 1 data.
- `namo-diffusion` (source config `train_hf_diffusion`): DDPM training with diffusers' schedules,
  epsilon | v_prediction | sample, DDIM (eta) or DDPM sampling.

CPU-default levers (each measured in the README): `data.resample_goals` trains on a fresh valid
placement of each generated scene every time it is drawn (the scene's mode_map knows them all);
`model.network.coordinates: target_relative` makes the two coordinate channels each pixel's offset
from the target's centre; `model.network.condition_on_target` adds the target's box to the adaLN
conditioning; `model.time_sampling` uniform | logit_normal. With the clean-mask prediction the ODE's
last step is a jump to the data estimate (`solve_ode(final_jump=...)`), so no solver, RK4 included,
evaluates the singular clean-mask -> velocity conversion at t = 1.

Auxiliary loss (`model.aux_loss_weight`): a soft Dice loss between the clean mask implied by the
network output (the path / scheduler inverted at the sample's noise level, mapped to [0, 1]) and the
true mask, each sample weighted by its signal coefficient (alpha_t of the flow path, sqrt(alpha_bar_t)
of the diffusion) so that nearly pure-noise samples, whose clean estimate is a guess, count little;
or the source's focal Dice (`model.aux_loss: focal_dice`).

The source's own settings are the configs `namo_fm_source` / `namo_diffusion_source`: its DiT
(`model.network.architecture: sage_learning`, sage_dit.py), velocity / epsilon prediction, focal Dice,
the diffusion network seeing the continuous time draw (`model.network_time: continuous`), constant AdamW;
benchmarks/parity/namo.py holds them against the source's code.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from genflow.config import NonNegative, Positive, PositiveInt, Range, check_ranges
from genflow.engine import EvalOptions, OdeSolverOptions, Recipe, SampleOptions, StepContext, TrainConfig, evaluation
from genflow.data import ShardDataset, first_samples, load_split, training_split
from genflow_recipes.namo.scenes import draw_valid_placements
from genflow.errors import ConfigError, GenflowError
from genflow_recipes.namo.metrics import placement_metrics, proposal_metrics
from genflow_recipes.namo.poses import POSE_CONVENTION, accept_proposals, proposal_footprints
from genflow.models import DiT, check_dit_sizes
from genflow.objectives import AffinePath, DiffusionObjective, FlowMatchingObjective, make_scheduler
from genflow.samplers import sample_diffusion, solve_ode
from genflow_recipes.namo.card import DIFFUSION_CARD, FM_CARD
from genflow_recipes.namo.sage_dit import SageDiT

__all__ = ["NamoFlowMatchingRecipe", "NamoDiffusionRecipe", "NamoGoalNet"]

CONTEXT_CHANNELS = 5


# --- configs ----------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    data_dir: str = "datasets/namo"  # genflow data make namo, then genflow data import namo DIR
    image_size: PositiveInt = 64  # mask side in pixels (must match the shards)
    in_memory: bool = True  # load the shards into memory (false: read them from disk)
    # read the train split as a stream (StreamingShardDataset: each process x worker its own shards, a new shuffle
    # each epoch, exact resume, flat memory for data larger than RAM) instead of a map-style ShardDataset
    streaming: bool = False
    # generated scenes know every valid placement (mode_map): train on a fresh uniform draw among them
    # each time a scene is seen, not only on the stored target_goal (imported scenes without modes keep it)
    resample_goals: bool = False


@dataclass
class NetworkConfig:
    """The DiT; its input/output channels are fixed by the data (5 context + 2 coordinates + 1 noisy)."""

    # adaln_zero: genflow's DiT (gated adaLN-Zero, fixed sin/cos positions, genflow.models.DiT);
    # sage_learning: the source's DiT (ungated adaptive LayerNorm, learned positions, raw-t time embedding,
    # transposed-conv head: recipes/namo/sage_dit.py), whose checkpoints `genflow runs import` reads
    architecture: Literal["adaln_zero", "sage_learning"] = "adaln_zero"
    in_ch: int = 8  # DiT input channels: 5 context + 2 coordinate + 1 noisy (fixed)
    out_ch: int = 1  # DiT output channels: the target-goal mask (fixed)
    patch_size: PositiveInt = 8  # pixels per patch side: 8 gives 64 tokens, ~0.3 s per step of 64 on one CPU core (patch 4: 4x)
    hidden_size: PositiveInt = 128  # transformer width
    depth: PositiveInt = 4  # DiT blocks
    num_heads: PositiveInt = 4  # attention heads
    mlp_ratio: Positive = 4.0  # MLP width / hidden_size (sage_learning: 4 only)
    condition_on_target: bool = False  # also feed the target's box (centre, size) to every adaLN layer
    # the 2 coordinate channels: the image grid in [-1, 1] (source), or each pixel's offset from the
    # target's centre (in the same units), so every patch sees where it lies relative to the object
    coordinates: Literal["absolute", "target_relative"] = "absolute"

    def __post_init__(self) -> None:
        if self.in_ch != CONTEXT_CHANNELS + 3:
            raise ConfigError(f"model.network.in_ch={self.in_ch}: must be 8 (5 context + 2 coordinate + 1 noisy channels)")
        if self.out_ch != 1:
            raise ConfigError(f"model.network.out_ch={self.out_ch}: must be 1 (the target-goal mask)")
        if self.architecture == "sage_learning" and (self.condition_on_target or self.mlp_ratio != 4):
            raise ConfigError("model.network.architecture=sage_learning takes no condition_on_target and mlp_ratio 4 only "
                              f"(got condition_on_target={self.condition_on_target}, mlp_ratio={self.mlp_ratio})")


# the auxiliary Dice loss on the clean-mask estimate: genflow's soft Dice weighted by the signal level, or
# sage_learning's focal Dice (alpha 0.5, gamma 2, smooth 1) on sigmoid(clamp(estimate, -10, 10)), unweighted
AuxLoss = Literal["soft_dice", "focal_dice"]

# training noise levels: uniform, or logit-normal (sigmoid of a standard normal, SD3's choice: more
# weight on the middle of the path, less on the nearly clean and nearly pure-noise ends)
TimeSampling = Literal["uniform", "logit_normal"]


@dataclass
class FlowPathConfig:
    scheduler: Literal["condot", "cosine", "vp", "linear_vp", "polynomial"] = "condot"  # scheduler of the affine path


@dataclass
class OdeSamplerConfig:
    method: Literal["euler", "midpoint", "rk4", "dopri5"] = "midpoint"  # ODE solver (dopri5: adaptive)
    steps: PositiveInt = 10  # solver steps: midpoint x 10 = 20 network evaluations
    atol: Positive = 1e-4  # dopri5 only: absolute tolerance
    rtol: Positive = 1e-4  # dopri5 only: relative tolerance

    def __post_init__(self) -> None:
        check_ranges(self, "model.sampler.")


@dataclass
class DiffusionPathConfig:
    num_train_timesteps: Annotated[int, Range(ge=2)] = 1000  # discrete noise levels of the DDPM schedule
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"  # noise schedule (diffusers)
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "sample"  # what the DiT outputs: sample (clean mask) | epsilon | v_prediction


@dataclass
class DiffusionSamplerConfig:
    sampler_type: Literal["ddim", "ddpm"] = "ddim"  # diffusers sampler
    eta: NonNegative = 0.0  # DDIM: 0 deterministic, 1 DDPM-like
    steps: PositiveInt = 50  # network evaluations per sample (alias: sampling_steps)

    def __post_init__(self) -> None:
        check_ranges(self, "model.sampler.")


@dataclass
class FlowModelConfig:
    network: NetworkConfig = field(default_factory=NetworkConfig)  # the DiT
    path: FlowPathConfig = field(default_factory=FlowPathConfig)  # the flow-matching path
    prediction: Literal["velocity", "target", "noise"] = "target"  # what the DiT outputs (target: the clean mask); sampled as a velocity either way
    sampler: OdeSamplerConfig = field(default_factory=OdeSamplerConfig)  # ODE sampling
    aux_loss_weight: NonNegative = 0.1  # weight of the Dice loss on the clean-mask estimate (module docstring)
    aux_loss: AuxLoss = "soft_dice"  # soft_dice (weighted by the signal level) | focal_dice (the source's)
    time_sampling: TimeSampling = "uniform"  # training noise levels: uniform | logit_normal


@dataclass
class DiffusionModelConfig:
    network: NetworkConfig = field(default_factory=NetworkConfig)  # the DiT
    path: DiffusionPathConfig = field(default_factory=DiffusionPathConfig)  # the DDPM noise schedule
    sampler: DiffusionSamplerConfig = field(default_factory=DiffusionSamplerConfig)  # DDIM / DDPM sampling
    # the time the network sees in training: timestep / T (discrete), or the uniform draw u whose floor(u T) is
    # the timestep (continuous, the source's); sampling passes timestep / T either way
    network_time: Literal["discrete", "continuous"] = "discrete"
    aux_loss_weight: NonNegative = 0.1  # weight of the Dice loss on the clean-mask estimate (module docstring)
    aux_loss: AuxLoss = "soft_dice"  # soft_dice (weighted by the signal level) | focal_dice (the source's)
    time_sampling: TimeSampling = "uniform"  # training noise levels: uniform | logit_normal


@dataclass
class EvalConfig:
    """The quick evaluation every `train.eval_every` epochs (`genflow eval namo` is the full one)."""

    num_scenes: PositiveInt = 48  # val scenes scored at each evaluation
    samples_per_scene: PositiveInt = 2  # goal masks sampled per scene

    def __post_init__(self) -> None:
        check_ranges(self, "eval.")


def _default_train() -> TrainConfig:
    return TrainConfig(epochs=60, batch_size=64, optimizer="adamw", lr=5e-4, weight_decay=0.0, warmup_steps=100,
                       lr_schedule="cosine", min_lr=1e-5, grad_clip=1.0, seed=42, eval_every=10, checkpoint_every=10,
                       best_metric="val_loss", best_mode="min")


# The source system's command-line names (Hydra keys) -> ours.
SOURCE_ALIASES = {
    "batch_size": "train.batch_size",
    "base_lr": "train.lr",
    "max_epochs": "train.epochs",
    "seed": "train.seed",
    "image_size": "data.image_size",
    "num_workers": "train.num_workers",
    "sampling_steps": "model.sampler.steps",
    "trainer.precision": "train.precision",
    "trainer.max_epochs": "train.epochs",
    "trainer.gradient_clip_val": "train.grad_clip",
}


@dataclass
class NamoFlowConfig:
    aliases: ClassVar[dict[str, str]] = SOURCE_ALIASES
    data: DataConfig = field(default_factory=DataConfig)  # the scene shards
    model: FlowModelConfig = field(default_factory=FlowModelConfig)  # DiT, path, prediction and sampler
    train: TrainConfig = field(default_factory=_default_train)  # engine settings (TrainConfig); _default_train unless a YAML has a train: section
    eval: EvalConfig = field(default_factory=EvalConfig)  # the quick check every train.eval_every epochs


@dataclass
class NamoDiffusionConfig:
    aliases: ClassVar[dict[str, str]] = SOURCE_ALIASES
    data: DataConfig = field(default_factory=DataConfig)  # the scene shards
    model: DiffusionModelConfig = field(default_factory=DiffusionModelConfig)  # DiT, noise schedule and sampler
    train: TrainConfig = field(default_factory=_default_train)  # engine settings (TrainConfig); _default_train unless a YAML has a train: section
    eval: EvalConfig = field(default_factory=EvalConfig)  # the quick check every train.eval_every epochs


# --- network ----------------------------------------------------------------------------------------
TARGET_FREQUENCIES = 6  # Fourier features of the target's centre: sin / cos of 2^k pi x, k < 6


def target_box_features(target: torch.Tensor) -> torch.Tensor:
    """(B, S, S) target masks -> (B, 4 * TARGET_FREQUENCIES + 2): Fourier features of the box centre
    (row, column in [-1, 1]) and its height and width as fractions of the image."""
    size = target.shape[-1]
    pixels = torch.arange(size, device=target.device, dtype=torch.float32)
    features = []
    for on in (target.bool().any(2), target.bool().any(1)):  # rows, columns touched: (B, S)
        count = on.sum(1).clamp(min=1)
        centre = ((on * (pixels + 0.5)).sum(1) / count) / size * 2 - 1
        angles = centre[:, None] * math.pi * 2.0 ** torch.arange(TARGET_FREQUENCIES, device=target.device)
        features += [torch.sin(angles), torch.cos(angles), (on.sum(1) / size)[:, None]]
    return torch.cat(features, dim=1)


def target_centre(target: torch.Tensor) -> torch.Tensor:
    """(B, S, S) target masks -> (B, 2) centre (x = column, y = row) in the [-1, 1] grid units."""
    size = target.shape[-1]
    axis = torch.linspace(-1, 1, size, device=target.device)
    on = target.float()
    mass = on.sum((1, 2)).clamp(min=1)
    return torch.stack([(on.sum(1) * axis).sum(1) / mass, (on.sum(2) * axis).sum(1) / mass], dim=1)


class NamoGoalNet(nn.Module):
    """DiT over [context (5), coordinate grid (2), noisy goal mask (1)] -> 1 channel; optionally also
    conditioned (through adaLN, beside the time) on the target's box."""

    def __init__(self, network: NetworkConfig, image_size: int):
        super().__init__()
        self.condition_on_target = network.condition_on_target
        self.target_relative = network.coordinates == "target_relative"
        sizes = dict(in_channels=network.in_ch, out_channels=network.out_ch, image_size=image_size,
                     patch_size=network.patch_size, hidden_size=network.hidden_size, depth=network.depth,
                     num_heads=network.num_heads)
        if network.architecture == "sage_learning":
            check_dit_sizes(**sizes, mlp_ratio=network.mlp_ratio)
            self.dit = SageDiT(**sizes)
        else:
            self.dit = DiT(**sizes, mlp_ratio=network.mlp_ratio,
                           condition_dim=4 * TARGET_FREQUENCIES + 2 if network.condition_on_target else 0)
        axis = torch.linspace(-1, 1, image_size)
        rows, cols = torch.meshgrid(axis, axis, indexing="ij")
        self.register_buffer("coordinates", torch.stack([cols, rows])[None], persistent=False)  # (1, 2, S, S)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """`x_t` (B, 1, S, S), `t` (B,) in [0, 1], `context` (B, 5, S, S) in {0, 1} -> (B, 1, S, S)."""
        scene = context.to(x_t.dtype) * 2 - 1
        grid = self.coordinates.to(x_t.dtype).expand(x_t.shape[0], -1, -1, -1)
        if self.target_relative:
            grid = grid - target_centre(context[:, 4]).to(x_t.dtype)[:, :, None, None]
        condition = target_box_features(context[:, 4]) if self.condition_on_target else None
        return self.dit(torch.cat([scene, grid, x_t], dim=1), t, condition)


def soft_dice_loss(clean_estimate: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean over the batch of 1 - soft Dice; `clean_estimate` (B, 1, S, S) in [-1, 1] units, `mask` in {0, 1}."""
    prob = ((clean_estimate + 1) / 2).clamp(0, 1).flatten(1)
    truth = mask.flatten(1)
    dice = (2 * (prob * truth).sum(1) + 1) / (prob.sum(1) + truth.sum(1) + 1)
    return ((1 - dice) * weight).mean()


def focal_dice_loss(clean_estimate: torch.Tensor, mask: torch.Tensor, *, alpha: float = 0.5, gamma: float = 2.0,
                    smooth: float = 1.0) -> torch.Tensor:
    """sage_learning's auxiliary loss: 1 - mean over the batch of a focal-weighted Dice between
    p = sigmoid(clamp(estimate, -10, 10)) and the mask, each pixel weighted by
    alpha (1 - p)^gamma where the mask is on and (1 - alpha) p^gamma where it is off (the pixels the
    estimate gets wrong count most). `clean_estimate` (B, 1, S, S) in [-1, 1] units, `mask` in {0, 1}."""
    prob = torch.sigmoid(clean_estimate.clamp(-10.0, 10.0)).flatten(1)
    truth = mask.flatten(1).clamp(0, 1)
    weight = alpha * (1 - prob) ** gamma * truth + (1 - alpha) * prob**gamma * (1 - truth)
    overlap = (prob * truth * weight).sum(1)
    total = (prob * weight).sum(1) + (truth * weight).sum(1)
    return 1 - ((2 * overlap + smooth) / (total + smooth + 1e-8)).mean()


# --- the recipes ------------------------------------------------------------------------------------
@dataclass
class NamoSampleOptions(OdeSolverOptions, SampleOptions):
    n: PositiveInt = 8  # how many test scenes
    samples_per_scene: PositiveInt = 4  # goal masks drawn per scene
    # also the source's goal poses: (x, y, θ) of each sample that is one 8-connected blob (the others dropped),
    # as arrays poses / accepted / acceptance_rate in the .npz, OUT-poses.json, and their footprints in OUT-poses.png
    poses: bool = False


@dataclass
class NamoEvalOptions(OdeSolverOptions, EvalOptions):
    limit: PositiveInt | None = 200  # scenes evaluated (the first of the split)
    samples_per_scene: PositiveInt = 8  # goal masks drawn per scene (K of best-of-K and mode coverage)
    figure: bool = True  # write RUN/eval/namo-SAMPLER-STEPS.png


class _NamoRecipe(Recipe):
    """What both objectives share: data, network, auxiliary loss, evaluation, pictures."""

    sample_options = NamoSampleOptions
    tensorboard_tags = {"train/loss": "train_loss", "val/val_loss": "val_loss", "val/val_loss_best": "val_loss_best",
                        "train/lr": "lr-AdamW", "samples": "Validation_Samples"}
    best_checkpoint_name = "epoch{epoch:03d}-val_loss{value:.4f}"
    compare_metrics = ("validity", "push_validity", "best_of_k_iou", "mode_coverage", "mode_coverage_multimodal")
    compare_defaults = {"limit": 100, "samples_per_scene": 4, "figure": False}

    # --- per objective ------------------------------------------------------------------------------
    def objective_loss(self, model, x1: torch.Tensor, context: torch.Tensor, *, noise: torch.Tensor,
                       times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(regression loss, clean-mask estimate (B, 1, S, S), its per-sample weight (B,)) for clean masks
        `x1` (B, 1, S, S) in [-1, 1], the path's `noise` (like x1) and `times` (B,) in [0, 1) from
        :meth:`training_times` (flow time of the path, or u with timestep floor(u T))."""
        raise NotImplementedError

    def draw(self, model, context: torch.Tensor, generator: torch.Generator, solver: str, steps: int) -> tuple[torch.Tensor, int]:
        """Generated goal channels (B, 1, S, S) in data units and the network evaluations used."""
        raise NotImplementedError

    def default_sampling(self) -> tuple[str, int]:
        raise NotImplementedError

    # --- training -------------------------------------------------------------------------------------
    def build_datasets(self):
        d = self.config.data
        fields = ["context", "target_goal"] + (["mode_map"] if d.resample_goals else [])
        train = training_split(d.data_dir, fields, streaming=d.streaming, in_memory=d.in_memory, seed=self.config.train.seed)
        size = train.field_shape("context")[-1]
        if size != d.image_size:
            raise ConfigError(f"data.image_size={d.image_size} but {d.data_dir} holds {size} x {size} masks "
                              f"(re-import with image_size={d.image_size}, or set data.image_size={size})")
        # val carries what the placement metrics need too (compute_loss reads only context / target_goal)
        return train, ShardDataset(d.data_dir, "val", ["context", "target_goal", "num_modes", "mode_map"], in_memory=d.in_memory)

    def build_model(self) -> NamoGoalNet:
        return NamoGoalNet(self.config.model.network, self.config.data.image_size)

    def training_times(self, batch_size: int, ctx: StepContext) -> torch.Tensor:
        """Noise levels in (0, 1) for a batch: uniform or logit-normal (`model.time_sampling`)."""
        if self.config.model.time_sampling == "logit_normal":
            return torch.sigmoid(ctx.randn(batch_size))
        return ctx.rand(batch_size)

    def compute_loss(self, model, batch, ctx: StepContext):
        context = batch["context"]
        mask = batch["target_goal"].float()
        if self.config.data.resample_goals:
            mask = draw_valid_placements(context[:, 4], batch["mode_map"], ctx.rand(len(mask)), mask[:, 0])[:, None].float()
        noise = ctx.randn(*mask.shape)
        loss, regression, aux = self.loss_terms(model, mask=mask, context=context, noise=noise,
                                                times=self.training_times(len(mask), ctx))
        return loss, {"mse": regression.detach(), "aux_dice": aux.detach()}

    def loss_terms(self, model, *, mask: torch.Tensor, context: torch.Tensor, noise: torch.Tensor,
                   times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, regression term, auxiliary Dice term) for goal masks `mask` (B, 1, S, S) in {0, 1} with
        the given draws; the training step's loss, and what benchmarks/parity/namo.py holds against the source's."""
        regression, clean, weight = self.objective_loss(model, mask * 2 - 1, context, noise=noise, times=times)
        if self.config.model.aux_loss == "focal_dice":
            aux = focal_dice_loss(clean.float(), mask)
        else:
            aux = soft_dice_loss(clean.float(), mask, weight)
        return regression + self.config.model.aux_loss_weight * aux, regression, aux

    # --- generation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, model, context: torch.Tensor, *, samples_per_scene: int = 1, solver: str | None = None,
                 steps: int | None = None, seed: int = 0, batch_size: int = 256) -> tuple[np.ndarray, int]:
        """Binary placements (N, K, S, S) for contexts (N, 5, S, S), and network evaluations per sample."""
        default_solver, default_steps = self.default_sampling()
        solver, steps = solver or default_solver, steps or default_steps
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        repeated = context.repeat_interleave(samples_per_scene, dim=0)
        chunks, nfe = [], 0
        for part in repeated.split(batch_size):
            x, nfe = self.draw(model, part.to(device), generator, solver, steps)
            chunks.append((x[:, 0] > 0).cpu().numpy())
        size = context.shape[-1]
        return np.concatenate(chunks).reshape(len(context), samples_per_scene, size, size), nfe

    def _test_scenes(self, split: str = "test", limit: int | None = None) -> dict[str, np.ndarray]:
        data = load_split(self.config.data.data_dir, split, ["context", "target_goal", "num_modes", "mode_map"])
        return {k: v[:limit] for k, v in data.items()}

    # --- evaluation -----------------------------------------------------------------------------------
    def evaluate(self, model, val_data, device):
        e = self.config.eval
        scenes = first_samples(val_data, e.num_scenes)
        samples, _ = self.generate(model, torch.from_numpy(scenes["context"]), samples_per_scene=e.samples_per_scene)
        scores = placement_metrics(scenes["context"], scenes["target_goal"][:, 0], samples, scenes["num_modes"], scenes["mode_map"])
        return {f"val_{k}": v for k, v in scores.items()
                if k in ("iou", "validity", "push_validity", "mode_coverage", "mode_coverage_multimodal")}

    @evaluation("namo", NamoEvalOptions)
    def eval_namo(self, model, run_dir, device, options: NamoEvalOptions):
        """Placement quality on held-out scenes, beside two trivial baselines on the same scenes:
        `stay` (the object left where it is) and `random_train_goal` (K random training goals)."""
        split, steps, solver, limit, seed = options.split, options.steps, options.solver, options.limit, options.seed
        samples_per_scene, figure = options.samples_per_scene, options.figure
        scenes = self._test_scenes(split, limit)
        context, truth = scenes["context"], scenes["target_goal"][:, 0]
        start = time.perf_counter()
        samples, nfe = self.generate(model, torch.from_numpy(context), samples_per_scene=samples_per_scene,
                                     solver=solver, steps=steps, seed=seed)
        seconds = time.perf_counter() - start
        default_solver, default_steps = self.default_sampling()
        result: dict[str, Any] = {"split": split, "scenes": len(context), "samples_per_scene": samples_per_scene,
                                  "sampler": solver or default_solver, "steps": steps or default_steps, "nfe": nfe,
                                  "seconds": seconds}
        result.update(placement_metrics(context, truth, samples, scenes["num_modes"], scenes["mode_map"]))
        # the same of the poses the source's inference keeps (one blob each), the target's footprint at each
        proposals = proposal_metrics(context, truth, samples, scenes["num_modes"], scenes["mode_map"])
        result.update({f"proposals_{k}": v for k, v in proposals.items()})
        reported = ("iou", "best_of_k_iou", "validity", "push_validity", "mode_coverage", "mode_coverage_multimodal")
        for name, baseline in self.baselines(context, samples_per_scene, seed).items():
            scores = placement_metrics(context, truth, baseline, scenes["num_modes"], scenes["mode_map"])
            result.update({f"{name}_{k}": v for k, v in scores.items() if k in reported})
            scores = proposal_metrics(context, truth, baseline, scenes["num_modes"], scenes["mode_map"])
            result.update({f"{name}_proposals_{k}": v for k, v in scores.items() if k in reported + ("acceptance_rate",)})
        if figure:
            out = Path(run_dir) / "eval" / f"namo-{result['sampler']}-{result['steps']}.png"
            plot_placements(context[:6], truth[:6], samples[:6, :8], out)
            result["picture"] = str(out)
        return result

    def baselines(self, context: np.ndarray, k: int, seed: int) -> dict[str, np.ndarray]:
        stay = context[:, 4:5].astype(bool)  # the target object where it stands
        goals = load_split(self.config.data.data_dir, "train", ["target_goal"])["target_goal"][:, 0]
        picks = np.random.default_rng(seed + 777).integers(len(goals), size=(len(context), k))
        return {"stay": stay, "random_train_goal": goals[picks].astype(bool)}

    def export_graphs(self, model):
        """The network as used by the samplers: (noisy goal, time, scene context) -> network output."""
        size = self.config.data.image_size
        x_t, t = torch.randn(2, 1, size, size), torch.rand(2)
        context = torch.randint(0, 2, (2, CONTEXT_CHANNELS, size, size), dtype=torch.uint8)
        return {"goal_net": (model, (x_t, t, context), ["x_t", "t", "context"], ["output"],
                             {"x_t": {0: "batch"}, "t": {0: "batch"}, "context": {0: "batch"}, "output": {0: "batch"}})}

    # --- pictures and sampling --------------------------------------------------------------------------
    def save_figures(self, model, val_data, run_dir, device):
        scenes = first_samples(val_data, 4)
        samples, _ = self.generate(model, torch.from_numpy(scenes["context"]), samples_per_scene=3)
        path = Path(run_dir) / "samples.png"
        plot_placements(scenes["context"], scenes["target_goal"][:, 0], samples, path)
        return {"samples": path}

    def sample(self, model, run_dir, device, options: NamoSampleOptions):
        n, steps, solver, out, seed, samples_per_scene = (options.n, options.steps, options.solver, options.out,
                                                          options.seed, options.samples_per_scene)
        scenes = self._test_scenes(limit=n)
        samples, nfe = self.generate(model, torch.from_numpy(scenes["context"]), samples_per_scene=samples_per_scene,
                                     solver=solver, steps=steps, seed=seed)
        default_solver, default_steps = self.default_sampling()
        out = Path(out) if out else Path(run_dir) / "samples" / f"{solver or default_solver}-{steps or default_steps}.png"
        plot_placements(scenes["context"], scenes["target_goal"][:, 0], samples, out)
        arrays = {"context": scenes["context"], "target_goal": scenes["target_goal"], "samples": samples}
        result = {"picture": out, "arrays": out.with_suffix(".npz"), "scenes": len(samples), "nfe_per_sample": nfe}
        if options.poses:
            proposals = accept_proposals(samples)
            arrays.update(poses=proposals.poses, accepted=proposals.accepted, acceptance_rate=proposals.acceptance_rate)
            per_scene = [{"scene": i, "acceptance_rate": s.acceptance_rate, "samples": s.indices.tolist(),
                          "poses": np.round(s.poses, 4).tolist()} for i, s in enumerate(proposals.per_scene())]
            table = {"convention": POSE_CONVENTION, "image_size": samples.shape[-1], "scenes": per_scene}
            result["poses"] = out.with_name(f"{out.stem}-poses.json")
            result["poses"].write_text(json.dumps(table, indent=1))
            result["poses_picture"] = out.with_name(f"{out.stem}-poses.png")
            plot_placements(scenes["context"], scenes["target_goal"][:, 0],
                            proposal_footprints(scenes["context"][:, 4], proposals), result["poses_picture"])
            result["acceptance_rate"] = float(proposals.accepted.mean())
        np.savez(out.with_suffix(".npz"), **arrays)
        return result


class NamoFlowMatchingRecipe(_NamoRecipe):
    card = FM_CARD
    config_class = NamoFlowConfig

    def __init__(self, config: NamoFlowConfig):
        super().__init__(config)
        self.objective = FlowMatchingObjective(AffinePath(make_scheduler(config.model.path.scheduler)),
                                               prediction=config.model.prediction)

    def objective_loss(self, model, x1, context, *, noise, times):
        x0 = noise
        eps = self.objective.t_eps
        t = eps + (1 - 2 * eps) * times
        sample = self.objective.path.sample(x0=x0, x1=x1, t=t)
        output = model(sample.x_t, t, context).float()
        velocity = self.objective.to_velocity(output, x_t=sample.x_t, t=t)
        clean = self.objective.path.velocity_to_target(velocity=velocity, x_t=sample.x_t, t=t)
        return self.objective.loss(output, sample, x0=x0, x1=x1), clean, self.objective.path.scheduler(t).alpha

    def draw(self, model, context, generator, solver, steps):
        x0 = torch.randn(len(context), 1, *context.shape[-2:], generator=generator).to(context.device)
        calls = [0]

        def velocity(x, t):
            calls[0] += 1
            return self.objective.to_velocity(model(x, t, context).float(), x_t=x, t=t)

        def jump_to_data(x, t):  # the last step: never evaluate the clean-mask -> velocity conversion at t = 1
            calls[0] += 1
            return self.objective.to_target(model(x, t, context).float(), x_t=x, t=t)

        s = self.config.model.sampler
        final_jump = jump_to_data if self.objective.singular_at_data else None
        x1 = solve_ode(velocity, x0, steps=steps, solver=solver, atol=s.atol, rtol=s.rtol, final_jump=final_jump)
        return x1, calls[0]

    def default_sampling(self):
        return self.config.model.sampler.method, self.config.model.sampler.steps

    def compare_settings(self):
        # ~10 network evaluations each (with the clean-mask prediction the last step is one jump), then more
        return [("euler", 10), ("midpoint", 5), ("rk4", 3), ("midpoint", 10), ("dopri5", 10)]


class NamoDiffusionRecipe(_NamoRecipe):
    card = DIFFUSION_CARD
    config_class = NamoDiffusionConfig

    def __init__(self, config: NamoDiffusionConfig):
        super().__init__(config)
        p = config.model.path
        self.objective = DiffusionObjective(p.num_train_timesteps, p.beta_schedule, p.prediction_type)

    def objective_loss(self, model, x1, context, *, noise, times):
        timesteps = self.objective.sample_timesteps(times)
        x_t = self.objective.add_noise(x0=x1, noise=noise, timesteps=timesteps)
        continuous = self.config.model.network_time == "continuous"
        output = model(x_t, times if continuous else self.objective.network_time(timesteps), context).float()
        clean = self.objective.predicted_clean(output, x_t, timesteps)
        signal = self.objective.alphas_cumprod.to(x1.device)[timesteps].sqrt()
        return self.objective.loss(output, x0=x1, noise=noise, timesteps=timesteps), clean, signal

    def draw(self, model, context, generator, solver, steps):
        if solver not in ("ddim", "ddpm"):
            raise GenflowError(f"solver={solver}: namo-diffusion samples with ddim or ddpm")
        x = sample_diffusion(lambda x_t, t: model(x_t, t, context).float(), (len(context), 1, *context.shape[-2:]),
                             self.objective, sampler=solver, steps=steps, eta=self.config.model.sampler.eta,
                             generator=generator, device=context.device)
        return x, steps

    def default_sampling(self):
        return self.config.model.sampler.sampler_type, self.config.model.sampler.steps

    def compare_settings(self):
        return [("ddim", 10), ("ddim", 20), ("ddim", 50), ("ddpm", 50), ("ddpm", 100)]


# --- pictures -----------------------------------------------------------------------------------------
def scene_rgb(context: np.ndarray) -> np.ndarray:
    """(5, S, S) masks -> (S, S, 3) picture: walls grey, objects blue, target red, robot green, goal outline."""
    robot, goal, movable, static, target = (c.astype(bool) for c in context)
    rgb = np.ones((*robot.shape, 3))
    rgb[static] = (0.35, 0.35, 0.35)
    rgb[movable] = (0.45, 0.6, 0.95)
    rgb[target] = (0.9, 0.2, 0.2)
    rgb[goal] = (0.95, 0.85, 0.2)
    rgb[robot] = (0.1, 0.7, 0.2)
    return rgb


def plot_placements(context: np.ndarray, truth: np.ndarray, samples: np.ndarray, path: Path) -> None:
    """One row per scene: the scene, the ground-truth placement, then K generated placements."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, k = samples.shape[:2]
    fig, axes = plt.subplots(n, k + 2, figsize=(1.5 * (k + 2), 1.55 * n), squeeze=False)
    for i in range(n):
        base = scene_rgb(context[i])
        panels = [("scene", base, None), ("ground truth", base, truth[i])]
        panels += [(f"sample {j + 1}", base, samples[i, j]) for j in range(k)]
        for ax, (title, picture, overlay) in zip(axes[i], panels):
            shown = picture.copy()
            if overlay is not None:
                shown[overlay.astype(bool)] = 0.5 * shown[overlay.astype(bool)] + 0.5 * np.array([0.6, 0.0, 0.8])
            ax.imshow(shown, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
