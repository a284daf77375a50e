"""mmnist-wm: an action-conditioned world model of Moving MNIST by masked discrete diffusion.

A small-scale CoPilot4D (Zhang et al., ICLR 2024). Frames are 32 x 32 tokens of 16 grey levels
(`genflow data make-moving-mnist`); each frame carries the ego-centric action ``[dx, dy]`` of one
tracked digit. A :class:`~genflow_recipes.mmnist_wm.model.SimpleVideoTransformer` predicts every
token's level from a partly masked video; it is trained by cross-entropy on masked-token tasks
(:mod:`genflow.objectives.masked_tokens`) and generates the future by MaskGIT decoding
(:mod:`genflow.samplers.maskgit`), optionally with classifier-free guidance between the causal
(conditional) and identity (unconditional) temporal masks. Next to MaskGIT it reports the expected
intensity of every future token (the MSE-optimal prediction under the model).

Configs: ``mmnist_wm.yaml`` is the CPU default (4 x 4 patch tokens, batch 16, designed for 2 cores);
``mmnist_wm_fast.yaml`` is copilot4D's fast script exactly (D 128, 2 layers, a position per token, its tied
18-class head; 663,168 parameters) and
``mmnist_wm_full.yaml`` its "full" one (D 384, 6 layers, tasks mixed 50/40/10, guidance possible),
the GPU configs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from genflow.config import NonNegative, NonNegativeInt, Positive, PositiveInt, Probability, Range, check_ranges
from genflow.engine import EvalOptions, Recipe, SampleOptions, StepContext, TrainConfig, autocast_dtype, evaluation
from genflow.data import ShardDataset, first_samples, load_split, read_manifest, training_split
from genflow_recipes.mmnist_wm.world import MASK_TOKEN, NUM_LEVELS, PREPROCESSING, dequantise
from genflow.errors import ConfigError, GenflowError
from genflow_recipes.mmnist_wm.metrics import (
    all_black_prediction,
    shifted_last_frame_prediction,
    copy_last_prediction,
    frame_mse,
    frame_psnr,
    frame_ssim,
    global_ssim,
    ink_counts,
    ink_recall_precision,
    pixel_mse,
    upsample_frames,
)
from genflow_recipes.mmnist_wm.model import SimpleVideoTransformer
from genflow.objectives.masked_tokens import MaskedTokenObjective
from genflow.samplers.maskgit import GREEDY_LEVELS, maskgit_decode
from genflow_recipes.mmnist_wm.patch_head import maskgit_decode_patches
from genflow_recipes.mmnist_wm.card import CARD

__all__ = ["ACTION_CHOICES", "MovingMnistWorldModelRecipe", "ablated_actions"]

ACTION_CHOICES = ("true", "shuffled", "zero")
DECODING_ORDERS = ("joint", "autoregressive")
BASELINES = ("copy_last", "constant_velocity", "action_shift", "all_black")
PREDICTORS = ("model", "model_expected", *BASELINES)


class Prediction(NamedTuple):
    tokens: torch.Tensor  # (N, T, H, W) given + generated levels
    expected: torch.Tensor | None  # (N, T - num_past, H, W) expected intensity in [0, 1] of the future frames


def ablated_actions(actions: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """The actions ``(N, T, 2)`` the model gets in the action ablation: ``true`` (unchanged),
    ``shuffled`` (each sequence gets another one's, a seeded derangement) or ``zero``."""
    if kind == "true":
        return actions
    if kind == "zero":
        return np.zeros_like(actions)
    if kind != "shuffled":
        raise GenflowError(f"actions={kind!r}: expected one of {', '.join(ACTION_CHOICES)}")
    n = len(actions)
    if n < 2:
        raise GenflowError("actions=shuffled needs at least 2 sequences (see limit=)")
    # a random rotation of a random order: no sequence keeps its own actions
    order = np.random.default_rng(seed + 1).permutation(n)
    derangement = np.empty(n, dtype=np.int64)
    derangement[order] = np.roll(order, 1)
    return actions[derangement]


# --- configs ----------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    data_dir: str = "datasets/mmnist"  # genflow data make-moving-mnist | import-moving-mnist
    # the token preprocessing the shards must have been made with (area | copilot4d, `genflow data make moving-mnist
    # preprocessing=...`); null: any. A model trained on one sees other tokens under the other.
    preprocessing: str | None = None
    num_past: PositiveInt = 10  # clean context frames (the other num_frames - num_past are predicted)
    train_sequences: PositiveInt | None = None  # use only the first N training sequences (source: 2000 fast, 8000 full)
    val_sequences: PositiveInt = 32  # validation loss and quick metrics on the first N val sequences
    in_memory: bool = True  # load the shards into memory (false: read them from disk)
    # read the train split as a stream (StreamingShardDataset: each process x worker its own shards, a new shuffle
    # each epoch, exact resume, flat memory for data larger than RAM) instead of a map-style ShardDataset
    streaming: bool = False

    def __post_init__(self) -> None:
        check_ranges(self, "data.")


@dataclass
class ModelConfig:
    """SimpleVideoTransformer; copilot4D's ``fast``: 128 / 2 layers / 4 heads (663,168 with its tied head), ``full``: 384 / 6
    (14.6M), both one position per token (``patch_size`` 1); the CPU default: 4 x 4 patches."""

    num_frames: PositiveInt = 20  # frames per sequence
    frame_size: PositiveInt = 32  # tokens per frame side: 32 x 32 tokens of 16 levels (+ mask token 16)
    embed_dim: PositiveInt = 128  # transformer width D
    num_layers: PositiveInt = 2  # transformer blocks
    num_heads: PositiveInt = 4  # attention heads
    mlp_ratio: Positive = 4.0  # MLP width / embed_dim
    patch_size: PositiveInt = 1  # tokens per side of the patch one transformer position holds
    attention: str = "factorized"  # factorized (spatial then temporal, the source) | joint (all positions of all frames)
    head: str = "separate"  # separate (linear + bias, p*p*16 levels) | tied (copilot4D: logits = features x embedding table; patch 1)
    vocab_size: PositiveInt | None = None  # embedding rows - 1, the last the mask (copilot4D's; its fast script: 17). null: 16
    temporal_position: str = "learned"  # learned (started from sin/cos) | sinusoid (fixed, copilot4D's)
    dropout: Annotated[float, Range(ge=0, lt=1)] = 0.0  # on attention probabilities and the MLP, in training (copilot4D: 0.1)
    init: str = "genflow"  # genflow (PyTorch defaults, sin/cos spatial start) | copilot4d (Xavier-uniform, N(0, 0.02^2) embeddings)
    # independent: a patch's tokens from the position's features alone | autoregressive: each token also from the levels of
    # the patch's earlier tokens (a GRU over the p*p cells; decoding then fixes whole patches; patch_size > 1)
    patch_head: str = "independent"


@dataclass
class TaskWeights:
    """Probability of each masking task per batch (see genflow/objectives/masked_tokens.py)."""

    future: NonNegative = 1.0  # past clean, future masked with ratio ~ U(mask_ratio), causal
    joint: NonNegative = 0.0  # random frames (past and future) masked, causal
    individual: NonNegative = 0.0  # each frame denoised alone (identity temporal mask): the unconditional model


@dataclass
class ObjectiveConfig:
    tasks: TaskWeights = field(default_factory=TaskWeights)  # probability of each masking task per batch
    mask_ratio: Annotated[tuple[float, float], Range(ge=0, le=1)] = (0.5, 1.0)  # (min, max) of the uniform masking ratio
    full_mask_probability: Probability = 0.0  # future task: the whole future masked for this fraction of sequences
    random_context: bool = False  # future task: clean frames drawn from num_past..T-1 per sequence (next-frame training, for sampling.order=autoregressive)
    mask_schedule: str = "uniform"  # uniform: ratio ~ U(mask_ratio) | cosine: ratio = cos(u pi/2), u ~ U(0, 1) (copilot4D full)
    ratio_per: str = "sequence"  # sequence (future: one per sequence, other tasks: per frame) | batch (one per batch, copilot4D)
    mask_count: str = "bernoulli"  # bernoulli: each token with probability ratio | exact: ceil(ratio n) of a unit's n tokens (copilot4D full)
    random_tokens: Probability = 0.0  # up to this fraction of unmasked tokens become random levels (u x it per batch; copilot4D full: 0.05)
    joint_frames: str = "random"  # joint task: random (each frame with probability 1/2) | all (copilot4D)
    joint_attention: str = "causal"  # joint task: causal | full (bidirectional, copilot4D)
    loss_on: str = "task"  # task (the frames the task masks) | all (every token of every frame, copilot4D full)
    label_smoothing: Annotated[float, Range(ge=0, lt=1)] = 0.0  # cross-entropy label smoothing (copilot4D full: 0.1)


@dataclass
class SamplingConfig:
    """MaskGIT decoding (genflow/samplers/maskgit.py) used by `genflow sample` and `genflow eval video`."""

    steps: PositiveInt = 20  # MaskGIT decoding steps (1 = predict everything at once)
    temperature: NonNegative = 0.0  # 0 = the most likely level (best MSE / SSIM); 1.0 = sample the softmax (diverse)
    confidence_noise: NonNegative = 4.5  # scale of the annealed Gumbel noise on the unmasking confidences (0: greedy order)
    guidance: NonNegative = 0.0  # classifier-free guidance weight w (try 1.0-3.0); needs objective.tasks.individual > 0
    order: str = "joint"  # joint: all future frames decoded together (copilot4D) | autoregressive: one frame at a time
    greedy_level: str = "mode"  # at temperature 0: mode (most likely level) | median (ordered levels); copilot4D samples at 1

    def __post_init__(self) -> None:
        if self.greedy_level not in GREEDY_LEVELS:
            raise ConfigError(f"config key 'sampling.greedy_level': expected one of {', '.join(GREEDY_LEVELS)}, got {self.greedy_level!r}")
        if self.order not in DECODING_ORDERS:
            raise ConfigError(f"config key 'sampling.order': expected one of {', '.join(DECODING_ORDERS)}, got {self.order!r}")
        check_ranges(self, "sampling.")


@dataclass
class EvalConfig:
    """The quick check every `train.eval_every` epochs (`genflow eval video` is the full one)."""

    num_sequences: PositiveInt = 16  # val sequences decoded and scored at each evaluation


def _default_train() -> TrainConfig:
    return TrainConfig(epochs=1, batch_size=4, optimizer="adamw", lr=3e-4, weight_decay=0.01, lr_schedule="cosine",
                       min_lr=1e-6, grad_clip=1.0, precision="auto", seed=42, eval_every=1, checkpoint_every=10,
                       best_metric="val_loss", best_mode="min")


# The source scripts' argument names -> ours.
SOURCE_ALIASES = {
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "learning_rate": "train.lr",
    "num_past_frames": "data.num_past",
    "num_sequences": "data.train_sequences",
    "embed_dim": "model.embed_dim",
    "num_layers": "model.num_layers",
    "num_heads": "model.num_heads",
}


@dataclass
class WorldModelConfig:
    aliases = SOURCE_ALIASES
    data: DataConfig = field(default_factory=DataConfig)  # the token shards
    model: ModelConfig = field(default_factory=ModelConfig)  # the SimpleVideoTransformer
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # masked discrete diffusion: tasks and masking
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # MaskGIT decoding
    train: TrainConfig = field(default_factory=_default_train)  # engine settings (TrainConfig); _default_train unless a YAML has a train: section
    eval: EvalConfig = field(default_factory=EvalConfig)  # the quick check every train.eval_every epochs


# --- the recipe --------------------------------------------------------------------------------------
@dataclass
class DecodingOptions:
    """MaskGIT decoding choices shared by `sample` and `eval video` (None: the run config's `sampling.*`)."""

    steps: PositiveInt | None = None  # MaskGIT decoding steps per frame group
    temperature: NonNegative | None = None  # token sampling temperature (0 = most likely)
    confidence_noise: NonNegative | None = None  # noise on the confidence that picks which tokens to keep
    guidance: NonNegative | None = None  # classifier-free guidance weight (full model)
    future: PositiveInt | None = None  # frames to predict (default: all after the past)


@dataclass
class VideoSampleOptions(DecodingOptions, SampleOptions):
    n: PositiveInt = 4  # how many test sequences
    past: NonNegativeInt | None = None  # given frames (default: data.num_past of the run config)
    unconditional: bool = False  # whole sequences generated from nothing (with the test actions)


@dataclass
class VideoEvalOptions(DecodingOptions, EvalOptions):
    limit: PositiveInt | None = 200  # sequences evaluated (the first of the split)
    # the actions the model gets: true, shuffled (other sequences', a seeded derangement) or zero: the action ablation
    actions: Literal["true", "shuffled", "zero"] = "true"
    figure: bool = True  # write the per-horizon plot and table under RUN/eval/


class MovingMnistWorldModelRecipe(Recipe):
    card = CARD
    config_class = WorldModelConfig
    sample_options = VideoSampleOptions
    best_checkpoint_name = "epoch{epoch:03d}-val_loss{value:.4f}"

    def __init__(self, config: WorldModelConfig):
        super().__init__(config)
        o, t = config.objective, config.objective.tasks
        self.objective = MaskedTokenObjective(MASK_TOKEN, config.data.num_past,
                                              {"future": t.future, "joint": t.joint, "individual": t.individual},
                                              tuple(o.mask_ratio), o.full_mask_probability, o.random_context,
                                              mask_schedule=o.mask_schedule, ratio_per=o.ratio_per, mask_count=o.mask_count,
                                              random_tokens=o.random_tokens, joint_frames=o.joint_frames,
                                              joint_attention=o.joint_attention, loss_on=o.loss_on, label_smoothing=o.label_smoothing)
        if config.data.num_past >= config.model.num_frames:
            raise ConfigError(f"data.num_past={config.data.num_past} leaves no future frame of model.num_frames={config.model.num_frames}")

    # --- training -------------------------------------------------------------------------------------
    def _check_preprocessing(self) -> None:
        expected = self.config.data.preprocessing
        if expected is None:
            return
        if expected not in PREPROCESSING:
            raise ConfigError(f"config key 'data.preprocessing': expected one of {', '.join(PREPROCESSING)} or null, got {expected!r}")
        if not Path(self.config.data.data_dir).is_dir():
            raise ConfigError(f"{self.config.data.data_dir}: no such dataset; make it with `genflow data make moving-mnist "
                              f"preprocessing={expected} out={self.config.data.data_dir}` (data.preprocessing: {expected})")
        found = read_manifest(self.config.data.data_dir)["attrs"].get("preprocessing", "area")
        if found != expected:
            raise ConfigError(f"{self.config.data.data_dir} holds tokens made with preprocessing={found}, this config expects "
                              f"{expected} (data.preprocessing): make them with `genflow data make moving-mnist "
                              f"preprocessing={expected} out=...` or import with `preprocessing={expected}`")

    def build_datasets(self):
        d, m = self.config.data, self.config.model
        self._check_preprocessing()
        fields = ["tokens", "actions"]
        train = training_split(d.data_dir, fields, streaming=d.streaming, in_memory=d.in_memory, seed=self.config.train.seed)
        frames, height, width = train.field_shape("tokens")
        if (height, width) != (m.frame_size, m.frame_size) or frames < m.num_frames:
            raise ConfigError(f"{d.data_dir} holds {frames} frames of {height}x{width} tokens; the model expects "
                              f"{m.num_frames} of {m.frame_size}x{m.frame_size} (model.num_frames / model.frame_size)")
        # val carries the frames too, for the pixel metrics of `evaluate` (compute_loss reads tokens / actions)
        val = ShardDataset(d.data_dir, "val", [*fields, "frames"], in_memory=d.in_memory)
        if d.train_sequences is not None:
            if d.streaming:
                raise ConfigError("config keys 'data.train_sequences' and 'data.streaming': a stream reads whole shards; "
                                  "set train.batches_per_epoch to shorten an epoch instead")
            train = Subset(train, range(min(d.train_sequences, len(train))))
        return train, Subset(val, range(min(d.val_sequences, len(val))))

    def build_model(self) -> SimpleVideoTransformer:
        m = self.config.model
        return SimpleVideoTransformer(num_levels=NUM_LEVELS, num_frames=m.num_frames, height=m.frame_size, width=m.frame_size,
                                      embed_dim=m.embed_dim, num_layers=m.num_layers, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
                                      patch_size=m.patch_size, attention=m.attention, head=m.head, vocab_size=m.vocab_size,
                                      temporal_position=m.temporal_position, dropout=m.dropout, init=m.init, patch_head=m.patch_head)

    def compute_loss(self, model, batch, ctx: StepContext):
        frames = self.config.model.num_frames
        tokens = batch["tokens"][:, :frames].long()
        actions = batch["actions"][:, :frames].float()
        # one task per step, the same on every process (all draw the same numbers from the shared generator)
        task = self.objective.pick_task(float(torch.rand((), generator=ctx.generator)))
        b = tokens.shape[0]
        draws: dict[str, Any] = {}  # per-batch draws from the shared generator: the same on every process
        if self.objective.ratio_per == "batch":
            draws["batch_draw"] = float(torch.rand((), generator=ctx.generator))
        if self.objective.random_tokens > 0:
            draws.update(level_noise=ctx.rand(b, *tokens.shape[1:]), random_fraction=float(torch.rand((), generator=ctx.generator)))
        corrupted = self.objective.corrupt(tokens, task, ctx.rand(b, *tokens.shape[1:]), ctx.rand(b, frames, 2), **draws)
        # targets: an autoregressive patch head reads the true levels of each patch's earlier cells (teacher forcing)
        logits = model(corrupted.tokens, actions, corrupted.temporal_mask, targets=tokens)
        loss = self.objective.loss(logits, tokens, corrupted)
        return loss, {f"loss_{task}": loss.detach()}

    # --- generation -----------------------------------------------------------------------------------
    def _autocast(self, device: torch.device):
        dtype = autocast_dtype(self.config.train.precision, device)  # auto: bf16 only where it is native
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    @torch.no_grad()
    def predict(self, model, tokens: torch.Tensor, actions: torch.Tensor, *, num_past: int, steps: int | None = None,
                temperature: float | None = None, confidence_noise: float | None = None, guidance: float | None = None,
                order: str | None = None, seed: int = 0, batch_size: int = 16) -> Prediction:
        """Generates the frames of ``tokens`` ``(N, T, H, W)`` after ``num_past`` given ones.

        ``order`` (``sampling.order``): ``joint`` decodes all future frames together by MaskGIT (the
        source); ``autoregressive`` decodes one frame at a time by MaskGIT, each given the frames
        before it, as CoPilot4D rolls out. Returns the tokens ``(N, T, H, W)`` (first ``num_past``
        frames unchanged) and the expected intensity ``sum_l p(l) l / 15`` of every future token from
        one pass with that frame (joint: every future frame) fully masked: the MSE-optimal prediction
        under the model, blurred where it is unsure. ``num_past = 0`` generates whole sequences
        (joint order; no expected intensity).
        """
        s = self.config.sampling
        steps = steps or s.steps
        temperature = s.temperature if temperature is None else temperature
        confidence_noise = s.confidence_noise if confidence_noise is None else confidence_noise
        guidance = s.guidance if guidance is None else guidance
        order = order or s.order
        if order not in DECODING_ORDERS:
            raise GenflowError(f"sampling.order {order!r}: expected one of {', '.join(DECODING_ORDERS)}")
        if guidance > 0 and self.config.objective.tasks.individual <= 0:
            raise GenflowError("classifier-free guidance needs a model trained with the individual-frame task "
                               "(objective.tasks.individual > 0, e.g. --config mmnist_wm_full)")
        if num_past == 0:
            order = "joint"
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(seed)
        levels = torch.arange(NUM_LEVELS, dtype=torch.float32, device=device) / (NUM_LEVELS - 1)
        out, expected = [], []
        for part_tokens, part_actions in zip(tokens.split(batch_size), actions.split(batch_size)):
            given, a = part_tokens.long().to(device), part_actions.float().to(device)
            spans = [(num_past, given.shape[1])] if order == "joint" else [(f, f + 1) for f in range(num_past, given.shape[1])]
            current, means = given.clone(), []
            for first, end in spans:  # frames [first, end) are generated given the frames before them
                with self._autocast(device):  # the past is clean and causal: computed once, not at every step
                    past = model.encode_past(current[:, :first], a[:, :first]) if first > 0 else None
                span_actions = a[:, first:end]

                def logits_fn(masked: torch.Tensor) -> torch.Tensor:
                    with self._autocast(device):
                        # the levels' logits (a tied head also scores its extra embedding rows, never sampled)
                        conditional = model(masked, span_actions, "causal", past=past)[..., :NUM_LEVELS].float()
                        if guidance <= 0:
                            return conditional
                        unconditional = model(masked, span_actions, "identity", first_frame=first)[..., :NUM_LEVELS].float()
                    return conditional + guidance * (conditional - unconditional)

                masked = torch.full_like(given[:, first:end], MASK_TOKEN)
                if model.cell_decoder is not None:  # whole patches, each drawn cell by cell
                    if guidance > 0:
                        raise GenflowError("classifier-free guidance is not available with model.patch_head: autoregressive")
                    current[:, first:end], mean = self._decode_patches(model, masked, span_actions, past, first, steps=steps,
                                                                       temperature=temperature, confidence_noise=confidence_noise,
                                                                       generator=generator)
                    if first > 0:
                        means.append(mean.cpu())
                    continue
                if first > 0:
                    means.append((logits_fn(masked).softmax(dim=-1) @ levels).cpu())
                current[:, first:end] = maskgit_decode(logits_fn, masked, MASK_TOKEN, steps=steps, temperature=temperature,
                                                       confidence_noise=confidence_noise, generator=generator,
                                                       greedy_level=s.greedy_level)
            out.append(current.cpu())
            if means:
                expected.append(torch.cat(means, dim=1))
        return Prediction(torch.cat(out), torch.cat(expected) if expected else None)

    def _decode_patches(self, model, masked: torch.Tensor, actions: torch.Tensor, past, first: int, *, steps: int,
                        temperature: float, confidence_noise: float, generator: torch.Generator,
                        expected_draws: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """MaskGIT over whole patches with the autoregressive patch head (``maskgit_decode_patches``).

        Returns the decoded levels ``(B, F, H, W)`` and the expected intensity, estimated as the mean
        level / 15 of ``expected_draws`` patches drawn (temperature 1) from the pass with the span fully masked.
        """
        batch, frames = masked.shape[:2]
        device = masked.device

        def features(tokens: torch.Tensor) -> torch.Tensor:
            with self._autocast(device):
                out = model.features(tokens, actions, "causal", past=past) if past is not None else \
                    model.features(tokens, actions, "causal", first_frame=first)
            return out.float()

        cells = model.patchify(masked)
        positions, per_patch = cells.shape[2], cells.shape[3]

        def sample_fn(current: torch.Tensor, still: torch.Tensor):
            flat = features(model.unpatchify(current.reshape(batch, frames, positions, per_patch))).flatten(0, 2)
            chosen = still.reshape(-1)
            drawn = torch.zeros(flat.shape[0], per_patch, dtype=torch.long, device=device)
            confidence = torch.zeros(flat.shape[0], device=device)
            base = model.head_logits(flat[chosen]).reshape(-1, per_patch, NUM_LEVELS)
            levels, log_prob = model.cell_decoder.sample(flat[chosen], base, temperature=temperature,
                                                         greedy_level=self.config.sampling.greedy_level, generator=generator)
            drawn[chosen], confidence[chosen] = levels, log_prob / per_patch
            return drawn.reshape(batch, -1, per_patch), confidence.reshape(batch, -1)

        decoded = maskgit_decode_patches(sample_fn, cells.reshape(batch, -1, per_patch),
                                         torch.ones(batch, frames * positions, dtype=torch.bool, device=device),
                                         steps=steps, confidence_noise=confidence_noise, generator=generator)
        flat = features(masked).flatten(0, 2)
        base = model.head_logits(flat).reshape(-1, per_patch, NUM_LEVELS)
        total = torch.zeros(flat.shape[0], per_patch, device=device)
        for _ in range(expected_draws):
            total += model.cell_decoder.sample(flat, base, temperature=1.0, greedy_level="mode", generator=generator)[0].float()
        expected = model.unpatchify((total / expected_draws / (NUM_LEVELS - 1)).reshape(batch, frames, positions, per_patch))
        return model.unpatchify(decoded.reshape(batch, frames, positions, per_patch)), expected

    def _test_sequences(self, split: str = "test", limit: int | None = None) -> dict[str, np.ndarray]:
        self._check_preprocessing()
        data = load_split(self.config.data.data_dir, split, ["tokens", "actions", "frames"])
        return {k: v[:limit] for k, v in data.items()}

    # --- evaluation -----------------------------------------------------------------------------------
    def evaluate(self, model, val_data, device):
        """Quick pixel metrics of the decoded future on a few validation sequences (32 x 32), and
        copilot4D's validation loss on all of ``val_data``."""
        seqs = first_samples(val_data, self.config.eval.num_sequences)
        scores = self._score(model, seqs, num_future=self.config.model.num_frames - self.config.data.num_past)
        recall, precision = ink_recall_precision(scores["ink"]["model"])
        return {"val_mse": float(scores["model"]["mse_32"].mean()), "val_ssim": float(scores["model"]["ssim_32"].mean()),
                "val_expected_mse": float(scores["model_expected"]["mse_32"].mean()),
                "val_expected_ssim": float(scores["model_expected"]["ssim_32"].mean()),
                "val_action_shift_mse": float(scores["action_shift"]["mse_32"].mean()),
                "val_ink_recall": _nanmean_or_nan(recall), "val_ink_precision": _nanmean_or_nan(precision),
                "val_future_ce": self.future_cross_entropy(model, first_samples(val_data, len(val_data)), device)}

    @torch.no_grad()
    def future_cross_entropy(self, model, seqs: dict[str, np.ndarray], device: torch.device, batch_size: int = 16) -> float:
        """copilot4D's validation loss: the whole future masked, causal attention, cross-entropy over
        every future token against all the classes the model predicts (its tied head: 18), mean per token."""
        num_past, frames = self.config.data.num_past, self.config.model.num_frames
        total, count = 0.0, 0
        for start in range(0, len(seqs["tokens"]), batch_size):
            tokens = torch.from_numpy(seqs["tokens"][start : start + batch_size, :frames]).long().to(device)
            actions = torch.from_numpy(seqs["actions"][start : start + batch_size, :frames]).float().to(device)
            masked = tokens.clone()
            masked[:, num_past:] = MASK_TOKEN
            with self._autocast(device):
                logits = model(masked, actions, "causal", targets=tokens)[:, num_past:].float()
            total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                             tokens[:, num_past:].reshape(-1), reduction="sum"))
            count += tokens[:, num_past:].numel()
        return total / max(count, 1)

    def _score(self, model, seqs: dict[str, np.ndarray], *, num_future: int, actions: str = "true", seed: int = 0,
               full_resolution: bool = False, **sampling: Any) -> dict[str, Any]:
        """Per-frame metrics ``(N, F)`` of the model (MaskGIT: ``model``, expected intensity:
        ``model_expected``) and the baselines, and the predicted tokens.

        ``actions``: what the model is given, ``true``, ``shuffled`` (another sequence's) or ``zero``;
        the baselines always use the true ones.
        """
        num_past = self.config.data.num_past
        frames = num_past + num_future
        if frames > min(self.config.model.num_frames, seqs["tokens"].shape[1]):
            raise GenflowError(f"past={num_past} + future={num_future} exceeds the {min(self.config.model.num_frames, seqs['tokens'].shape[1])} frames "
                               "the model and data hold")
        tokens = torch.from_numpy(seqs["tokens"][:, :frames])
        true_actions = seqs["actions"][:, :frames]
        given_actions = torch.from_numpy(np.ascontiguousarray(ablated_actions(true_actions, actions, seed)))
        start = time.perf_counter()
        predicted, expected = self.predict(model, tokens, given_actions, num_past=num_past, seed=seed, **sampling)
        seconds = time.perf_counter() - start
        expected = expected.numpy()
        past = dequantise(seqs["tokens"][:, :num_past])
        truth32 = dequantise(seqs["tokens"][:, num_past:frames])
        pixels_per_unit = self.config.model.frame_size / 2
        predictions = {
            "model": dequantise(predicted[:, num_past:].numpy()),
            "model_expected": expected,
            "copy_last": copy_last_prediction(past, num_future),
            # the last given velocity (the tracked digit's last action) extrapolated
            "constant_velocity": shifted_last_frame_prediction(past, np.repeat(true_actions[:, num_past - 1 : num_past], num_future, axis=1), pixels_per_unit),
            # the last frame moved by the future actions the model is given: exact for the tracked digit
            "action_shift": shifted_last_frame_prediction(past, true_actions[:, num_past:frames], pixels_per_unit),
            "all_black": all_black_prediction(past, num_future),
        }
        scores: dict[str, Any] = {"tokens": predicted, "seconds": seconds}
        factor = seqs["frames"].shape[-1] // self.config.model.frame_size
        truth64 = seqs["frames"][:, num_past:frames].astype(np.float32) / 255.0
        scores["ink"] = {}
        for name, pred in predictions.items():
            # OpenSTL's MSE (summed over a frame) and 7 x 7-window SSIM; copilot4D's per-pixel MSE and one-window SSIM
            scores[name] = {"mse_32": frame_mse(pred, truth32), "psnr_32": frame_psnr(pred, truth32), "ssim_32": frame_ssim(pred, truth32),
                            "pixel_mse_32": pixel_mse(pred, truth32), "global_ssim_32": global_ssim(pred, truth32)}
            scores["ink"][name] = ink_counts(pred, truth32)
            if full_resolution:
                up = upsample_frames(pred, factor)
                scores[name].update({"mse_64": frame_mse(up, truth64), "psnr_64": frame_psnr(up, truth64), "ssim_64": frame_ssim(up, truth64)})
        return scores

    @evaluation("video", VideoEvalOptions)
    def eval_video(self, model, run_dir, device, options: VideoEvalOptions):
        """Future-frame quality per horizon (MSE / PSNR / SSIM at 32 x 32 and upsampled to 64 x 64) of the
        model and of four baselines on the same sequences: copy-last-frame; constant velocity (the last
        frame shifted by the last given action, extrapolated); action shift (the last frame shifted by the
        future actions the model also gets); all-black. The model decodes two ways: MaskGIT (``model``,
        one sharp future) and expected intensity (``model_expected``, the MSE-optimal blur).
        ``actions`` = ``shuffled`` / ``zero`` is the action ablation."""
        split, limit, seed, steps, temperature = options.split, options.limit, options.seed, options.steps, options.temperature
        confidence_noise, guidance, future, actions = options.confidence_noise, options.guidance, options.future, options.actions
        figure = options.figure
        num_future = future or (self.config.model.num_frames - self.config.data.num_past)
        seqs = self._test_sequences(split, limit)
        scores = self._score(model, seqs, num_future=num_future, actions=actions, seed=seed, full_resolution=True,
                             steps=steps, temperature=temperature, confidence_noise=confidence_noise, guidance=guidance)
        s = self.config.sampling
        result: dict[str, Any] = {
            "split": split, "sequences": len(seqs["tokens"]), "past": self.config.data.num_past, "future": num_future,
            "steps": steps or s.steps, "temperature": s.temperature if temperature is None else temperature,
            "guidance": s.guidance if guidance is None else guidance, "order": s.order, "greedy_level": s.greedy_level,
            "actions": actions,
            "seconds": round(scores["seconds"], 2), "seconds_per_sequence": round(scores["seconds"] / len(seqs["tokens"]), 4),
        }
        per_horizon: dict[str, dict[str, list[float]]] = {}
        for name in PREDICTORS:
            for key, values in scores[name].items():
                result[f"{name}_{key}"] = float(values.mean())
                per_horizon.setdefault(name, {})[key] = [round(float(v), 4) for v in values.mean(axis=0)]
            # pooled over sequences per horizon: the share of the truth's ink the prediction inks, and the reverse
            recall, precision = ink_recall_precision(scores["ink"][name])
            per_horizon[name].update(ink_recall=[round(float(v), 4) for v in recall], ink_precision=[round(float(v), 4) for v in precision])
            result[f"{name}_ink_recall"], result[f"{name}_ink_precision"] = _nanmean_or_nan(recall), _nanmean_or_nan(precision)
        result["per_horizon"] = per_horizon
        for model_name in ("model", "model_expected"):
            prefix = "beats" if model_name == "model" else "expected_beats"
            for base in BASELINES:  # at every horizon; per-pixel MSE orders predictors as summed MSE does
                ours, theirs = per_horizon[model_name], per_horizon[base]
                mse = all(m < b for m, b in zip(ours["mse_32"], theirs["mse_32"]))
                ssim = all(m > b for m, b in zip(ours["ssim_32"], theirs["ssim_32"]))
                result[f"{prefix}_{base}"] = mse and ssim
                result[f"{prefix}_{base}_mse"], result[f"{prefix}_{base}_ssim"] = mse, ssim
                result[f"{prefix}_{base}_global_ssim"] = all(m > b for m, b in zip(ours["global_ssim_32"], theirs["global_ssim_32"]))
        if figure:
            tag = f"video-k{result['steps']}{'' if actions == 'true' else '-' + actions + '-actions'}"
            out = Path(run_dir) / "eval"
            plot_metrics_vs_horizon(per_horizon, out / f"{tag}.png")
            (out / f"{tag}.md").write_text(horizon_table(per_horizon))
            result["plot"] = str(out / f"{tag}.png")
            result["table"] = str(out / f"{tag}.md")
        return result

    # --- pictures and sampling ------------------------------------------------------------------------
    def save_figures(self, model, val_data, run_dir, device):
        seqs = first_samples(val_data, 3)
        num_past = self.config.data.num_past
        tokens, actions = torch.from_numpy(seqs["tokens"]), torch.from_numpy(seqs["actions"])
        predicted, expected = self.predict(model, tokens, actions, num_past=num_past)
        expected = expected.numpy()
        path = Path(run_dir) / "samples.png"
        plot_strips(dequantise(seqs["tokens"]), dequantise(predicted.numpy()), num_past, path, expected)
        return {"samples": path}

    def sample(self, model, run_dir, device, options: VideoSampleOptions):
        """PNG strips (true, MaskGIT, expected intensity) and an animated GIF (true | MaskGIT) of `n` test
        sequences; with `unconditional`, whole sequences generated from nothing (test actions)."""
        n, past, future, steps, temperature = options.n, options.past, options.future, options.steps, options.temperature
        guidance, confidence_noise, unconditional, out, seed = (options.guidance, options.confidence_noise,
                                                                options.unconditional, options.out, options.seed)
        num_past = 0 if unconditional else (self.config.data.num_past if past is None else past)
        num_future = future or (self.config.model.num_frames - num_past)
        frames = num_past + num_future
        if frames > self.config.model.num_frames:
            raise GenflowError(f"past={num_past} + future={num_future} exceeds the model's {self.config.model.num_frames} frames")
        seqs = self._test_sequences(limit=n)
        start = time.perf_counter()
        predicted, expected = self.predict(model, torch.from_numpy(seqs["tokens"][:, :frames]), torch.from_numpy(seqs["actions"][:, :frames]),
                                           num_past=num_past, steps=steps, temperature=temperature, guidance=guidance,
                                           confidence_noise=confidence_noise, seed=seed)
        seconds = time.perf_counter() - start
        expected = None if expected is None else expected.numpy()
        tag = "unconditional" if unconditional else f"past{num_past}-future{num_future}"
        out = Path(out) if out else Path(run_dir) / "samples" / f"{tag}-k{steps or self.config.sampling.steps}.png"
        truth = dequantise(seqs["tokens"][:, :frames])
        generated = dequantise(predicted.numpy())
        plot_strips(truth, generated, num_past, out, expected)
        gif = out.with_suffix(".gif")
        write_gif(truth, generated, num_past, gif)
        arrays = {"tokens": predicted.numpy(), "true_tokens": seqs["tokens"][:, :frames], "actions": seqs["actions"][:, :frames],
                  "num_past": num_past, **({} if expected is None else {"expected_intensity": expected})}
        np.savez(out.with_suffix(".npz"), **arrays)
        return {"picture": out, "animation": gif, "arrays": out.with_suffix(".npz"), "sequences": len(predicted),
                "seconds": round(seconds, 2)}

    def export_graphs(self, model):
        m = self.config.model
        if m.patch_head != "independent":
            raise GenflowError("export of model.patch_head: autoregressive is not supported (its logits depend on the drawn "
                               "levels of earlier cells); the safetensors weights are in the run's checkpoint")
        tokens = torch.randint(0, NUM_LEVELS + 1, (1, m.num_frames, m.frame_size, m.frame_size))
        actions = torch.zeros(1, m.num_frames, 2)
        return {"video_transformer": (CausalLogits(model), (tokens, actions), ["tokens", "actions"], ["logits"],
                                      {"tokens": {0: "batch"}, "actions": {0: "batch"}, "logits": {0: "batch"}})}

    def model_card(self) -> dict[str, Any]:
        return {**asdict(self.config.model), "num_levels": NUM_LEVELS, "mask_token_id": MASK_TOKEN,
                "num_past": self.config.data.num_past, "dequantise": "level / 15"}


class CausalLogits(nn.Module):
    """The network as a two-input graph (tokens, actions) -> logits under the causal temporal mask."""

    def __init__(self, model: SimpleVideoTransformer):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.model(tokens, actions, "causal")


# --- pictures ------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_strips(truth: np.ndarray, generated: np.ndarray, num_past: int, path: Path, expected: np.ndarray | None = None) -> None:
    """Rows per sequence: the true frames, past + MaskGIT-generated frames and, given ``expected``
    ``(N, F, H, W)``, past + expected-intensity frames; a red frame marks what was predicted."""
    plt = _plt()
    n, frames = generated.shape[:2]
    rows = [("true", truth), ("MaskGIT", generated)]
    if expected is not None:
        rows.append(("expected", np.concatenate([truth[:, :num_past], expected], axis=1)))
    per = len(rows)
    fig, axes = plt.subplots(per * n, frames, figsize=(0.6 * frames, 0.62 * per * n + 0.1), squeeze=False)
    for i in range(n):
        for t in range(frames):
            for k, (label, video) in enumerate(rows):
                ax = axes[per * i + k, t]
                ax.imshow(video[i, t], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                if t >= num_past and k:
                    for spine in ax.spines.values():
                        spine.set_color("tab:red")
                if t == 0:
                    ax.set_ylabel(label, fontsize=5)
            if i == 0:
                axes[0, t].set_title(("past " if t < num_past else "future ") + str(t), fontsize=5)
    fig.subplots_adjust(wspace=0.05, hspace=0.05, left=0.05, right=0.99, top=0.95, bottom=0.01)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_gif(truth: np.ndarray, generated: np.ndarray, num_past: int, path: Path, scale: int = 3) -> None:
    """Animated GIF, one panel per sequence side by side: [true | model] each frame (model = truth for past frames)."""
    from PIL import Image

    n, frames, height, width = generated.shape
    pictures = []
    for t in range(frames):
        row = []
        for i in range(n):
            pair = np.concatenate([truth[i, t], np.ones((height, 1)), generated[i, t]], axis=1)
            row += [pair, np.ones((height, 2))]
        canvas = (np.concatenate(row[:-1], axis=1) * 255).astype(np.uint8)
        image = Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)
        pictures.append(image)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=[250] * num_past + [400] * (frames - num_past) if num_past else 300, loop=0)


def _nanmean_or_nan(values) -> float:
    """Mean over the defined values (NaN: undefined, e.g. the ink precision of an all-black frame); NaN if none is."""
    values = np.asarray(values, dtype=np.float64)
    return float(values[~np.isnan(values)].mean()) if (~np.isnan(values)).any() else float("nan")


def horizon_table(per_horizon: dict[str, dict[str, list[float]]]) -> str:
    """Markdown: one row per predictor and metric, one column per future frame, then the mean."""
    horizons = len(next(iter(per_horizon.values()))["mse_32"])
    lines = ["| predictor | metric | " + " | ".join(str(h + 1) for h in range(horizons)) + " | mean |",
             "|---|---|" + "---|" * (horizons + 1)]
    for metric in ("mse_32", "pixel_mse_32", "psnr_32", "ssim_32", "global_ssim_32", "ink_recall", "ink_precision", "mse_64", "psnr_64", "ssim_64"):
        for name, values in per_horizon.items():
            if metric in values:
                row = values[metric]
                lines.append(f"| {name} | {metric} | " + " | ".join(f"{v:.3g}" for v in row) + f" | {_nanmean_or_nan(row):.3g} |")
    return "\n".join(lines) + "\n"


def plot_metrics_vs_horizon(per_horizon: dict[str, dict[str, list[float]]], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    panels = (("mse_32", "MSE per frame (32x32)"), ("ssim_32", "SSIM (7x7 windows, OpenSTL)"),
              ("global_ssim_32", "SSIM (one window, copilot4D)"), ("ink_recall", "ink recall (truth's ink inked)"))
    for ax, (metric, label) in zip(axes, panels):
        for name, values in per_horizon.items():
            ax.plot(range(1, len(values[metric]) + 1), values[metric], marker="o", ms=3, label=name)
        ax.set_xlabel("frames ahead"), ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
