"""hand-vae: VAE priors of two-hand poses (flat or SO(3)) with an energy for ranking hypotheses.

Data: `genflow data make-hands` (procedural MANO-style poses with grasp families) or
`genflow data import hands DIR` (real MANO-style npz files). Model:
:class:`~genflow_recipes.hand_vae.model.HandPoseVAE`. The source's flags are config keys (``model_type``,
``z_dim``, ``hidden``, ``batch_size``, ``learning_rate``, ``kl_warmup_epochs``, ``beta_max``,
``free_bits``, ``max_epochs``); ``resume_from_checkpoint=FILE`` resumes; ``--gpus N`` (or
``devices=N``) trains on N processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch

from genflow.config import NonNegative, NonNegativeInt, Positive, PositiveInt, Range, check_ranges
from genflow.engine import EvalOptions, Recipe, SampleOptions, StepContext, TrainConfig, evaluation, read_metrics
from genflow.data import ShardDataset, load_split, read_manifest, training_split
from genflow_recipes.hand_vae.dataset import read_hands_npz
from genflow_recipes.hand_vae.skeleton import FAMILIES, hand_joint_positions, inside_limits
from genflow.errors import ConfigError
from genflow_recipes.hand_vae.metrics import (CORRUPTIONS, HYPOTHESIS_SETTINGS, GaussianPosePrior, auroc, corrupt, hypothesis_errors,
                                        make_hypotheses, per_joint_error_degrees, select_hypotheses)
from genflow_recipes.hand_vae.model import HandPoseVAE, SourceHandPoseVAE, kl_weight
from genflow_recipes.hand_vae.card import CARD

__all__ = ["HandVaeRecipe", "HandVaeConfig"]

_ENERGY_BATCH = 4096  # hypotheses per energy call of the benchmark (N x K of them; IWAE decodes each K times)


@dataclass
class DataConfig:
    data_dir: str = "datasets/hands"  # genflow data make hands | genflow data import hands DIR
    val_limit: PositiveInt | None = 20_000  # validation loss / energy on at most this many val poses
    in_memory: bool = True  # load the train split into memory (200k poses: 76 MB); false: read batches from the shards
    # read the train split as a stream (StreamingShardDataset: each process x worker its own shards, a new shuffle
    # each epoch, exact resume, flat memory for data larger than RAM) instead of a map-style ShardDataset
    streaming: bool = False


@dataclass
class ModelConfig:
    model_type: str = "standard"  # standard: (B, 90) Gaussian; so3: 30 rotations, geodesic, 6-D decoder
    # genflow: 2-layer SiLU MLPs, rotation-matrix encoder input (so3), learned sigma; source: smplx-pose-priors'
    # network (GELU + dropout stacks with LayerNorm, standardised input, per-pose decoder variance (standard),
    # 1-D geodesic normaliser (so3)), see SourceHandPoseVAE
    architecture: Literal["genflow", "source"] = "genflow"
    z_dim: PositiveInt = 24  # latent dimensions
    hidden: PositiveInt = 256  # hidden width of the encoder and decoder MLPs
    layers: PositiveInt = 3  # architecture=source: Linear + GELU + dropout blocks of the encoder and of the decoder
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.1  # architecture=source: dropout after each block
    learn_sigma: bool = True  # architecture=genflow: reconstruction sigma learned (standard: per dimension; so3: one, radians)
    init_sigma: Positive = 0.1  # architecture=genflow: initial reconstruction sigma (so3: radians)

    def __post_init__(self) -> None:
        if self.model_type not in ("standard", "so3"):
            raise ConfigError(f"config key 'model.model_type': expected 'standard' or 'so3', got '{self.model_type}'")
        check_ranges(self, "model.")


@dataclass
class LossConfig:
    kl_warmup_epochs: NonNegative = 10  # β rises linearly from 0 to beta_max over these epochs
    beta_max: NonNegative = 1.0  # KL weight β after the warm-up
    free_bits: NonNegative = 0.0  # nats per latent dimension below which KL is not penalised

    def __post_init__(self) -> None:
        check_ranges(self, "loss.")


@dataclass
class EvalConfig:
    poses: PositiveInt = 5000  # test poses for reconstruction and AUROC
    prior_samples: PositiveInt = 5000  # samples for plausibility
    energy_samples: NonNegativeInt = 0  # K > 0: importance-weighted energy with K samples
    figure_poses: PositiveInt = 2000  # val poses drawn in the figures
    hypothesis_poses: PositiveInt = 2000  # test poses of the hypothesis-selection benchmark (11 hypotheses each)
    hypothesis_iwae_samples: NonNegativeInt = 32  # K > 0: also select with the importance-weighted energy (K samples); 0: skip


def _default_train() -> TrainConfig:
    return TrainConfig(epochs=100, batch_size=8192, optimizer="adam", lr=3e-4, grad_clip=None, eval_every=5,
                       checkpoint_every=10, best_metric="val_loss", best_mode="min", log_every=5)


SOURCE_ALIASES = {
    "model_type": "model.model_type",
    "z_dim": "model.z_dim",
    "hidden": "model.hidden",
    "batch_size": "train.batch_size",
    "learning_rate": "train.lr",
    "kl_warmup_epochs": "loss.kl_warmup_epochs",
    "beta_max": "loss.beta_max",
    "free_bits": "loss.free_bits",
    "max_epochs": "train.epochs",
    "precision": "train.precision",
    "num_workers": "train.num_workers",
    "n_layers": "model.layers",
    "dropout": "model.dropout",
    "weight_decay": "train.weight_decay",
}


@dataclass
class HandVaeConfig:
    aliases = SOURCE_ALIASES
    data: DataConfig = field(default_factory=DataConfig)  # the pose shards
    model: ModelConfig = field(default_factory=ModelConfig)  # the VAE
    loss: LossConfig = field(default_factory=LossConfig)  # KL warm-up and free bits
    train: TrainConfig = field(default_factory=_default_train)  # engine settings (TrainConfig); _default_train unless a YAML has a train: section
    eval: EvalConfig = field(default_factory=EvalConfig)  # reconstruction, plausibility and energy scores


@dataclass
class HandSampleOptions(SampleOptions):
    # a MANO-style .npz of poses: write their energies (lowest = most plausible) instead of sampling
    energy: str | None = None


@dataclass
class HandEvalOptions(EvalOptions):
    limit: PositiveInt | None = None  # poses evaluated (default: eval.poses of the run config)


class HandVaeRecipe(Recipe):
    card = CARD
    config_class = HandVaeConfig
    sample_options = HandSampleOptions
    best_checkpoint_name = "hand_vae_epoch_{epoch:02d}_val_loss_{value:.3f}"
    tensorboard_tags = {"val/val_loss": "val/loss", "val/val_energy_mean": "val/energy_mean"}

    def __init__(self, config: HandVaeConfig):
        super().__init__(config)
        self._steps_per_epoch = 1
        self._input_statistics: tuple[torch.Tensor, torch.Tensor] | None = None

    # --- data / model -------------------------------------------------------------------------------
    def build_datasets(self):
        d = self.config.data
        train = training_split(d.data_dir, ["pose", "family"], streaming=d.streaming, in_memory=d.in_memory, seed=self.config.train.seed)
        val = ShardDataset(d.data_dir, "val", ["pose", "family"], in_memory=True)
        if d.val_limit is not None and len(val) > d.val_limit:
            val = torch.utils.data.Subset(val, range(d.val_limit))
        self._steps_per_epoch = max(1, len(train) // self.config.train.batch_size)
        if self.config.model.architecture == "source":  # its model standardises with the training poses' statistics
            poses = load_split(d.data_dir, "train", ["pose"])["pose"]
            self._input_statistics = (torch.from_numpy(poses.mean(0, dtype=np.float64)).float(),
                                      torch.from_numpy(poses.std(0, dtype=np.float64)).float())
        return train, val

    def build_model(self) -> HandPoseVAE | SourceHandPoseVAE:
        """The configured network; a source network built for training gets the training poses' statistics
        (one loaded from a checkpoint gets them from there)."""
        m = self.config.model
        if m.architecture == "genflow":
            return HandPoseVAE(m.model_type, m.z_dim, m.hidden, m.learn_sigma, m.init_sigma)
        model = SourceHandPoseVAE(m.model_type, m.z_dim, m.hidden, m.layers, m.dropout)
        if self._input_statistics is not None:
            model.set_input_statistics(*self._input_statistics)
        return model

    def beta(self, ctx: StepContext) -> float:
        if ctx.validating:  # the ELBO at the full KL weight, as the source validates: epochs compare
            return self.config.loss.beta_max
        epochs = ctx.step / self._steps_per_epoch  # fractional epochs done
        return kl_weight(epochs, self.config.loss.kl_warmup_epochs, self.config.loss.beta_max)

    def compute_loss(self, model, batch, ctx: StepContext):
        poses = batch["pose"].float()
        noise = ctx.randn(poses.shape[0], self.config.model.z_dim)
        beta = self.beta(ctx)
        terms = model(poses, noise, beta, self.config.loss.free_bits)
        return terms["loss"], {"recon_nll": terms["recon_nll"], "kl": terms["kl"], "beta": beta}  # detached by the model

    # --- evaluation during training ------------------------------------------------------------------
    def _val_poses(self, val_data, limit: int) -> torch.Tensor:
        return torch.stack([val_data[i]["pose"] for i in range(min(limit, len(val_data)))]).float()

    def evaluate(self, model, val_data, device):
        poses = self._val_poses(val_data, self.config.data.val_limit or len(val_data)).to(device)
        energy = model.energy(poses)
        _, errors = model.reconstruct(poses)
        return {"val_energy_mean": float(energy.mean()), "val_recon_deg": float(torch.rad2deg(errors).mean())}

    def save_figures(self, model, val_data, run_dir, device):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = Path(run_dir) / "figures"
        out.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        n = min(self.config.eval.figure_poses, len(val_data))
        items = [val_data[i] for i in range(n)]
        poses = torch.stack([it["pose"] for it in items]).float()
        families = torch.stack([it["family"] for it in items]).numpy()[:, 1]
        paths = {}
        # energy histograms: real vs perturbed
        fig, ax = plt.subplots(figsize=(6, 3.5))
        clean = model.energy(poses.to(device)).cpu().numpy()
        ax.hist(clean, bins=60, alpha=0.6, label="real (val)", density=True)
        for kind in ("noise_0.1", "random_joint", "joint_limits"):
            bad = model.energy(torch.from_numpy(corrupt(poses.numpy(), kind, rng)).float().to(device)).cpu().numpy()
            ax.hist(np.clip(bad, None, np.percentile(bad, 99)), bins=60, alpha=0.4, label=kind, density=True)
        ax.set_xlabel("energy (-ELBO, β = 1)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths["energy_hist"] = out / "energy_hist.png"
        fig.savefig(paths["energy_hist"], dpi=100)
        plt.close(fig)
        # latent scatter (first two principal directions of the posterior means), by grasp family
        mu = model.latent_means(poses.to(device)).cpu().numpy()
        mu = mu - mu.mean(0)
        basis = np.linalg.svd(mu, full_matrices=False)[2][:2].T
        xy = mu @ basis
        fig, ax = plt.subplots(figsize=(5, 4.5))
        names = read_manifest(self.config.data.data_dir).get("attrs", {}).get("families", FAMILIES)  # this generator's families
        for f, name in enumerate(names):
            sel = families == f
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=3, label=name)
        ax.set_title("posterior means (2 principal directions), right-hand family")
        ax.legend(fontsize=7, markerscale=3)
        fig.tight_layout()
        paths["latent_scatter"] = out / "latent_scatter.png"
        fig.savefig(paths["latent_scatter"], dpi=100)
        plt.close(fig)
        # loss components so far
        rows = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
        if rows:
            fig, axes = plt.subplots(1, 3, figsize=(10, 3))
            for ax, key in zip(axes, ("recon_nll", "kl", "beta")):
                ax.plot([r["step"] for r in rows], [r.get(key, np.nan) for r in rows])
                ax.set_title(key)
                ax.set_xlabel("step")
            fig.tight_layout()
            paths["loss_components"] = out / "loss_components.png"
            fig.savefig(paths["loss_components"], dpi=100)
            plt.close(fig)
        paths["beta_sensitivity"] = self.beta_sensitivity(model, poses, out / "beta_sensitivity.png", rng, device)
        return paths

    @torch.no_grad()
    def beta_sensitivity(self, model, poses: torch.Tensor, path: Path, rng, device) -> Path:
        """AUROC (real vs noise 0.1 / random joint) of -(recon + β KL) as β varies: how much the ranking
        depends on the KL weight used in the energy."""
        import matplotlib.pyplot as plt

        def parts(x: torch.Tensor):
            mu, logvar = model.encode(x.to(device))
            recon = model.recon_nll(x.to(device), model.decoder(mu))
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
            return recon.cpu().numpy(), kl.cpu().numpy()

        betas = np.linspace(0, 2, 9)
        clean = parts(poses)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for kind in ("noise_0.1", "random_joint"):
            bad = parts(torch.from_numpy(corrupt(poses.numpy(), kind, rng)).float())
            ax.plot(betas, [auroc(clean[0] + b * clean[1], bad[0] + b * bad[1]) for b in betas], marker="o", label=kind)
        ax.set_xlabel("β in the energy")
        ax.set_ylabel("AUROC")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    # --- after training -------------------------------------------------------------------------------
    def sample(self, model, run_dir, device, options: HandSampleOptions):
        """`energy=poses.npz`: energies of the poses in a MANO-style npz (written next to it as
        <name>_energy.npz, lowest first in the printout); otherwise `n` prior samples + skeleton picture."""
        n, out, seed, energy = options.n, options.out, options.seed, options.energy
        generator = torch.Generator().manual_seed(seed)
        if energy is not None:
            poses = torch.from_numpy(read_hands_npz(energy))
            values = model.energy(poses.to(device), samples=self.config.eval.energy_samples, generator=generator).cpu().numpy()
            target = Path(out) if out else Path(energy).with_name(Path(energy).stem + "_energy.npz")
            np.savez(target, energy=values, ranking=np.argsort(values))
            order = np.argsort(values)
            return {"poses": len(values), "energy_min": float(values.min()), "energy_mean": float(values.mean()),
                    "energy_max": float(values.max()), "best_5": order[:5].tolist(), "written": str(target)}
        poses = model.sample(n, generator).cpu().numpy()
        target = Path(out) if out else Path(run_dir) / "samples" / "hand_samples.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        np.savez(target.with_suffix(".npz"), pose=poses)
        render_skeletons(poses[:16], target)
        inside = inside_limits(poses)
        return {"samples": n, "inside_limits": float(inside.all(1).mean()), "picture": str(target),
                "npz": str(target.with_suffix(".npz"))}

    @evaluation("hands", HandEvalOptions)
    def eval_hands(self, model, run_dir, device, options: HandEvalOptions):
        """Reconstruction error (mean per-joint geodesic, degrees), energy AUROC per corruption, sample
        plausibility (prior samples with all 30 joints inside the limits), for the model and for the
        Gaussian (PCA / Mahalanobis) prior fitted on the same training poses; hypothesis selection
        (:meth:`hypothesis_benchmark`); a skeleton picture; the validation
        reconstruction error by epoch (`eval/recon_vs_epochs.png`: has training converged?)."""
        split, limit, seed = options.split, options.limit, options.seed
        e = self.config.eval
        n = limit or e.poses
        held_out = load_split(self.config.data.data_dir, split, ["pose", "family"])
        test = torch.from_numpy(held_out["pose"][:n]).float()
        train = load_split(self.config.data.data_dir, "train", ["pose"])["pose"]
        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        baseline = GaussianPosePrior(train, components=self.config.model.z_dim)
        result: dict[str, Any] = {"split": split, "test_poses": len(test)}
        recon, _ = model.reconstruct(test.to(device))
        result["model_recon_deg"] = float(per_joint_error_degrees(test, recon.cpu()).mean())
        result["gaussian_recon_deg"] = float(per_joint_error_degrees(test, torch.from_numpy(baseline.reconstruct(test.numpy()))).mean())
        clean_model = model.energy(test.to(device), samples=e.energy_samples, generator=generator).cpu().numpy()
        clean_base = baseline.energy(test.numpy())
        for kind in CORRUPTIONS:
            bad = corrupt(test.numpy(), kind, rng)
            result[f"model_auroc_{kind}"] = auroc(clean_model, model.energy(torch.from_numpy(bad).float().to(device),
                                                                            samples=e.energy_samples, generator=generator).cpu().numpy())
            result[f"gaussian_auroc_{kind}"] = auroc(clean_base, baseline.energy(bad))
        samples = model.sample(e.prior_samples, generator).cpu().numpy()
        result["model_plausible"] = float(inside_limits(samples).all(1).mean())
        result["gaussian_plausible"] = float(inside_limits(baseline.sample(e.prior_samples, rng)).all(1).mean())
        result["data_plausible"] = float(inside_limits(test.numpy()).all(1).mean())
        n_hyp = min(e.hypothesis_poses, limit or e.hypothesis_poses)
        result.update(self.hypothesis_benchmark(model, held_out["pose"][:n_hyp], held_out["family"][:n_hyp], baseline,
                                                device, seed))
        result["seconds"] = round(time.perf_counter() - start, 1)
        picture = Path(run_dir) / "eval" / "hand_samples.png"
        picture.parent.mkdir(parents=True, exist_ok=True)
        render_skeletons(samples[:16], picture)
        result["picture"] = str(picture)
        curve = {int(r["epoch"]): round(float(r["val_recon_deg"]), 3) for r in read_metrics(run_dir)
                 if r["kind"] == "val" and "val_recon_deg" in r}
        result["val_recon_deg_by_epoch"] = curve
        if curve:
            result["learning_curve"] = str(plot_learning_curve(curve, result["gaussian_recon_deg"], split,
                                                               Path(run_dir) / "eval" / "recon_vs_epochs.png"))
        return result

    @torch.no_grad()
    def hypothesis_benchmark(self, model, poses: np.ndarray, families: np.ndarray, baseline: GaussianPosePrior, device,
                             seed: int) -> dict[str, Any]:
        """Hypothesis selection on held-out poses (N, 90) (families (N, 2)): K hypotheses per pose
        (`make_hypotheses`), each prior keeps its lowest-energy one, in three settings (`HYPOTHESIS_SETTINGS`):
        ``all`` (every kind), ``local`` (the truth, estimator errors and impossible poses: what a prior
        can judge; the swapped hands and the other family are real poses) and ``est`` (``local`` without
        the truth: an estimator never outputs it). Keys ``hyp_<setting>_<who>_top1`` / ``_picked_deg``
        (who: model = -ELBO, model_iwae = -log IWAE, gaussian, uniform = the expected random pick),
        ``hyp_<setting>_oracle_deg``, and ``hyp_all_<model|gaussian>_pick_<kind>`` (share of picks per kind)."""
        start = time.perf_counter()
        e = self.config.eval
        rng = np.random.default_rng([seed, 1])  # its own streams: the other figures do not move with this benchmark
        generator = torch.Generator().manual_seed(seed + 1)
        hypotheses, kinds = make_hypotheses(poses, families, rng)
        n, k = hypotheses.shape[:2]
        flat = torch.from_numpy(hypotheses.reshape(n * k, -1)).float()
        errors = hypothesis_errors(poses, hypotheses)

        def model_energy(samples: int) -> np.ndarray:
            chunks = [model.energy(flat[i : i + _ENERGY_BATCH].to(device), samples=samples, generator=generator).cpu()
                      for i in range(0, len(flat), _ENERGY_BATCH)]
            return torch.cat(chunks).double().numpy().reshape(n, k)

        energies = {"model": model_energy(0)}
        if e.hypothesis_iwae_samples > 0:
            energies["model_iwae"] = model_energy(e.hypothesis_iwae_samples)
        energies["gaussian"] = baseline.energy(flat.numpy()).reshape(n, k)
        energies["uniform"] = np.zeros((n, k))
        result: dict[str, Any] = {"hyp_poses": n, "hyp_hypotheses": k}
        for setting, keep in HYPOTHESIS_SETTINGS.items():
            columns = [i for i, kind in enumerate(kinds) if kind in keep]
            for who, energy in energies.items():
                scores = select_hypotheses(energy[:, columns], errors[:, columns], [kinds[i] for i in columns])
                result[f"hyp_{setting}_{who}_top1"], result[f"hyp_{setting}_{who}_picked_deg"] = scores["top1"], scores["picked_deg"]
                result[f"hyp_{setting}_oracle_deg"] = scores["oracle_deg"]
                if setting == "all" and who in ("model", "gaussian"):
                    result.update({f"hyp_all_{who}_{key}": value for key, value in scores.items() if key.startswith("pick_")})
        result["hyp_seconds"] = round(time.perf_counter() - start, 1)
        return result


def plot_learning_curve(curve: dict[int, float], gaussian_deg: float, split: str, path: Path) -> Path:
    """Validation reconstruction error by epoch (has the model converged?) against the Gaussian prior's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(list(curve), list(curve.values()), marker="o", ms=3, label="VAE (val)")
    ax.axhline(gaussian_deg, color="k", ls="--", lw=1, label=f"Gaussian prior ({split})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("reconstruction error, mean per joint (°)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render_skeletons(poses: np.ndarray, path: Path) -> None:
    """Both hands of each pose, forward kinematics of a simple skeleton, seen from the palm side (x-y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = max(1, int(np.ceil(len(poses) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 1.6))
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    for ax, pose in zip(np.atleast_1d(axes).flat, poses):
        for hand in (0, 1):  # left hand drawn mirrored on the left, right hand on the right
            points = hand_joint_positions(pose[hand * 45 : (hand + 1) * 45], left=hand == 0)
            side = -1 if hand == 0 else 1
            for f in range(5):
                chain = np.vstack([[0, 0, 0], points[f]])
                ax.plot(side * (chain[:, 0] + 0.02), chain[:, 1], color=colours[f], lw=1.2, marker="o", ms=1.5)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(np.atleast_1d(axes).flat)[len(poses):]:
        ax.axis("off")
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=100)
    plt.close(fig)
