"""The training engine: one loop for every recipe, on HuggingFace Accelerate.

Read top to bottom: `TrainState` (where the run is: what every checkpoint saves), then `Trainer`,
whose steps run in this order: set up (accelerator and experiment trackers,
data, model, optimiser, schedule, EMA), `restore` (resume from a checkpoint), `run`: per epoch per
batch `train_step` (loss -> backward -> every `grad_accum_steps` clip, step, schedule, EMA -> every
`log_every` steps `log_train`, where the loss first reaches the host and is checked finite), per
epoch `end_of_epoch` (validate, pick best, checkpoint). Accelerate gives mixed precision, DDP (NCCL
on GPUs, gloo on CPU) and the trackers; the data order and the noise come from (seed, epoch, step),
which makes resume exact and N processes equivalent to one with the same global batch.

Beside it: `loader.py` (the DataLoader of an epoch and the run's length in steps), `log_window.py` (the
losses and logged scalars since the last log line, read off the device only at log points),
`checkpoint.py` (what a checkpoint holds, written atomically) and `profiling.py` (`train.profile`).
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.tracking import GeneralTracker
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset

from genflow.config import config_to_dict
from genflow.engine.checkpoint import (atomic_torch_save, link_checkpoint, load_checkpoint, remove_stale_temp_files,
                                       restore_rng_state, training_checkpoint)
from genflow.engine.launch import is_launched_worker
from genflow.engine.loader import StreamedShards, as_tensors, plan_steps, training_loader
from genflow.engine.log_window import LogWindow, TrainingDiverged
from genflow.engine.metrics_log import MetricsLogger, flatten_config, make_trackers, plot_loss_trajectory, record_tracker_runs
from genflow.engine.memory import keep_freed_memory
from genflow.engine.profiling import StepProfiler, step_profiler
from genflow.engine.optim import EpochBatchSampler, ExponentialMovingAverage, build_lr_schedule, build_optimizer
from genflow.engine.precision import cpu_description, resolve_precision
from genflow.engine.progress import TrainingProgress
from genflow.engine.recipe import Recipe, StepContext
from genflow.engine.run_dir import CONFIG_FILE, record_runtime, write_run_config
from genflow.engine.train_config import TrainConfig
from genflow.errors import PREEMPTED_EXIT_CODE, CheckpointError, ConfigError, GenflowError
from genflow.threads import ThreadBudget

__all__ = ["train", "TrainResult", "TrainingDiverged", "TrainingPreempted", "PREEMPTED_EXIT_CODE", "TrainState",
           "make_accelerator"]

THREAD_READING_S = 5.0  # seconds between two readings of how busy the cores are (two must agree to change the count)


class TrainingPreempted(GenflowError):
    """A preemption signal (`train.preempt_signals`) stopped training after a step; last.pt holds that step."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=PREEMPTED_EXIT_CODE)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    epochs_done: int
    seconds: float
    best: dict[str, Any]
    last_metrics: dict[str, float] = field(default_factory=dict)
    samples_seen: int = 0  # training samples of this invocation (a resumed run counts from the resume)
    peak_memory_mib: float | None = None  # this process's peak resident memory (CPU) or peak CUDA allocation


def peak_memory_mib(device: torch.device) -> float | None:
    """Peak memory of this process so far: CUDA's peak allocation on a GPU, else the peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_accelerator(precision: str, log_with: list[str | GeneralTracker] | None = None,
                     project_dir: Path | None = None) -> tuple[Accelerator, str, str]:
    """An Accelerator for this machine, the precision it resolved (`no | bf16 | fp16`) and why.

    `log_with`: its experiment trackers (`metrics_log.make_trackers`); `project_dir`: the run dir.
    """
    on_cpu = not torch.cuda.is_available()
    resolved, reason = resolve_precision(precision, "cpu" if on_cpu else "cuda")
    # Accelerate keeps its settings in process-wide singletons; one process may train several runs
    # (the Python API, tests), so forget the previous run's settings but keep the process group.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    accelerator = Accelerator(mixed_precision=resolved, cpu=on_cpu, log_with=log_with or None,
                              project_dir=str(project_dir) if project_dir is not None else None)
    return accelerator, resolved, reason


def _noise_generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + stream)


@torch.no_grad()
def validation_loss(recipe: Recipe, model: torch.nn.Module, val_data: Dataset, cfg: TrainConfig, device: torch.device,
                    accelerator: Accelerator, *, step: int, epoch: int) -> float:
    """Mean loss over every validation sample (the last, partial batch included), with fixed noise (the same
    at every evaluation). The recipe sees the training step reached (`step`, `epoch`) and
    `ctx.validating`, so an objective that changes during training can validate the same way at every
    evaluation (hand-vae: the ELBO at the full KL weight)."""
    batch_size = min(cfg.batch_size, len(val_data))
    batches = -(-len(val_data) // batch_size)
    sampler = EpochBatchSampler(len(val_data), batch_size, seed=cfg.seed, epoch=0, shuffle=False, num_batches=batches)
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0  # summed on the device: one read at the end
    for b, batch in enumerate(DataLoader(val_data, batch_sampler=sampler)):
        batch = {k: v.to(device) for k, v in batch.items()}
        size = len(next(iter(batch.values())))
        ctx = StepContext(step=step, micro_step=b, epoch=epoch, device=device, validating=True,
                          generator=_noise_generator(cfg.seed, 10**9 + b))
        with accelerator.autocast():
            loss, _ = recipe.compute_loss(model, batch, ctx)
        total += loss.detach().double() * size
        count += size
    return float(total) / max(count, 1)


@dataclass
class TrainState:
    """Where the run is. Every checkpoint saves it (as `progress`, `best` and `loss_floor`), so a resume continues exactly."""

    epoch: int = 0  # epochs done
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # optimiser steps done
    micro_step: int = 0  # batches done in all epochs (step x grad_accum_steps, plus an unfinished accumulation)
    # metric, mode, value, epoch (and file: the named best checkpoint; top: the train.keep_top_k list, `enter_top`)
    best: dict[str, Any] = field(default_factory=dict)
    epochs_closed: int = 0  # epochs whose end-of-epoch work (validation, best, checkpoints) is done
    loss_floor: float | None = None  # the lowest window-mean training loss so far (judges whether a checkpoint is good)
    stop: bool = False  # the run's last step is done (not saved: a resumed run works it out again)

    @classmethod
    def new(cls, cfg: TrainConfig) -> TrainState:
        return cls(best={"metric": cfg.best_metric, "mode": cfg.best_mode, "value": None, "epoch": None})

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> TrainState:
        p = checkpoint["progress"]
        return cls(epoch=p["epoch"], batch=p["batch"], step=p["step"], micro_step=p["micro_step"], best=dict(checkpoint["best"]),
                   epochs_closed=p.get("epochs_closed", p["epoch"]), loss_floor=checkpoint.get("loss_floor"))

    def progress(self) -> dict[str, int]:
        """The position, as checkpoints store it."""
        return {"epoch": self.epoch, "batch": self.batch, "step": self.step, "micro_step": self.micro_step,
                "epochs_closed": self.epochs_closed}

    def improved(self, value: float) -> bool:
        if self.best["value"] is None:
            return True
        return value < self.best["value"] if self.best["mode"] == "min" else value > self.best["value"]

    def enter_top(self, value: float, *, epoch: int, k: int) -> list[str]:
        """Rank validation `epoch` among the `k` best kept as checkpoints (`best["top"]`: epoch, value, file,
        best first; ties go to the earlier epoch). It lives in `best`, so every checkpoint saves the list and a
        resumed run keeps the files an uninterrupted one keeps. Returns the files that fell out of the `k`."""
        sign = 1 if self.best["mode"] == "min" else -1
        ranked = [entry for entry in self.best.get("top", []) if entry["epoch"] != epoch]
        ranked.append({"epoch": epoch, "value": float(value), "file": f"top_epoch_{epoch:04d}.pt"})
        ranked.sort(key=lambda entry: (sign * entry["value"], entry["epoch"]))
        self.best["top"] = ranked[:k]
        return [entry["file"] for entry in ranked[k:] if entry["epoch"] != epoch]

    def plateaued(self, value: float, *, min_delta: float, patience: int) -> bool:
        """Count this validation for early stopping (in `best`, so checkpoints keep it): whether `value` has
        not beaten the reference by more than `min_delta` for `patience` validations in a row."""
        reference = self.best.get("early_stop_reference")
        if reference is None or (value < reference - min_delta if self.best["mode"] == "min" else value > reference + min_delta):
            self.best["early_stop_reference"], self.best["validations_without_improvement"] = float(value), 0
        else:
            self.best["validations_without_improvement"] = self.best.get("validations_without_improvement", 0) + 1
        return self.best["validations_without_improvement"] >= patience


class Trainer:
    """One training run of `recipe` into `run_dir`: the parts its steps share, and the steps."""

    def __init__(self, recipe: Recipe, run_dir: Path, *, show_progress: bool = True, resuming: bool = False):
        """Start the accelerator and the experiment trackers (before any seeding: nothing they draw
        changes the run); `resuming` continues the tracker runs the run dir recorded. `set_up` builds the rest."""
        self.recipe, self.run_dir, self.show_progress = recipe, run_dir, show_progress
        self.cfg = cfg = recipe.config.train
        trackers = make_trackers(cfg.trackers(), run_dir, experiment=recipe.name, tags={"genflow.run_dir": str(run_dir)},
                                 tensorboard_tags=recipe.tensorboard_tags, resuming=resuming)
        accelerator, precision, self.precision_reason = make_accelerator(cfg.precision, trackers, project_dir=run_dir)
        self.accelerator, self.device = accelerator, accelerator.device
        keep_freed_memory()  # big activations are not re-faulted page by page every step (genflow/engine/memory.py)
        # threads from the cores other processes leave free; the run's own workers and ranks are not competitors
        self.threads = ThreadBudget(cfg.threads, interval=THREAD_READING_S, confirm=2, first_after=1.0,
                                    share=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                                    family_root=os.getppid() if is_launched_worker() else os.getpid())
        self.thread_changes_reported = 0
        self.rank, self.world, self.is_main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
        if self.is_main:  # what this run used, beside what was asked (a resume on other hardware resolves again)
            if not (run_dir / CONFIG_FILE).is_file():  # the Python API, without `genflow train`'s set-up
                run_dir.mkdir(parents=True, exist_ok=True)
                write_run_config(run_dir, recipe.name, recipe.config)
            record_runtime(run_dir, {"device": str(self.device), "precision_requested": cfg.precision, "precision": precision,
                                     "precision_reason": self.precision_reason, "world_size": self.world,
                                     "cpu": cpu_description() if self.device.type == "cpu" else None,
                                     "threads": {"setting": cfg.threads or "auto", "at_start": torch.get_num_threads()},
                                     "cpu_cores": {"machine": os.cpu_count(), "usable": len(os.sched_getaffinity(0))
                                                   if hasattr(os, "sched_getaffinity") else os.cpu_count()},
                                     "gpu": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
                                     "cuda": torch.version.cuda if self.device.type == "cuda" else None,
                                     "cudnn": torch.backends.cudnn.version() if self.device.type == "cuda" else None})
        if cfg.batch_size % self.world:
            raise ConfigError(f"train.batch_size={cfg.batch_size} must be divisible by the number of processes ({self.world})")
        self.logger = MetricsLogger(run_dir, accelerator, enabled=self.is_main)
        accelerator.init_trackers(recipe.name, config={"recipe": recipe.name, **flatten_config(config_to_dict(recipe.config))})
        if self.is_main:  # so that a resume continues the MLflow / W&B runs
            record_tracker_runs(run_dir, accelerator.trackers)
        self.ckpt_dir = run_dir / "checkpoints"
        self.last_good_path = self.ckpt_dir / "last_good.pt"  # the newest `last` written while the loss was sane
        self.period_losses: dict[LogWindow, tuple[float, int]] = {}  # each window's (loss sum, count) since the last checkpoint
        self.caught_signal: str | None = None  # a preemption signal's name, once one arrived (catch_preemption_signals)
        if self.is_main:  # temp files of checkpoint writes that a kill interrupted (nothing else writes here yet)
            remove_stale_temp_files(self.ckpt_dir)

    def set_up(self, resume_from: Path | None) -> None:
        """Data, plan, model, optimiser, schedule and EMA, restored from `resume_from` when given."""
        cfg, accelerator = self.cfg, self.accelerator
        set_seed(cfg.seed)  # Python's, NumPy's and torch's global generators: a recipe drawing from any is reproducible
        self.train_data, self.val_data = self.recipe.build_datasets()
        self.plan = plan_steps(cfg, self.train_data, self.world)
        model = _built_from_config("the model (model.*)", self.recipe.build_model)
        if self.world > 1 and self.device.type == "cuda":  # batch statistics over the global batch (no-op without BatchNorm)
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.optimizer = _built_from_config("the optimiser (train.optimizer, lr, betas, weight_decay)",
                                            lambda: build_optimizer(model, cfg, self.recipe.parameter_groups(model)))
        self.schedule = build_lr_schedule(self.optimizer, cfg, round(self.plan.steps_per_epoch * (cfg.lr_decay_epochs or cfg.epochs)),
                                          steps_per_epoch=self.plan.steps_per_epoch)
        self.ema = ExponentialMovingAverage(model, cfg.ema_decay) if cfg.ema_decay else None
        self.state = TrainState.new(cfg)
        checkpoint = self.restore(resume_from, model) if resume_from is not None else None

        self.model, self.optimizer = accelerator.prepare(model, self.optimizer)
        if checkpoint is not None and accelerator.scaler is not None and checkpoint.get("scaler"):
            accelerator.scaler.load_state_dict(checkpoint["scaler"])
        self.unwrapped = accelerator.unwrap_model(self.model)  # evaluation, EMA and checkpoints: never the compiled one
        if cfg.compile:  # the training step's forward and backward only (train.compile)
            self.model = _compiled_for_training(self.model)
        if self.ema is not None:
            self.ema.model.to(self.device)
        if resume_from is not None:
            self.logger.truncate_after(self.state.step)
            restore_rng_state(checkpoint["rng"])  # last: nothing the set-up draws shifts the global generators

    def restore(self, path: Path, model: torch.nn.Module) -> dict[str, Any]:
        """Weights, optimiser, schedule, EMA and position from a checkpoint (before `prepare`, as saved); the
        RNG states are restored at the end of `set_up`."""
        checkpoint = load_checkpoint(path)
        if checkpoint.get("optimizer") is None or "progress" not in checkpoint or "scheduler" not in checkpoint:
            raise CheckpointError(f"{path}: weights only (an average, or an import), no optimiser state to resume from; "
                                  f"resume from the run's checkpoints/last.pt, or sample, eval or export this one")
        model.load_state_dict(checkpoint["model"])
        configured = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["scheduler"])
        # The config, not the checkpoint, sets the hyper-parameters (a resume with a lower train.lr after a
        # divergence); unchanged, they are the same numbers, so the resume stays exact.
        for group, values, lr_factor in zip(self.optimizer.param_groups, configured, self.schedule.lr_lambdas):
            group.update(values)
            group["lr"] = group["initial_lr"] * lr_factor(self.schedule.last_epoch)  # where the schedule stands
        self.schedule.base_lrs = [group["initial_lr"] for group in self.optimizer.param_groups]
        if self.ema is not None and checkpoint.get("ema") is not None:
            self.ema.model.load_state_dict(checkpoint["ema"])
        self.state = TrainState.from_checkpoint(checkpoint)
        return checkpoint

    # --- the loop ------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """All epochs from the current position; returns what the run did."""
        cfg, plan, state = self.cfg, self.plan, self.state
        self.reporter = TrainingProgress(enabled=self.is_main, bar=self.show_progress, total_steps=plan.total_steps,
                                         done_steps=state.step, epochs=cfg.epochs)
        self.reporter.message(
            f"training {self.recipe.name} -> {self.run_dir}: {plan.total_steps} steps ({plan.steps_per_epoch} per epoch, "
            f"{cfg.epochs} epochs), global batch {cfg.batch_size}, {len(self.val_data) if self.val_data is not None else 0} "
            f"validation samples; device {self.device}, {self.world} process(es); precision {cfg.precision} -> {self.precision_reason}")
        start_time = time.perf_counter()
        first_step = state.step
        self.window = LogWindow()
        self.profiler = self.step_profiler()
        self.last_metrics: dict[str, float] = {}
        self.model.train()
        state.stop = state.step >= plan.total_steps or state.best.get("stopped_early") is not None
        if state.best.get("stopped_early") is not None:
            self.reporter.message(f"this run stopped early at epoch {state.best['stopped_early']} (train.early_stop_patience): "
                                  f"nothing to resume")
        previous_handlers = self.catch_preemption_signals()
        try:
            if state.batch == 0 and state.epochs_closed < state.epoch:  # a step checkpoint at an epoch's last batch,
                self.end_of_epoch()  # then a kill: validate, pick the best and checkpoint that epoch now
            while not state.stop and state.epoch < cfg.epochs:
                epoch = state.epoch
                for batch in self.epoch_batches(epoch):
                    self.train_step(batch, epoch)
                    self.profile_at_step()
                    self.follow_free_cores()
                    if state.stop:
                        break
                if plan.streaming and state.batch != 0 and not state.stop:  # the stream ran out early: next epoch
                    state.epoch, state.batch = epoch + 1, 0
                if state.batch != 0:  # stopped mid-epoch (max_steps): keep the exact position
                    self.check_losses()
                    self.save_checkpoint("last")
                    break
                self.end_of_epoch()
        except KeyboardInterrupt:
            # Position as of the last optimiser step: an unfinished gradient accumulation is redone on resume.
            partial = state.micro_step - state.step * cfg.grad_accum_steps
            state.micro_step -= partial
            state.batch -= partial
            self.raise_if_diverged_here()
            path = self.save_checkpoint("last")
            self.reporter.close()
            self.logger.end_trackers("KILLED")
            raise GenflowError(f"interrupted at step {state.step}; resume with --resume {self.run_dir} "
                               f"(checkpoint {path})") from None
        finally:
            if self.profiler is not None:  # what was recorded, where the run stopped before the span's end
                self.profiler.finish(state.step)
            self.reporter.close()
            for number, handler in previous_handlers.items():
                signal.signal(number, handler)

        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return TrainResult(run_dir=self.run_dir, steps=state.step, epochs_done=state.epoch,
                           seconds=time.perf_counter() - start_time, best=state.best, last_metrics=self.last_metrics,
                           samples_seen=(state.step - first_step) * cfg.batch_size * cfg.grad_accum_steps,
                           peak_memory_mib=peak_memory_mib(self.device))

    def step_profiler(self) -> StepProfiler | None:
        """torch.profiler over the steps `train.profile` names (main process only), recording from the first of
        them left; None without one."""
        span = self.cfg.profile_steps()
        if span is None or not self.is_main:
            return None
        profiler = step_profiler(self.run_dir / "profile", span, done=self.state.step, total=self.plan.total_steps,
                                 device=self.device, say=self.reporter.message)
        if profiler is not None:
            profiler.at(self.state.step, between_steps=True)
        return profiler

    def profile_at_step(self) -> None:
        """Tell the profiler (if any) where the run is after a batch: it starts, labels steps and stops there."""
        if self.profiler is not None:
            state = self.state
            self.profiler.at(state.step, between_steps=state.micro_step == state.step * self.cfg.grad_accum_steps)

    def epoch_batches(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """This process's rest of the epoch, on the device, from the current position (the wait is timed)."""
        cfg, plan, state = self.cfg, self.plan, self.state
        sampler = None if plan.streaming else EpochBatchSampler(
            len(self.train_data), cfg.batch_size, seed=cfg.seed, epoch=epoch, rank=self.rank, world_size=self.world,
            start_batch=state.batch, num_batches=plan.batches_per_epoch)
        if isinstance(self.train_data, StreamedShards):  # a new shuffle each epoch, and the resume position
            self.train_data.set_epoch(epoch)
            self.train_data.set_position(state.batch, cfg.batch_size // self.world)
        batches = iter(training_loader(self.train_data, sampler, num_workers=cfg.num_workers, local_batch=cfg.batch_size // self.world,
                                       seed=cfg.seed, epoch=epoch, pin=self.device.type == "cuda"))
        for _ in range(plan.batches_per_epoch - state.batch):
            wait_start = time.perf_counter()
            batch = next(batches, None)
            if batch is None:  # a finite stream ran out: the epoch ends here
                return
            self.window.data_wait_s += time.perf_counter() - wait_start
            yield {k: v.to(self.device, non_blocking=True) for k, v in as_tensors(batch).items()}

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int) -> None:
        """One batch: loss -> backward; every `grad_accum_steps` batches the optimiser step, then log and checkpoint."""
        cfg, plan, state, accelerator = self.cfg, self.plan, self.state, self.accelerator
        is_update = (state.micro_step + 1) % cfg.grad_accum_steps == 0
        ctx = StepContext(step=state.step, micro_step=state.micro_step, epoch=epoch, device=self.device,
                          rank=self.rank, world_size=self.world, generator=_noise_generator(cfg.seed, state.micro_step))
        try:
            with nullcontext() if is_update else accelerator.no_sync(self.model):
                with accelerator.autocast():
                    loss, extras = self.recipe.compute_loss(self.model, batch, ctx)
                accelerator.backward(loss / cfg.grad_accum_steps)
        except Exception:  # weights spoiled by a NaN loss not yet checked can break a recipe's code: say that first
            self.raise_if_diverged_here()
            raise
        self.window.add(loss, extras, step=state.step, epoch=epoch)
        state.micro_step += 1
        state.batch += 1
        if not is_update:
            return
        if cfg.grad_clip:
            accelerator.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        if not accelerator.optimizer_step_was_skipped:
            self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.unwrapped)
        state.step += 1
        if state.batch == plan.batches_per_epoch:
            state.epoch, state.batch = epoch + 1, 0

        if state.step % cfg.log_every == 0 or state.step == plan.total_steps:
            self.log_train(epoch)
        elif self.reporter.line_due():  # long steps: a batch log still hears from the run every 30 s
            # main process only, so no gather: the line shows this process's loss
            values = self.window.values(self.window.host_losses(None), self.schedule.get_last_lr()[0], cfg.batch_size)
            self.reporter.update(state.step, epoch + 1, values)
        if cfg.checkpoint_every_steps and state.step % cfg.checkpoint_every_steps == 0:
            self.check_losses()
            self.save_checkpoint("last")
        if state.step >= plan.total_steps:
            state.stop = True
        elif self.preemption_due():
            self.check_losses()
            path = self.save_checkpoint("last")
            self.logger.end_trackers("KILLED")
            raise TrainingPreempted(f"{self.caught_signal or 'a preemption signal'} received: stopped after step {state.step}, "
                                    f"checkpoint {path or self.ckpt_dir / 'last.pt'}; the same command with --resume auto "
                                    f"--name {self.run_dir.name} continues (exit code {PREEMPTED_EXIT_CODE})")

    # --- preemption -----------------------------------------------------------------------------------
    def catch_preemption_signals(self) -> dict[int, Any]:
        """Handlers for `train.preempt_signals` that only note the signal (the step in progress finishes);
        returns the handlers they replace. Signals can only be caught in the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for name in self.cfg.preempt_signals:
            number = getattr(signal, name)
            previous[number] = signal.signal(number, lambda signum, frame: setattr(self, "caught_signal", signal.Signals(signum).name))
        return previous

    def follow_free_cores(self) -> None:
        """Re-decide the thread count when a reading is due (a clock read otherwise); say each change."""
        self.threads.update()
        for threads, others in self.threads.changes[self.thread_changes_reported:]:
            self.reporter.message(f"threads: {threads} (other processes keep {others:.1f} of {len(self.threads.cpus)} "
                                  f"cores busy; train.threads=N fixes the count)")
        self.thread_changes_reported = len(self.threads.changes)

    def preemption_due(self) -> bool:
        """Whether to stop now. One process: a signal has been caught. Several: whether any process caught
        one, agreed at each `train.log_every` step (where the loss is read anyway: no extra per-step sync)."""
        if self.world == 1:
            return self.caught_signal is not None
        if self.state.step % self.cfg.log_every:
            return False
        flag = torch.tensor([1.0 if self.caught_signal else 0.0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def check_losses(self) -> torch.Tensor:
        """The window's losses from every process, on the host `(processes, batches)`; TrainingDiverged if
        one is NaN or Inf. Called on every process at each log point and before every checkpoint and
        evaluation, never per step: a NaN stops the run up to `log_every` steps late (the weights it
        spoiled are never saved), for one device sync and one small gather per call instead of per step."""
        losses = self.window.host_losses(self.accelerator)
        self.window.raise_if_diverged(losses, self.last_good_path, self.cfg.lr, hint=self.divergence_hint())
        if losses.numel():  # a window may be read twice (log point, then checkpoint): the later reading replaces it
            self.period_losses[self.window] = (float(losses.sum()), losses.numel())
        return losses

    def loss_is_sane(self) -> bool:
        """Whether the mean training loss since the last checkpoint is within `train.last_good_loss_ratio` of
        the lowest such mean so far (above it by at most (ratio - 1) x |lowest|); updates the lowest. A
        loss blowing up towards NaN is finite for a while: checkpoints written then are not good ones."""
        total = sum(loss_sum for loss_sum, _ in self.period_losses.values())
        count = sum(n for _, n in self.period_losses.values())
        self.period_losses = {}
        if not count:
            return True
        mean, floor = total / count, self.state.loss_floor
        self.state.loss_floor = mean if floor is None else min(floor, mean)
        return floor is None or mean <= floor + (self.cfg.last_good_loss_ratio - 1) * abs(floor)

    def divergence_hint(self) -> str:
        """A compiled network in 16-bit is the first suspect: torch 2.13's compiled CPU backward of digit4's
        encoder gives NaN gradients in bf16 where eager does not (docs/engine.md, train.compile)."""
        if self.cfg.compile and self.accelerator.mixed_precision in ("bf16", "fp16"):
            return f"train.compile=true with {self.accelerator.mixed_precision}: try train.compile=false or --precision no; "
        return ""

    def raise_if_diverged_here(self) -> None:
        """TrainingDiverged if this process's window holds a NaN or Inf loss. No collective, so safe on the
        paths that not every process takes (an error, Ctrl-C)."""
        try:
            losses = self.window.host_losses(None)
        except Exception:  # the device itself failed: the error being handled says more
            return
        self.window.raise_if_diverged(losses, self.last_good_path, self.cfg.lr, hint=self.divergence_hint())

    def log_train(self, epoch: int) -> None:
        """The window's means to metrics.jsonl, the trackers and the progress line; a new window."""
        step = self.state.step
        values = self.window.values(self.check_losses(), self.schedule.get_last_lr()[0], self.cfg.batch_size)
        self.logger.log("train", step, epoch + 1, values)  # epochs count from 1, as in val records
        self.reporter.update(step, epoch + 1, values)
        self.window = LogWindow()

    def end_of_epoch(self) -> None:
        """Validate and pick the best (every `eval_every` epochs, at the last and at a stop), then checkpoint."""
        cfg, state = self.cfg, self.state
        done_epochs = state.epochs_closed = state.epoch
        self.check_losses()
        dropped: list[str] | None = None  # top-k files this validation pushed out (train.keep_top_k)
        if done_epochs % cfg.eval_every == 0 or done_epochs == cfg.epochs or state.stop:
            if self.is_main:
                metrics = self.evaluate()
                value = metrics.get(state.best["metric"])
                finite = value is not None and math.isfinite(value)
                # the top-k list first, so best.pt and the top file written now hold it with this validation in it
                dropped = state.enter_top(value, epoch=done_epochs, k=cfg.keep_top_k) if finite and cfg.keep_top_k else None
                if finite and state.improved(value):
                    state.best.update(value=float(value), epoch=done_epochs)
                    self.save_best_checkpoint()
                if dropped is not None:
                    self.save_top_checkpoint(done_epochs)
                if state.best["value"] is not None:
                    metrics[f"{state.best['metric']}_best"] = state.best["value"]
                if cfg.early_stop_patience and value is not None and math.isfinite(value) and not state.stop and \
                        state.plateaued(float(value), min_delta=cfg.early_stop_min_delta, patience=cfg.early_stop_patience):
                    state.best["stopped_early"], state.stop = done_epochs, True
                    self.reporter.message(f"stopping early after epoch {done_epochs}: {state.best['metric']} has not improved by more "
                                          f"than {cfg.early_stop_min_delta:g} in {cfg.early_stop_patience} validations "
                                          f"(best {state.best['value']:.6g} at epoch {state.best['epoch']})")
                self.logger.log("val", state.step, done_epochs, metrics)
                plot_loss_trajectory(self.run_dir)
                self.reporter.note(done_epochs, metrics)
                self.last_metrics = metrics
            self.accelerator.wait_for_everyone()
            if cfg.early_stop_patience and self.world > 1:  # the main process decided: every process stops with it
                flag = torch.tensor([1.0 if state.stop else 0.0], device=self.device)
                torch.distributed.broadcast(flag, src=0)
                state.stop = bool(flag.item())
        if done_epochs % cfg.checkpoint_every == 0:
            self.save_checkpoint(f"epoch_{done_epochs:04d}")
        self.save_checkpoint("last")
        if dropped is not None:  # after last.pt: a kill before it leaves every file the previous last.pt lists
            self.remove_unlisted_top_checkpoints(dropped)
        self.accelerator.wait_for_everyone()

    def evaluate(self) -> dict[str, float]:
        """Validation loss + the recipe's metrics and pictures (main process; EMA weights if kept)."""
        eval_model = self.ema.model if self.ema is not None else self.unwrapped
        eval_model.eval()
        metrics: dict[str, float] = {}
        if self.val_data is not None and len(self.val_data) > 0:
            metrics["val_loss"] = validation_loss(self.recipe, eval_model, self.val_data, self.cfg, self.device, self.accelerator,
                                                  step=self.state.step, epoch=self.state.epoch)
        # Outside autocast, but a recipe that calls the model's forward gets Accelerate's autocast wrapper
        # (mixed precision); models are tested to compute the same function either way.
        with torch.no_grad():
            metrics.update(self.recipe.evaluate(eval_model, self.val_data, self.device))
            for name, path in self.recipe.save_figures(eval_model, self.val_data, self.run_dir, self.device).items():
                self.logger.log_image_file(name, path, self.state.step)
        self.model.train()
        return metrics

    # --- checkpoints (callers check the losses first: weights are never saved after a NaN) ------------
    def save_checkpoint(self, name: str) -> Path | None:
        if not self.is_main:
            return None
        good = name == "last" and self.loss_is_sane() and all(bool(torch.isfinite(p).all()) for p in self.unwrapped.parameters())
        checkpoint = training_checkpoint(model=self.unwrapped, ema=self.ema.model if self.ema is not None else None,
                                         optimizer=self.optimizer, schedule=self.schedule, scaler=self.accelerator.scaler,
                                         progress=self.state.progress(), best=self.state.best,
                                         loss_floor=self.state.loss_floor)
        path = atomic_torch_save(checkpoint, self.ckpt_dir / f"{name}.pt")
        if good:  # last_good.pt follows last.pt while the loss is sane and every weight finite; else the older one stays
            link_checkpoint(path, self.last_good_path)
        return path

    def save_best_checkpoint(self) -> None:
        """`best.pt`, and the same file under the recipe's descriptive name (the previous one removed)."""
        path = self.save_checkpoint("best")
        best, pattern = self.state.best, self.recipe.best_checkpoint_name
        if pattern is None or path is None:
            return
        named = self.ckpt_dir / (pattern.format(epoch=best["epoch"], metric=best["metric"], value=best["value"]) + ".pt")
        previous = best.get("file")
        if previous and previous != named.name:
            (self.ckpt_dir / previous).unlink(missing_ok=True)
        best["file"] = named.name
        link_checkpoint(path, named)

    def save_top_checkpoint(self, epoch: int) -> None:
        """`top_epoch_XXXX.pt` if validation `epoch` entered the `train.keep_top_k` best (`TrainState.enter_top`)."""
        best = self.state.best
        entry = next((entry for entry in best["top"] if entry["epoch"] == epoch), None)
        if entry is None:
            return
        path = self.ckpt_dir / entry["file"]
        if best["epoch"] == epoch:  # best.pt was just written with these weights and this list: no second write
            link_checkpoint(self.ckpt_dir / "best.pt", path)
        else:
            self.save_checkpoint(path.stem)

    def remove_unlisted_top_checkpoints(self, dropped: list[str]) -> None:
        """Remove the top files the list no longer names (after last.pt is written, so every file the last.pt
        on disk lists exists): those that fell out of the K (`dropped`), and any that a run killed between
        writing a top file and its last.pt left behind and the resumed run did not write again (said)."""
        listed = {entry["file"] for entry in self.state.best["top"]}
        for path in sorted(self.ckpt_dir.glob("top_epoch_*.pt")):
            if path.name not in listed:
                path.unlink(missing_ok=True)
                if path.name not in dropped:
                    self.reporter.message(f"removed {path}: left by a run stopped between its checkpoint writes, and "
                                          f"not among the train.keep_top_k={self.cfg.keep_top_k} best validations")


def _compiled_for_training(model: torch.nn.Module) -> torch.nn.Module:
    """`model` under torch.compile (its parameters and state_dict stay `model`'s own). Kernels compiled for the
    CPU read the thread count when they run, not when they are built, so the engine may change it during a
    run. A machine that cannot build kernels (no C++ compiler; on a GPU, no Triton) fails the first step with
    one ConfigError naming train.compile; an op torch.compile cannot capture runs eager (a graph break)."""
    compiled = torch.compile(model, options={"cpp.dynamic_threads": True})
    forward = compiled.forward

    def forward_or_config_error(*args, **kwargs):
        try:
            return forward(*args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as exc:
            reason = str(exc).strip().splitlines()[0][:300]
            raise ConfigError(f"train.compile=true: torch.compile could not build the model's kernels here ({reason}); "
                              f"set train.compile=false to train eager") from exc

    compiled.forward = forward_or_config_error
    return compiled


def _built_from_config(what: str, build):
    """`build()`; an error that the config's values cause in library code (a negative width, betas out of
    range the config did not declare) becomes one ConfigError naming what was built (--debug: the traceback)."""
    try:
        return build()
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"could not build {what} from the config: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc


def train(recipe: Recipe, run_dir: Path, resume_from: Path | None = None, show_progress: bool = True,
          discard_failed_start: bool = False) -> TrainResult:
    """Train `recipe` into `run_dir`, optionally resuming from a checkpoint file.

    `discard_failed_start`: `run_dir` was made for this run; if the data, model or optimiser cannot be
    built, remove it again (a failed start leaves no run dir behind).
    """
    trainer = None
    try:
        trainer = Trainer(recipe, run_dir, show_progress=show_progress, resuming=resume_from is not None)
        trainer.set_up(resume_from)
    except BaseException:
        if trainer is not None:
            trainer.logger.end_trackers("FAILED")
        if discard_failed_start and not (run_dir / "checkpoints").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    try:
        return trainer.run()
    except BaseException:
        trainer.logger.end_trackers("FAILED")  # a no-op after Ctrl-C's KILLED
        raise
