"""dtm / dtm-lunar: Denoising Thermodynamic Models, natively in PyTorch (CPU and GPU, one engine).

A chain of T conditional Ising models on sparse torus graphs, trained by block Gibbs sampling
(:mod:`genflow.ising.dtm`, :mod:`genflow.ising.gibbs`). ``dtm`` trains on labelled image
shards (`genflow data make-mnist-images`: binarised MNIST by default, Fashion-MNIST with
``--fashion``); ``dtm-lunar`` (:mod:`genflow_recipes.dtm.lunar`) trains from an endless stream of
LunarLander-v3 frames rendered in background workers, with no dataset on disk, and
``train_from_iterator`` there trains on any Python iterable of images.

The reference's option names work as config keys (``graph_preset_architecture``, ``grayscale_levels``,
``num_label_spots``, ``steps_warmup``, ``n_samples``, ``steps_per_sample``, ``step_learning_rates``,
``num_diffusion_steps``, ...; see SOURCE_ALIASES).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from genflow.config import NonNegative, NonNegativeInt, Positive, PositiveInt, Probability, Range, check_ranges
from genflow.engine import EvalOptions, Recipe, SampleOptions, StepContext, TrainConfig, evaluation
from genflow.data import ShardDataset, load_split
from genflow.threads import ThreadBudget
from genflow.errors import ConfigError, GenflowError
from genflow.metrics.frechet import accuracy
from genflow.ising.graph import parse_preset
from genflow.ising.dtm import DenoisingThermodynamicModel, autocorrelation_1d, flip_probability, perturb_levels
from genflow.ising.gibbs import SamplingSchedule
from genflow_recipes.dtm.card import CARD
from genflow_recipes.dtm.fd import FrechetScorer, image_levels

__all__ = ["DtmRecipe", "DtmConfig", "DtmEvalOptions", "image_levels"]


# --- configs ----------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    data_dir: str = "datasets/mnist-images"  # genflow data make-mnist-images [--fashion]
    classes: list[int] | None = None  # train on these classes only (reference: target_classes); null = all
    conditional: bool = True  # label nodes hold the class; false: one dummy class (unconditioned)
    threshold: Annotated[float, Range(ge=0, lt=1)] = 0.5  # grayscale_levels 1: pixel on iff value / 255 > threshold (reference: pixel_threshold_for_single_trials)
    train_images: PositiveInt | None = None  # use the first N training images (null = all)
    val_images: PositiveInt = 128  # validation images (held out of train): validation loss, autocorrelation
    resolution: PositiveInt = 32  # dtm-lunar: frame side in pixels (frames are resolution x resolution RGB)
    image_shape: Annotated[list[int], Range(ge=1)] | None = None  # streams: shape of one image (dtm-lunar: resolution x resolution x 3)
    frame_skip: PositiveInt = 2  # dtm-lunar: render every k-th environment step
    random_action_prob: Probability = 0.3  # dtm-lunar: probability of a random action, else gymnasium's heuristic pilot

    def __post_init__(self) -> None:
        check_ranges(self, "data.")


@dataclass
class ModelConfig:
    graph: str | int = "44_12"  # SIDE_DEGREE torus preset, e.g. 80_12 (reference: graph_preset_architecture, also 8012)
    grayscale_levels: PositiveInt = 1  # spins per pixel (thermometer code); 1 = binary
    num_label_spots: PositiveInt = 10  # copies of the one-hot label among the visible nodes
    num_steps: PositiveInt = 4  # denoising steps T, each its own Ising model
    time_grid: str = "log"  # log: t_k = -ln(1 - k/T) (last step unconditional); linear: t_k = k/T
    time_offset: Annotated[float, Range(ge=0, lt=1)] = 0.15  # training pairs at t_s (1 - offset), t_e (1 + offset) (reference: diffusion_offset)
    image_rate: Positive = 0.9  # noise rate of image spins: re-drawn at random over dt with probability 1 - exp(-rate dt)
    label_rate: Positive = 0.2  # noise rate of label spins (as image_rate)
    graph_seed: NonNegativeInt = 0  # step k places its visible nodes with seed graph_seed + k
    # visible nodes on colour-0 sites: random (a random permutation: neighbouring pixels rarely share a latent),
    # reference (the reference code's layout: random sites, handed to pixels in grid order) or image (each
    # pixel at its scaled image position: neighbouring pixels share latents)
    placement: Literal["random", "reference", "image"] = "random"
    compile: bool = True  # torch.compile the Gibbs updates (needs a C++ compiler on CPU; false = eager)
    # Gibbs sampler threads: null = the cores other processes leave free, re-checked every second (two
    # spinning threads on a shared core run several times slower than one); N = always N
    threads: PositiveInt | None = None

    def __post_init__(self) -> None:
        side, degree = parse_preset(self.graph)
        self.graph = f"{side}_{degree}"
        check_ranges(self, "model.")


@dataclass
class SamplingConfig:
    """Training chains: warm-up sweeps, then n_samples samples every steps_per_sample sweeps."""

    steps_warmup: NonNegativeInt = 40  # sweeps before the first sample; a phase costs steps_warmup + (n_samples - 1) x steps_per_sample
    n_samples: PositiveInt = 10  # samples per chain for the moment estimates
    steps_per_sample: PositiveInt = 4  # sweeps between samples
    training_beta: Positive = 1.0  # inverse temperature β of the training chains
    persistent_warmup: NonNegativeInt | None = None  # unconditional step: negative chains persist across batches (PCD), this many warm-up sweeps; null = fresh chains

    def __post_init__(self) -> None:
        check_ranges(self, "sampling.")


@dataclass
class GenerationConfig:
    sweeps: PositiveInt = 100  # per denoising step (reference: generation steps_warmup)
    beta_start: NonNegative = 0.8  # β at a step's first sweep, annealed linearly to beta_end
    beta_end: Positive = 1.2  # β at a step's last sweep (chains start from the biases at beta_end)
    num_images: PositiveInt = 100  # figure grid after each evaluation


@dataclass
class OptimConfig:
    step_learning_rates: Annotated[list[float], Range(gt=0)] | None = None  # per denoising step (last repeated); null = train.lr for all
    bias_decay: NonNegative = 0.0  # decoupled decay of biases (couplings use train.weight_decay); input couplings: never


@dataclass
class CorrelationPenaltyConfig:
    """λ_cp per step (last repeated), adapted after each evaluation from the autocorrelation of free chains.

    The statistic: for each of `images` held-out images noised to a step's input time, `chains` free
    chains run steps_warmup // 2 sweeps, then `samples` states are recorded every 4 sweeps; the image
    part is projected on 32 random directions and the mean of the last 1/16 of the lags of its
    autocorrelation is kept. The reference measures it with 64 images, 16 chains and generation.sweeps
    samples (lags up to 2 x generation.sweeps sweeps) on chains annealed like generation (`beta:
    generation`); the defaults here are a cheaper version of the same rule.
    """

    initial: Annotated[list[float], Range(ge=0)] = field(default_factory=lambda: [0.0])  # λ_cp per denoising step at the start (last repeated)
    adaptive: bool = False  # adapt λ_cp once per evaluation from the chains' autocorrelation (reference iterator training: off)
    minimum: NonNegative = 0.001  # below this the penalty is switched off
    threshold: Positive = 0.016  # target autocorrelation
    chains: PositiveInt = 16  # per held-out image
    images: PositiveInt = 2  # held-out images (reference: 64 // n_cores reps)
    samples: PositiveInt | None = 40  # recorded states per chain, every 4 sweeps after steps_warmup // 2; null = generation.sweeps (reference)
    # inverse temperature of the chains: training (sampling.training_beta throughout) or generation (annealed
    # generation.beta_start -> beta_end over generation.sweeps sweeps, then held at beta_end: the reference)
    beta: Literal["training", "generation"] = "training"

    def __post_init__(self) -> None:
        check_ranges(self, "correlation_penalty.")
        if not self.initial:
            raise ConfigError("config key 'correlation_penalty.initial': expected a non-empty list of values >= 0")


@dataclass
class EvalConfig:
    num_images: PositiveInt = 1000  # generated images for the Fréchet distance
    fd_every_eval: bool = True  # val_fd (free generation) at every evaluation; needs labelled shards
    classifier_epochs: PositiveInt = 2  # training epochs of the feature classifier behind the Fréchet distance


def _default_train() -> TrainConfig:
    return TrainConfig(epochs=2, batch_size=64, optimizer="adamw", lr=0.022, lr_schedule="cosine", min_lr=0.0044,
                       grad_clip=None, eval_every=1, checkpoint_every=1, checkpoint_every_steps=50,
                       best_metric="val_fd", log_every=10)


SOURCE_ALIASES = {
    "graph_preset_architecture": "model.graph",
    "grayscale_levels": "model.grayscale_levels",
    "num_label_spots": "model.num_label_spots",
    "num_diffusion_steps": "model.num_steps",
    "diffusion_offset": "model.time_offset",
    "image_rate": "model.image_rate",
    "label_rate": "model.label_rate",
    "steps_warmup": "sampling.steps_warmup",
    "n_samples": "sampling.n_samples",
    "steps_per_sample": "sampling.steps_per_sample",
    "training_beta": "sampling.training_beta",
    "step_learning_rates": "optim.step_learning_rates",
    "batch_size": "train.batch_size",
    "n_epochs": "train.epochs",
    "batches_per_epoch": "train.batches_per_epoch",
    "target_classes": "data.classes",
    "pixel_threshold_for_single_trials": "data.threshold",
}


@dataclass
class DtmConfig:
    aliases = SOURCE_ALIASES
    data: DataConfig = field(default_factory=DataConfig)  # the images (dtm-lunar: the frame stream) and their binarisation
    model: ModelConfig = field(default_factory=ModelConfig)  # the graph and the denoising steps
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # the training chains
    generation: GenerationConfig = field(default_factory=GenerationConfig)  # free generation (figures, val_fd)
    optim: OptimConfig = field(default_factory=OptimConfig)  # per-step learning rates and bias decay, on top of train.*
    correlation_penalty: CorrelationPenaltyConfig = field(default_factory=CorrelationPenaltyConfig)  # λ_cp and its controller
    train: TrainConfig = field(default_factory=_default_train)  # engine settings (TrainConfig); _default_train unless a YAML has a train: section
    eval: EvalConfig = field(default_factory=EvalConfig)  # the Fréchet distance at each evaluation


def _per_step(values: list[float] | None, steps: int, default: float) -> list[float]:
    values = list(values) if values else [default]
    return (values + [values[-1]] * steps)[:steps]


class _Images(Dataset):
    """In-memory {"image", "label"} samples."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "label": self.labels[i]}


# --- the recipe --------------------------------------------------------------------------------------
@dataclass
class DtmSampleOptions(SampleOptions):
    n: PositiveInt = 64  # how many images
    steps: PositiveInt | None = None  # Gibbs sweeps per denoising step (default: generation.sweeps of the run config)
    unconditional: bool = False  # free generation even when the model is label-conditioned


@dataclass
class DtmEvalOptions(EvalOptions):
    # images generated (default: eval.num_images of the run config)
    limit: PositiveInt | None = None
    steps: PositiveInt | None = None  # Gibbs sweeps per denoising step (default: generation.sweeps of the run config)


class DtmRecipe(Recipe):
    card = CARD
    config_class = DtmConfig
    sample_options = DtmSampleOptions
    best_checkpoint_name = "epoch{epoch:03d}-{metric}{value:.3f}"

    def __init__(self, config: DtmConfig):
        super().__init__(config)
        if config.train.ema_decay:
            raise ConfigError("config key 'train.ema_decay': DTM training keeps no EMA (the correlation penalty "
                              "controller adapts the trained model); set it to null")
        self._class_map: torch.Tensor | None = None
        self._fd: FrechetScorer | None = None

    # --- data -----------------------------------------------------------------------------------------
    def image_shape(self) -> tuple[int, ...]:
        return tuple(ShardDataset(self.config.data.data_dir, "train", ["image"]).field_shape("image"))

    def num_classes(self) -> int:
        d = self.config.data
        if not d.conditional:
            return 1
        return len(d.classes) if d.classes else 10

    def _split(self, split: str, limit: int | None) -> Dataset:
        d = self.config.data
        data = ShardDataset(d.data_dir, split, ["image", "label"], in_memory=True)
        labels = torch.as_tensor(load_split(d.data_dir, split, ["label"])["label"])
        keep = torch.arange(len(labels))
        if d.classes:
            if any(c < 0 or c > int(labels.max()) for c in d.classes):
                raise ConfigError(f"config key 'data.classes': {d.classes} not among the labels 0..{int(labels.max())} of {d.data_dir}")
            keep = torch.nonzero(torch.isin(labels, torch.tensor(d.classes))).flatten()
        if limit is not None:
            keep = keep[:limit]
        return Subset(data, keep.tolist())

    def build_datasets(self):
        d = self.config.data
        return self._split("train", d.train_images), self._split("val", d.val_images)

    def model_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Dataset labels -> model classes 0..C-1 (selected classes renumbered; 0 if unconditioned)."""
        d = self.config.data
        if not d.conditional:
            return torch.zeros_like(labels)
        if d.classes:
            if self._class_map is None:
                self._class_map = torch.full((max(d.classes) + 1,), -1, dtype=torch.long)
                self._class_map[torch.tensor(d.classes)] = torch.arange(len(d.classes))
            return self._class_map.to(labels.device)[labels.long()]
        return labels.long()

    # --- model ----------------------------------------------------------------------------------------
    def build_model(self) -> DenoisingThermodynamicModel:
        m = self.config.model
        pixels = int(np.prod(self.image_shape()))
        return DenoisingThermodynamicModel(
            graph=m.graph, num_pixels=pixels, grayscale_levels=m.grayscale_levels, num_classes=self.num_classes(),
            num_label_spots=m.num_label_spots, num_steps=m.num_steps, time_grid_kind=m.time_grid, time_offset=m.time_offset,
            image_rate=m.image_rate, label_rate=m.label_rate, seed=m.graph_seed, compile=m.compile,
            threads=ThreadBudget(m.threads),
            correlation_penalty=_per_step(self.config.correlation_penalty.initial, m.num_steps, 0.0),
            placement=m.placement, image_shape=self.image_shape())

    def parameter_groups(self, model):
        """One group per denoising step and kind: couplings (train.weight_decay) and biases (optim.bias_decay),
        each step at its own learning rate (optim.step_learning_rates)."""
        steps = model.steps
        lrs = _per_step(self.config.optim.step_learning_rates, len(steps), self.config.train.lr)
        groups = []
        for step, lr in zip(steps, lrs):
            groups.append({"params": [step.weight], "lr": lr, "weight_decay": self.config.train.weight_decay})
            groups.append({"params": [step.bias0, step.bias1], "lr": lr, "weight_decay": self.config.optim.bias_decay})
        return groups

    def schedule(self) -> SamplingSchedule:
        s = self.config.sampling
        return SamplingSchedule(s.steps_warmup, s.n_samples, s.steps_per_sample)

    def compute_loss(self, model, batch, ctx: StepContext):
        m = self.config.model
        levels = image_levels(batch["image"], m.grayscale_levels, self.config.data.threshold)
        labels = self.model_labels(batch["label"])
        keys = torch.randint(0, 2**32, (m.num_steps, 2, 2), generator=ctx.generator)
        keys[..., 1] = (keys[..., 1] + ctx.rank * 0x9E3779B9) % 2**32  # each process its own chains
        b = levels.shape[0]

        def uniform(shape):
            return ctx.rand(b, *shape[1:]) if shape[0] == b else torch.rand(shape, generator=ctx.generator).to(ctx.device)

        s = self.config.sampling
        persistent = None if s.persistent_warmup is None else SamplingSchedule(s.persistent_warmup, s.n_samples, s.steps_per_sample)
        loss, metrics = model(levels, labels, self.schedule(), keys.to(ctx.device), uniform, s.training_beta, persistent)
        return loss, {**metrics, "threads": torch.get_num_threads()}  # the sampler's ThreadBudget may change it

    # --- generation -------------------------------------------------------------------------------------
    def generate(self, model, n: int, *, seed: int = 0, labels: torch.Tensor | None = None, sweeps: int | None = None,
                 batch_size: int = 500) -> dict[str, torch.Tensor]:
        """`n` images as levels (n, pixels) and label votes; `labels` (n,) clamps the classes."""
        g = self.config.generation
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(seed)

        def key_source():
            return torch.randint(0, 2**32, (2,), generator=generator).to(device)

        def uniform(shape):
            return torch.rand(shape, generator=generator).to(device)

        out: dict[str, list[torch.Tensor]] = {"levels": [], "label_votes": []}
        for start in range(0, n, batch_size):
            size = min(batch_size, n - start)
            part = None if labels is None else labels[start : start + size]
            result = model.generate(size, sweeps or g.sweeps, key_source, g.beta_start, g.beta_end, labels=part,
                                    uniform=uniform, device=device)
            for k in out:
                out[k].append(result[k].cpu())
        return {k: torch.cat(v) for k, v in out.items()}

    def to_images(self, levels: torch.Tensor) -> np.ndarray:
        """Levels (n, pixels) -> float images (n, H, W[, C]) in [0, 1]."""
        return (levels.float() / self.config.model.grayscale_levels).reshape(-1, *self.image_shape()).numpy()

    # --- diagnostics ------------------------------------------------------------------------------------
    @torch.no_grad()
    def autocorrelation(self, model, val_data: Dataset, seed: int = 0) -> list[float]:
        """Per step: the reference's autocorrelation statistic of free chains (see CorrelationPenaltyConfig).

        For each of `images` held-out images noised to the step's input time, `chains` chains run
        steps_warmup // 2 sweeps, then `samples` states are recorded every 4 sweeps, at the training β
        or annealed as generation (`beta`); the image part is projected on 32 random directions, the
        autocorrelation of each projection computed over time and averaged over directions and images;
        the statistic is max(0, mean of its last 1/16 lags).
        """
        cp, m, g = self.config.correlation_penalty, self.config.model, self.config.generation
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        pixels = model.num_pixels
        projection = (torch.rand(pixels, 32, generator=generator) * 2 - 1) / math.sqrt(pixels)
        picks = torch.randperm(len(val_data), generator=generator)[: cp.images].tolist()
        batch = [val_data[i] for i in picks]
        levels0 = image_levels(torch.stack([b["image"] for b in batch]), m.grayscale_levels, self.config.data.threshold)
        labels0 = model.label_bits(self.model_labels(torch.stack([b["label"] for b in batch])))
        images = len(picks)
        levels0 = levels0.repeat_interleave(cp.chains, 0).to(device)
        labels0 = labels0.repeat_interleave(cp.chains, 0).to(device)
        uniform = lambda shape: torch.rand(shape, generator=generator).to(device)  # noqa: E731
        key = lambda: torch.randint(0, 2**32, (2,), generator=generator).to(device)  # noqa: E731
        samples, warmup = cp.samples or g.sweeps, self.config.sampling.steps_warmup // 2
        total = warmup + 4 * samples
        if cp.beta == "generation":  # annealed over the first generation.sweeps sweeps, then held
            betas = np.concatenate([np.linspace(g.beta_start, g.beta_end, g.sweeps), np.full(max(0, total - g.sweeps), g.beta_end)])
            start_beta = g.beta_end
        else:
            betas, start_beta = np.full(total, self.config.sampling.training_beta), self.config.sampling.training_beta
        betas = betas[:total].tolist()
        result = []
        for k in range(model.num_steps):
            t_e = model.times[k + 1] * (1 + model.time_offset)
            x = perturb_levels(levels0, model.levels, flip_probability(model.image_rate, t_e), uniform)
            lab = perturb_levels(labels0, 1, flip_probability(model.label_rate, t_e), uniform)
            step = model.steps[k]
            inputs = model.encode(x, lab)
            biases = (step.colour0_bias(inputs), step.bias1)
            weights = (step.weight, model.graph.colour_one_weights(step.weight))
            state = model.sampler.chains(inputs.shape[0], biases, start_beta, key(), device=device)
            if warmup:
                model.sampler.run(state, weights, biases, SamplingSchedule(warmup, 1, 1), key(), beta=betas[:warmup], collect=False)
            trace = []
            for i in range(samples):
                start = warmup + 4 * i
                model.sampler.run(state, weights, biases, SamplingSchedule(4, 1, 1), key(), beta=betas[start:start + 4], collect=False)
                image = model.decode(step.read_visible(state))[0].float() / model.levels
                trace.append(image.cpu() @ projection)
            trace = torch.stack(trace, 1)  # (images x chains, time, 32)
            per_image = trace.unflatten(0, (images, cp.chains)).permute(0, 3, 1, 2)  # (images, 32, chains, time)
            curve = autocorrelation_1d(per_image).mean((0, 1))
            tail = curve[-max(1, len(curve) // 16):]
            result.append(max(0.0, float(tail.mean())))
        return result

    def adapt_penalty(self, model, autocorr: list[float]) -> None:
        """The reference controller (once per evaluation, per step) from this and the previous statistic."""
        cp = self.config.correlation_penalty
        # before the first measurement: the statistic of the zero-initialised model, whose spins are independent
        # from sweep to sweep (0), as the reference measures it before epoch 1 and adapts from epoch 1 on
        previous = [0.0 if math.isnan(v) else v for v in model.autocorrelation.tolist()]
        for k, ac in enumerate(autocorr):
            value = float(model.correlation_penalty[k])
            if cp.adaptive:
                value = max(value, cp.minimum)
                if ac < cp.threshold:
                    value *= 0.6 + 0.2 * ac / cp.threshold
                elif ac > previous[k]:
                    value *= 1.2 if ac < 1.8 * cp.threshold else 1.5
                else:
                    value *= 0.95
                if value < cp.minimum:
                    value = 0.0
            model.correlation_penalty[k] = value
            model.autocorrelation[k] = ac

    # --- Fréchet distance -------------------------------------------------------------------------------
    @property
    def fd(self) -> FrechetScorer:
        """The Fréchet-distance scorer of this run's dataset and representation (its classifier is cached)."""
        if self._fd is None:
            d, m = self.config.data, self.config.model
            self._fd = FrechetScorer(d.data_dir, levels=m.grayscale_levels, threshold=d.threshold, classes=d.classes,
                                     classifier_epochs=self.config.eval.classifier_epochs, to_images=self.to_images)
        return self._fd

    # --- engine hooks -------------------------------------------------------------------------------------
    def evaluate(self, model, val_data, device):
        autocorr = self.autocorrelation(model, val_data)
        self.adapt_penalty(model, autocorr)
        metrics = {f"autocorr_step{k}": v for k, v in enumerate(autocorr)}
        metrics.update({f"cp_step{k}": float(v) for k, v in enumerate(model.correlation_penalty)})
        if self.config.eval.fd_every_eval and self.config.data.conditional:  # the classifier needs labels
            generated = self.generate(model, self.config.eval.num_images, seed=0)
            metrics["val_fd"] = self.fd.frechet(generated["levels"])
        return metrics

    def save_figures(self, model, val_data, run_dir, device):
        path = Path(run_dir) / "samples.png"
        self.sample_grid(model, path, seed=0)
        return {"samples": path}

    def sample_grid(self, model, path: Path, seed: int = 0, sweeps: int | None = None) -> dict[str, Any]:
        """Free samples (top half) and label-clamped samples (one row per class, bottom half)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        classes = self.num_classes()
        cols = 10
        free = self.generate(model, 2 * cols, seed=seed, sweeps=sweeps)
        rows = [self.to_images(free["levels"])]
        titles = ["free"] * 2
        if self.config.data.conditional:
            labels = torch.arange(classes).repeat_interleave(cols)
            clamped = self.generate(model, len(labels), seed=seed + 1, labels=labels, sweeps=sweeps)
            rows.append(self.to_images(clamped["levels"]))
            titles += [f"class {c}" for c in (self.config.data.classes or range(classes))]
        images = np.concatenate(rows)
        n_rows = len(images) // cols
        fig, axes = plt.subplots(n_rows, cols, figsize=(cols * 0.9, n_rows * 0.95))
        for i, ax in enumerate(np.atleast_2d(axes).flat):
            ax.imshow(images[i], cmap="gray" if images[i].ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i % cols == 0:
                ax.set_ylabel(titles[i // cols], fontsize=6)
        fig.tight_layout(pad=0.2)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return {"grid": str(path)}

    def sample(self, model, run_dir, device, options: DtmSampleOptions):
        """`n` images (label-clamped round-robin over classes unless `unconditional`): `samples.npz`
        (images in [0, 1], labels; -1 = free) and a grid picture. `out`: a .png path (npz alongside)
        or a directory (default RUN/samples/)."""
        n, steps, seed, out, unconditional = options.n, options.steps, options.seed, options.out, options.unconditional
        out_path = Path(out) if out else Path(run_dir) / "samples"
        grid_path, npz_path = ((out_path, out_path.with_suffix(".npz")) if out_path.suffix == ".png"
                               else (out_path / "grid.png", out_path / "samples.npz"))
        npz_path.parent.mkdir(parents=True, exist_ok=True)
        labels = None
        if self.config.data.conditional and not unconditional:
            labels = torch.arange(n) % self.num_classes()
        start = time.perf_counter()
        result = self.generate(model, n, seed=seed, labels=labels, sweeps=steps)
        seconds = time.perf_counter() - start
        images = self.to_images(result["levels"])
        classes = torch.tensor(self.config.data.classes)[labels] if labels is not None and self.config.data.classes else labels
        np.savez_compressed(npz_path, images=images, labels=-np.ones(n, dtype=np.int64) if classes is None else classes.numpy())
        grid = self.sample_grid(model, grid_path, seed=seed, sweeps=steps)
        return {"images": n, "npz": str(npz_path), **grid, "seconds": round(seconds, 2)}

    @evaluation("dtm", DtmEvalOptions)
    def eval_dtm(self, model, run_dir, device, options: DtmEvalOptions):
        """Fréchet distance (free and label-clamped generation) vs the floor (real `split` images) and noise
        ceiling, the accuracy of the classifier on label-clamped samples, per-step autocorrelation, and
        sample grids."""
        split, limit, steps, seed = options.split, options.limit, options.steps, options.seed
        if split == "train":
            raise GenflowError("eval dtm split=train: the Fréchet distances are measured against the training "
                               "images; the floor needs held-out images (split=test or val)")
        n = limit or self.config.eval.num_images
        result: dict[str, Any] = {"split": split, "images": n, "sweeps": steps or self.config.generation.sweeps}
        start = time.perf_counter()
        free = self.generate(model, n, seed=seed, sweeps=steps)
        result["seconds_per_image"] = round((time.perf_counter() - start) / n, 5)
        if self.config.data.conditional:
            classifier = self.fd.classifier()
            real = self.fd.real_images(split)
            result[f"classifier_{split}_accuracy"] = round(accuracy(classifier, real["input"], real["label"]), 4)
            result["fd_free"] = self.fd.frechet(free["levels"])
            labels = torch.arange(n) % self.num_classes()
            clamped = self.generate(model, n, seed=seed + 1, labels=labels, sweeps=steps)
            result["fd_clamped"] = self.fd.frechet(clamped["levels"])
            logits = classifier(torch.from_numpy(self.fd.classifier_input(clamped["levels"])))
            wanted = torch.tensor(self.config.data.classes)[labels] if self.config.data.classes else labels
            hits = (logits.argmax(1) == wanted).float()
            result["clamped_label_accuracy"] = float(hits.mean())
            per_class = [float(hits[labels == c].mean()) if (labels == c).any() else None for c in range(self.num_classes())]
            result["clamped_accuracy_per_class"] = [None if v is None else round(v, 4) for v in per_class]  # None: no sample
            result["clamped_accuracy_worst_class"] = min(v for v in per_class if v is not None)
            result.update(self.fd.reference(n, seed=seed, split=split))
        _, val = self.build_datasets()
        for k, v in enumerate(self.autocorrelation(model, val, seed)):
            result[f"autocorr_step{k}"] = v
        result.update(self.sample_grid(model, Path(run_dir) / "eval" / "dtm_samples.png", seed=seed, sweeps=steps))
        return result
