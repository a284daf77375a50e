"""`TrainConfig`: the engine's settings, the `train:` section of every recipe's config."""

from __future__ import annotations

import dataclasses
import re
from typing import Annotated, Literal

from genflow.config import NonNegative, NonNegativeInt, Positive, PositiveInt, Range, check_ranges
from genflow.engine.precision import normalise_precision
from genflow.errors import ConfigError

__all__ = ["TrainConfig"]


@dataclasses.dataclass
class TrainConfig:
    """Engine settings shared by every recipe (the `train:` section of a recipe config)."""

    epochs: PositiveInt = 50  # passes over the training set (a streamed set: train.batches_per_epoch batches each)
    batch_size: PositiveInt = 32  # global batch per optimiser micro-step, split evenly over processes
    max_steps: PositiveInt | None = None  # stop after this many optimiser steps (None: run all epochs)
    batches_per_epoch: PositiveInt | None = None  # epoch length of a streamed training set (caps a finite one)
    optimizer: Literal["adam", "adamw"] = "adam"  # adamw: decoupled weight decay (torch.optim.AdamW)
    lr: Positive = 1e-3  # peak learning rate (reached after warmup_steps, then lr_schedule)
    weight_decay: NonNegative = 0.0  # L2 penalty (adam) or decoupled decay (adamw); recipes may exempt norms and biases
    betas: Annotated[tuple[float, float], Range(ge=0, lt=1)] = (0.9, 0.999)  # Adam's moment decay rates, each in [0, 1)
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"  # after warmup: keep lr, or decay to min_lr by the last epoch
    warmup_steps: NonNegativeInt = 0  # optimiser steps of linear warmup from 0 to lr
    min_lr: NonNegative = 0.0  # floor of the cosine / linear decay
    # length of the cosine / linear decay in epochs, whatever the run's length (then min_lr is held); null = the
    # run's train.epochs. A run shorter than this span ends part-way down the curve (optax's decay_steps)
    lr_decay_epochs: Positive | None = None
    # step: the lr moves every optimiser step; epoch: it changes only at epoch starts, a staircase (Lightning's
    # `interval: "epoch"`, torch's CosineAnnealingLR stepped once per epoch)
    lr_interval: Literal["step", "epoch"] = "step"
    grad_clip: Positive | None = 1.0  # max global grad norm; None disables clipping
    grad_accum_steps: PositiveInt = 1  # micro-batches summed per optimiser step (the step sees batch_size x this)
    ema_decay: Annotated[float, Range(gt=0, lt=1)] | None = None  # e.g. 0.999; evaluation and sampling then use the EMA weights
    # auto: bf16 where the GPU / CPU computes it natively, else fp32 (GPU without bf16: fp16). Also
    # no | fp32 | 32 | 32-true | bf16 | bf16-mixed | fp16 | 16-mixed (Lightning: fp16 on a GPU, bf16 on CPU).
    # The request is kept; the engine resolves it on the hardware of each run (and resume).
    precision: str | bool | int = "auto"  # bool / int: YAML's reading of `no` and `32`
    seed: int = 42  # seeds the model init, data order and noise (from seed, epoch, step: resume is exact)
    eval_every: PositiveInt = 5  # epochs
    checkpoint_every: PositiveInt = 10  # epochs (`last` is written every epoch regardless)
    checkpoint_every_steps: PositiveInt | None = None  # also refresh `last` every N steps, for long epochs
    best_metric: str = "val_loss"  # validation metric that picks checkpoints/best.pt (val_loss or a recipe metric)
    best_mode: Literal["min", "max"] = "min"  # whether a lower or a higher best_metric is better
    # also keep the K best validations by best_metric as checkpoints/top_epoch_XXXX.pt, removing those that fall
    # out of the K (what `genflow export --average best:K` averages); null: none kept
    keep_top_k: PositiveInt | None = None
    # stop when best_metric has not improved by more than early_stop_min_delta in this many validations in a row
    # (Lightning's EarlyStopping: patience counts validations, not epochs); null: never stop early
    early_stop_patience: PositiveInt | None = None
    early_stop_min_delta: NonNegative = 0.0  # an improvement smaller than this does not reset the patience
    # steps between train scalars (metrics.jsonl, trackers); the loss is read off the device only at these
    # points and before checkpoints and evaluations (a NaN stops the run at the next of them)
    log_every: PositiveInt = 10
    # "START:END": record optimiser steps START..END-1 counted from 0 (a Python slice: 10:15 records the steps logged
    # as 11..15) with torch.profiler into RUN/profile/ (trace.json for ui.perfetto.dev, ops.txt: time per op); main
    # process only. An int is YAML 1.1's base-60 reading of an unquoted 10:15 (615), read back as START:END
    profile: str | int | None = None
    # checkpoints/last_good.pt follows last.pt only while the training loss stays within this factor of its
    # lowest value so far (a loss blowing up towards NaN is finite for a while: those weights are not kept there)
    last_good_loss_ratio: Annotated[float, Range(gt=1)] = 4.0
    num_workers: NonNegativeInt = 0  # DataLoader worker processes per training process
    # intra-op threads of each training process; null: chosen from the cores other processes leave free, once the
    # first second is over and again when a change holds for two readings 5 s apart (the run's own DataLoader workers and ranks are not
    # competitors), at most torch's count (OMP_NUM_THREADS, else the physical cores), the free cores split among the
    # run's processes on this machine. A number fixes it (bit-identical reruns need the same count)
    threads: PositiveInt | None = None
    # torch.compile the network for the training step (evaluation and sampling stay eager; checkpoints are the
    # same); the first step waits for the compile (seconds to minutes). A machine that cannot build kernels (CPU:
    # no C++ compiler) is a ConfigError naming this key at the first step. Measured per recipe: docs/engine.md
    compile: bool = False
    # Experiment trackers (through Accelerate), fed the same scalars as metrics.jsonl and the resolved config as
    # hyper-parameters: tensorboard (RUN/tb), mlflow (a local file store, RUN/mlruns), wandb; a name, a list of
    # names, or none. metrics.jsonl is always written.
    log_with: str | list[str] | None = "tensorboard"
    # Signals that mean "you are being preempted" (a scheduler's notice, e.g. SLURM's --signal=USR1@120): the run
    # finishes its step, writes checkpoints/last.pt and exits with code 75; `--resume auto --name NAME` continues it.
    # With several processes they agree at the next train.log_every step. [] leaves the signals' default action.
    preempt_signals: list[str] = dataclasses.field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])

    TRACKERS = ("tensorboard", "wandb", "mlflow")  # the valid `log_with` names (no annotation: not a config key)

    def __post_init__(self) -> None:
        check_ranges(self, "train.")
        self.precision = normalise_precision(self.precision)
        self.log_with = self.trackers()
        self.profile_steps()
        import signal

        for name in self.preempt_signals:
            if not isinstance(getattr(signal, str(name), None), signal.Signals) or name in ("SIGKILL", "SIGSTOP", "SIGINT"):
                raise ConfigError(f"config key 'train.preempt_signals': expected names of catchable signals such as SIGTERM "
                                  f"or SIGUSR1 (SIGINT is Ctrl-C, handled already), got {name!r}")

    def profile_steps(self) -> tuple[int, int] | None:
        """`profile` as (START, END), 0 <= START < END (None: no profiling); ConfigError naming the key otherwise.

        The engine reads it through here, so a value set after construction is checked too.
        """
        value = self.profile
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 60:  # YAML 1.1: 10:15 -> 615
            value = self.profile = f"{value // 60}:{value % 60}"
        span = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(value), re.ASCII)
        if span is None or int(span[1]) >= int(span[2]):
            raise ConfigError(f"config key 'train.profile': expected START:END, the optimiser steps to profile counted "
                              f"from 0 (e.g. 10:15, START < END), got {value!r}")
        return int(span[1]), int(span[2])

    def trackers(self) -> list[str]:
        """`log_with` as a list of tracker names, in order, without repeats (`none` / null / [] -> []).

        The engine reads it through here, so a value set after construction is checked too.
        """
        value = self.log_with
        names = [value] if isinstance(value, str) or value is None else list(value)
        if names in ([], [None], ["none"]):
            return []
        if any(name not in self.TRACKERS for name in names):
            raise ConfigError(f"config key 'train.log_with': expected {' | '.join(self.TRACKERS)}, a list of them "
                              f"or none, got {value!r}")
        return list(dict.fromkeys(names))
