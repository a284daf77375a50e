"""digit4: point-cloud flow matching on real MNIST 4s.

A PointNet encoder turns a cloud `(B, N, 2)` into a global context `(B, 64)`; an adaptive-LayerNorm
MLP velocity field moves noise points to the digit's points conditioned on it. Options of the source
system: prediction target velocity | noise | target, a variational (KL-regularised) latent
(`use_vae`), and a prior flow over the latent (`use_prior_flow`) so `genflow sample RUN unconditional=true`
draws new 4s with no input cloud. Time convention (all genflow flows): t = 0 noise, t = 1 data.

The model options that rebuild the source's own network (configs/digit4_source.yaml, which configs/digit4.yaml
follows): a LayerNorm PointNet with a linear head, a unit-length latent, the plain adaLN MLP field, flax's
initialisation and noise / target losses in velocity space. benchmarks/parity/digit4.py checks them against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genflow.config import NonNegative, PositiveInt, Range, check_ranges
from genflow.engine import EvalOptions, OdeSolverOptions, Recipe, SampleOptions, StepContext, TrainConfig, evaluation
from genflow.data import ShardDataset, first_samples, images_to_point_clouds, load_split, read_manifest, training_split
from genflow.data.point_clouds import cloud_construction
from genflow.errors import GenflowError
from genflow.metrics import chamfer_distance, coverage_mmd_1nna
from genflow.models import AdaLNMLPVelocityField, PlainAdaLNMLPVelocityField, PointNetEncoder, VectorVelocityField
from genflow.objectives import AffinePath, FlowMatchingObjective, make_scheduler
from genflow.samplers import solve_ode
from genflow_recipes.digit4.card import CARD

__all__ = ["Digit4Recipe", "Digit4Config", "Digit4Flow", "chamfer_report"]


@dataclass
class DataConfig:
    path: str = "datasets/digit4"  # made by `genflow data make-digit4`
    in_memory: bool = True  # the digit4 set is ~25 MB; larger sets stream from the shards
    # read the train split as a stream (StreamingShardDataset: each process x worker its own shards, a new shuffle
    # each epoch, exact resume, flat memory for data larger than RAM) instead of a map-style ShardDataset
    streaming: bool = False


@dataclass
class ModelConfig:
    latent_dim: PositiveInt = 64  # size of a cloud's latent code (the velocity field's condition)
    encoder_hidden: Annotated[tuple[int, ...], Range(ge=1)] = (64, 128, 256)  # PointNet encoder: per-point layer widths
    field_hidden: PositiveInt = 128  # velocity field width (128 x 4 blocks: ~0.19 s/step on 2 CPU cores at batch 32 x 500 points)
    field_depth: PositiveInt = 4  # adaLN MLP blocks of the velocity field
    time_dim: PositiveInt = 64  # width of the time embedding (velocity field and prior flow)
    # what the velocity field outputs (noise / target are converted to a velocity for sampling)
    prediction_target: Literal["velocity", "noise", "target"] = "velocity"
    path: Literal["condot", "cosine", "vp", "linear_vp", "polynomial"] = "condot"  # scheduler of the affine path; t = 0 noise, t = 1 data
    use_vae: bool = False  # variational encoder: the context is a draw from it, plus a KL term
    kl_weight: NonNegative = 1e-3  # weight of the KL term (use_vae only)
    use_prior_flow: bool = False  # true: a flow over the latent, enables `genflow sample RUN unconditional=true`
    prior_hidden: PositiveInt = 256  # hidden width of the latent prior flow
    prior_depth: PositiveInt = 3  # blocks of the latent prior flow
    prior_weight: NonNegative = 1.0  # weight of the prior-flow loss in the total loss
    # --- options of the source's model (configs/digit4_source.yaml sets them all) ---
    encoder_layer_norm: bool = False  # a LayerNorm after each per-point layer of the PointNet encoder
    encoder_activation: Literal["relu", "silu"] = "relu"  # activation of the encoder's layers
    encoder_head: Literal["mlp", "linear"] = "mlp"  # after the max-pool: Linear-act-Linear, or one Linear
    unit_latent: bool = False  # divide the latent code (a VAE's mean) by its length: codes on the unit sphere
    # adaln_zero: residual adaLN-Zero blocks (width field_hidden x field_depth); adaln_plain: the source's plain MLP,
    # field_depth layers LayerNorm(SiLU(Linear)) * (1 + scale) + shift, raw-time sinusoids, no residuals or gates
    field: Literal["adaln_zero", "adaln_plain"] = "adaln_zero"
    field_cond_dim: PositiveInt = 256  # adaln_plain: width of the (time, context) vector the modulations read
    # prediction: MSE of the network's own output (velocity, noise or data); velocity: a noise / target prediction
    # converted to the velocity it implies before the MSE (on condot: weights 1/t^2 / 1/(1-t)^2, as the source)
    loss_space: Literal["prediction", "velocity"] = "prediction"
    init: Literal["torch", "lecun_normal"] = "torch"  # Linear weights: torch's default or flax's (truncated normal, var 1/fan_in; zero bias)


@dataclass
class EvalConfig:
    num_clouds: PositiveInt = 256  # validation clouds scored every `train.eval_every` epochs (best.pt is chosen on them)
    steps: PositiveInt = 20  # ODE steps of validation (and of sample / eval unless given)
    solver: Literal["euler", "midpoint", "rk4", "dopri5"] = "euler"  # ODE solver of validation (and of sample / eval unless given)

    def __post_init__(self) -> None:
        check_ranges(self, "eval.")


def _default_train() -> TrainConfig:
    return TrainConfig(epochs=50, batch_size=32, lr=1e-3, seed=42, eval_every=5, checkpoint_every=10,
                       best_metric="chamfer_l2", best_mode="min")


@dataclass
class Digit4Config:
    data: DataConfig = field(default_factory=DataConfig)  # the point-cloud shards
    model: ModelConfig = field(default_factory=ModelConfig)  # encoder, velocity field, optional VAE and latent prior
    train: TrainConfig = field(default_factory=_default_train)  # engine settings (TrainConfig): _default_train's, changed by a YAML train: section
    eval: EvalConfig = field(default_factory=EvalConfig)  # the validation check every train.eval_every epochs


class Digit4Flow(nn.Module):
    """Encoder + velocity field (+ latent prior flow). `forward` is the whole training computation."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.encoder = PointNetEncoder(in_dim=2, latent_dim=cfg.latent_dim, hidden=cfg.encoder_hidden, variational=cfg.use_vae,
                                       layer_norm=cfg.encoder_layer_norm, activation=cfg.encoder_activation,
                                       head=cfg.encoder_head)
        if cfg.field == "adaln_plain":
            self.field = PlainAdaLNMLPVelocityField(point_dim=2, cond_dim=cfg.latent_dim, widths=(cfg.field_hidden,) * cfg.field_depth,
                                                    time_dim=cfg.time_dim, modulation_dim=cfg.field_cond_dim)
        else:
            self.field = AdaLNMLPVelocityField(point_dim=2, cond_dim=cfg.latent_dim, hidden=cfg.field_hidden,
                                               depth=cfg.field_depth, time_dim=cfg.time_dim)
        self.prior = (VectorVelocityField(cfg.latent_dim, hidden=cfg.prior_hidden, depth=cfg.prior_depth, time_dim=cfg.time_dim)
                      if cfg.use_prior_flow else None)
        self.use_vae = cfg.use_vae
        self.unit_latent = cfg.unit_latent
        self.prior_path = AffinePath(make_scheduler("condot"))
        if cfg.init == "lecun_normal":
            for module in [self.encoder, self.field]:
                for layer in module.modules():
                    if isinstance(layer, nn.Linear):
                        _lecun_normal_(layer)
            if cfg.field == "adaln_plain":
                nn.init.zeros_(self.field.output_projection.weight)  # the output layer keeps its zero start

    def to_unit(self, code: torch.Tensor) -> torch.Tensor:
        """`code / |code|` with the source's guard (1e-8 inside the square root), when `unit_latent`."""
        return code / torch.sqrt(code.pow(2).sum(-1, keepdim=True) + 1e-8) if self.unit_latent else code

    def encode(self, points: torch.Tensor, latent_noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """`(B, N, 2)` -> context `(B, latent)` (a VAE draws it when `latent_noise` is given, else its mean)."""
        if not self.use_vae:
            return {"context": self.to_unit(self.encoder(points))}
        mu, logvar = self.encoder(points)
        mu = self.to_unit(mu)
        context = mu if latent_noise is None else mu + torch.exp(0.5 * logvar) * latent_noise
        return {"context": context, "mu": mu, "logvar": logvar}

    def forward(self, x_t, t, context_points, latent_noise=None, prior_noise=None, prior_t=None) -> dict[str, torch.Tensor]:
        out = self.encode(context_points, latent_noise)
        out["prediction"] = self.field(x_t, t, out["context"])
        if self.prior is not None and prior_noise is not None:
            # The prior flow learns the distribution of (detached) latent means: noise -> latent.
            latent = (out["mu"] if self.use_vae else out["context"]).detach()
            sample = self.prior_path.sample(x0=prior_noise, x1=latent, t=prior_t)
            out["prior_prediction"], out["prior_target"] = self.prior(sample.x_t, prior_t), sample.dx_t
        return out


@dataclass
class Digit4SampleOptions(OdeSolverOptions, SampleOptions):
    unconditional: bool = False  # generate from the prior flow (needs model.use_prior_flow) instead of reconstructing


@dataclass
class ChamferOptions(OdeSolverOptions, EvalOptions):
    pass


class Digit4Recipe(Recipe):
    card = CARD
    config_class = Digit4Config
    sample_options = Digit4SampleOptions
    data_path_key = "data.path"

    def __init__(self, config: Digit4Config):
        super().__init__(config)
        m = config.model
        self.objective = FlowMatchingObjective(AffinePath(make_scheduler(m.path)), prediction=m.prediction_target)

    # --- training ------------------------------------------------------------------------------
    def build_datasets(self):
        d = self.config.data
        return (training_split(d.path, ["points"], streaming=d.streaming, in_memory=d.in_memory, seed=self.config.train.seed),
                ShardDataset(d.path, "val", ["points"], in_memory=d.in_memory))

    def build_model(self) -> Digit4Flow:
        return Digit4Flow(self.config.model)

    def compute_loss(self, model, batch, ctx: StepContext):
        m = self.config.model
        x1 = batch["points"]
        b, n, _ = x1.shape
        x0 = ctx.randn(b, n, 2)
        eps = self.objective.t_eps
        t = eps + (1 - 2 * eps) * ctx.rand(b)
        sample = self.objective.path.sample(x0=x0, x1=x1, t=t)
        out = model(sample.x_t, t, x1,
                    latent_noise=ctx.randn(b, m.latent_dim) if m.use_vae else None,
                    prior_noise=ctx.randn(b, m.latent_dim) if m.use_prior_flow else None,
                    prior_t=ctx.rand(b) if m.use_prior_flow else None)
        if m.loss_space == "velocity" and m.prediction_target != "velocity":
            velocity = self.objective.to_velocity(out["prediction"].float(), x_t=sample.x_t, t=t)
            flow_loss = F.mse_loss(velocity, sample.dx_t)
        else:
            flow_loss = self.objective.loss(out["prediction"].float(), sample, x0=x0, x1=x1)
        loss, terms = flow_loss, {"flow_loss": flow_loss.detach()}
        if m.use_vae:
            kl = -0.5 * torch.mean(torch.sum(1 + out["logvar"] - out["mu"] ** 2 - out["logvar"].exp(), dim=1))
            loss = loss + m.kl_weight * kl
            terms["kl"] = kl.detach()
        if m.use_prior_flow:
            prior_loss = F.mse_loss(out["prior_prediction"].float(), out["prior_target"])
            loss = loss + m.prior_weight * prior_loss
            terms["prior_loss"] = prior_loss.detach()
        return loss, terms

    # --- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, model: Digit4Flow, context: torch.Tensor, n_points: int, *, steps: int, solver: str,
                 generator: torch.Generator) -> torch.Tensor:
        """Clouds `(B, n_points, 2)` for contexts `(B, latent)`: integrate noise (t=0) to data (t=1)."""
        x0 = torch.randn(context.shape[0], n_points, 2, generator=generator).to(context.device)

        def velocity(x, t):
            return self.objective.to_velocity(model.field(x, t, context).float(), x_t=x, t=t)

        return solve_ode(velocity, x0, steps=steps, solver=solver)

    @torch.no_grad()
    def reconstruct(self, model: Digit4Flow, points: torch.Tensor, *, steps: int, solver: str, seed: int,
                    batch_size: int = 256) -> torch.Tensor:
        """Encode each cloud and generate a new cloud of the same size from its context."""
        generator = torch.Generator().manual_seed(seed)
        outputs = []
        for chunk in points.split(batch_size):
            context = model.encode(chunk)["context"]
            outputs.append(self.generate(model, context, chunk.shape[1], steps=steps, solver=solver, generator=generator))
        return torch.cat(outputs)

    @torch.no_grad()
    def generate_unconditional(self, model: Digit4Flow, n: int, n_points: int, *, steps: int, solver: str, seed: int) -> torch.Tensor:
        if model.prior is None:
            raise GenflowError("unconditional=true needs a model trained with model.use_prior_flow=true")
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        z0 = torch.randn(n, self.config.model.latent_dim, generator=generator).to(device)
        latent = model.to_unit(solve_ode(lambda z, t: model.prior(z, t), z0, steps=steps, solver=solver))
        return self.generate(model, latent, n_points, steps=steps, solver=solver, generator=generator)

    # --- evaluation ------------------------------------------------------------------------------
    def evaluate(self, model, val_data, device):
        e = self.config.eval
        points = torch.from_numpy(first_samples(val_data, e.num_clouds)["points"]).to(device)
        generated = self.reconstruct(model, points, steps=e.steps, solver=e.solver, seed=0)
        return {"chamfer_l2": float(chamfer_distance(generated, points).mean()),
                "chamfer_sq": float(chamfer_distance(generated, points, squared=True).mean())}

    @evaluation("chamfer", ChamferOptions)
    def eval_chamfer(self, model, run_dir, device, options: ChamferOptions):
        """Chamfer of reconstructions against the input clouds and against an independent resampling
        of each input image, beside the resampling noise floor; with a prior flow, set metrics
        (MMD-CD, COV-CD, 1-NNA-CD) of unconditional samples against the test clouds."""
        split, limit, seed = options.split, options.limit, options.seed
        steps, solver = options.steps or self.config.eval.steps, options.solver or self.config.eval.solver
        data = load_split(self.config.data.path, split, ["points", "image"])
        points_np, images = data["points"][:limit], data["image"][:limit]
        points, n_points = torch.from_numpy(points_np), points_np.shape[1]
        generated = self.reconstruct(model, points.to(device), steps=steps, solver=solver, seed=seed).cpu()
        construction = cloud_construction(read_manifest(self.config.data.path))
        result: dict[str, Any] = {"split": split, "clouds": len(points), "points": n_points, "steps": steps,
                                  "solver": solver, "construction": construction}
        result.update(chamfer_report(generated, points, images, construction=construction, seed=seed))
        if model.prior is not None:
            count = min(len(points), 500)
            samples = self.generate_unconditional(model, count, n_points, steps=steps, solver=solver, seed=seed).cpu()
            result.update({k: float(v) for k, v in coverage_mmd_1nna(samples, points[:count]).items()})
        return result

    # --- pictures and sampling ------------------------------------------------------------------------
    def save_figures(self, model, val_data, run_dir, device):
        truth = torch.from_numpy(first_samples(val_data, 8)["points"]).to(device)
        generated = self.reconstruct(model, truth, steps=self.config.eval.steps, solver=self.config.eval.solver, seed=0)
        path = Path(run_dir) / "samples.png"
        _plot_clouds([truth.cpu(), generated.cpu()], ["ground truth", "generated"], path)
        return {"samples": path}

    def sample(self, model, run_dir, device, options: Digit4SampleOptions):
        n, out, seed, unconditional = options.n, options.out, options.seed, options.unconditional
        steps, solver = options.steps or self.config.eval.steps, options.solver or self.config.eval.solver
        run_dir = Path(run_dir)
        out = Path(out) if out else run_dir / "samples" / f"{'uncond' if unconditional else 'recon'}-{solver}-{steps}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        test = load_split(self.config.data.path, "test", ["points"])
        n_points = test["points"].shape[1]
        if unconditional:
            clouds = self.generate_unconditional(model, n, n_points, steps=steps, solver=solver, seed=seed).cpu()
            _plot_clouds([clouds], ["prior samples"], out)
            arrays = {"generated": clouds.numpy()}
        else:
            truth = torch.from_numpy(test["points"][:n])
            clouds = self.reconstruct(model, truth.to(device), steps=steps, solver=solver, seed=seed).cpu()
            _plot_clouds([truth, clouds], ["ground truth", "generated"], out)
            arrays = {"ground_truth": truth.numpy(), "generated": clouds.numpy()}
        np.savez(out.with_suffix(".npz"), **arrays)
        return {"picture": out, "arrays": out.with_suffix(".npz"), "clouds": len(clouds)}

    def export_graphs(self, model):
        m = self.config.model
        points, x, t = torch.randn(2, 100, 2), torch.randn(2, 100, 2), torch.rand(2)
        context = model.encode(points)["context"].detach()
        graphs = {
            "encoder": (_Encoder(model), (points,), ["points"], ["context"], {"points": {0: "batch", 1: "points"}, "context": {0: "batch"}}),
            "velocity_field": (_Velocity(model, self.objective), (x, t, context), ["x", "t", "context"], ["velocity"],
                               {"x": {0: "batch", 1: "points"}, "t": {0: "batch"}, "context": {0: "batch"}, "velocity": {0: "batch", 1: "points"}}),
        }
        if model.prior is not None:
            z = torch.randn(2, m.latent_dim)
            graphs["prior_velocity"] = (_PriorVelocity(model), (z, t), ["z", "t"], ["velocity"], {"z": {0: "batch"}, "t": {0: "batch"}, "velocity": {0: "batch"}})
        return graphs


def chamfer_report(generated: torch.Tensor, points: torch.Tensor, images: np.ndarray, *, construction: str,
                   seed: int = 0) -> dict[str, float]:
    """Chamfer of reconstructions `(B, N, 2)` against their input clouds `(B, N, 2)` and against an independent
    resampling of each input image `(B, 28, 28)`, beside the resampling noise floor (two more independent
    resamplings, drawn with the dataset's own cloud construction), for the L2 and squared conventions."""
    rng = np.random.default_rng(seed + 12345)
    n_points = points.shape[1]
    resample_a = torch.from_numpy(images_to_point_clouds(images, n_points, rng, construction=construction))
    resample_b = torch.from_numpy(images_to_point_clouds(images, n_points, rng, construction=construction))
    result = {}
    for label, squared in (("l2", False), ("sq", True)):
        model_vs_input = float(chamfer_distance(generated, points, squared=squared).mean())
        model_vs_resample = float(chamfer_distance(generated, resample_a, squared=squared).mean())
        floor = float(chamfer_distance(resample_a, resample_b, squared=squared).mean())
        result.update({f"chamfer_{label}": model_vs_input, f"chamfer_{label}_vs_resample": model_vs_resample,
                       f"noise_floor_{label}": floor, f"ratio_to_floor_{label}": model_vs_input / floor})
    return result


def _lecun_normal_(layer: nn.Linear) -> None:
    """flax's default Dense init: truncated normal (2 std) of variance 1 / fan_in, zero bias."""
    std = (1.0 / layer.in_features) ** 0.5 / 0.87962566103423978  # the std of a unit normal truncated at +-2
    nn.init.trunc_normal_(layer.weight, std=std, a=-2 * std, b=2 * std)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class _Encoder(nn.Module):
    def __init__(self, model: Digit4Flow):
        super().__init__()
        self.model = model

    def forward(self, points):
        return self.model.encode(points)["context"]


class _Velocity(nn.Module):
    """The ODE right-hand side in velocity form, whatever the network predicts."""

    def __init__(self, model: Digit4Flow, objective: FlowMatchingObjective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, x, t, context):
        return self.objective.to_velocity(self.model.field(x, t, context), x_t=x, t=t)


class _PriorVelocity(nn.Module):
    def __init__(self, model: Digit4Flow):
        super().__init__()
        self.model = model

    def forward(self, z, t):
        return self.model.prior(z, t)


def _plot_clouds(rows: list[torch.Tensor], titles: list[str], path: Path, per_row: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(per_row, max(len(r) for r in rows))
    # ground truth and generated lines interleave, so each generated cloud sits under its input
    lines = [(title, row[i : i + cols]) for i in range(0, len(rows[0]), cols) for title, row in zip(titles, rows)]
    fig, axes = plt.subplots(len(lines), cols, figsize=(1.6 * cols, 1.7 * len(lines)), squeeze=False)
    for r, (title, clouds) in enumerate(lines):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xlim(-1, 1), ax.set_ylim(-1, 1), ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])
            if c < len(clouds):
                ax.scatter(clouds[c][:, 0], clouds[c][:, 1], s=1.5, c="black")
            if c == 0:
                ax.set_ylabel(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
