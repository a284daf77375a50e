"""The training engine: one loop for every recipe, on HuggingFace Accelerate.

Read top to bottom: set up (accelerator, data, model, optimiser, schedule, EMA, resume), then per
epoch per batch: loss -> finite check -> backward -> (every `grad_accum_steps`) clip, step, schedule,
EMA -> log; per epoch: validate, pick best, checkpoint. Accelerate gives mixed precision and DDP
(NCCL on GPUs, gloo on CPU); the data order and the noise come from (seed, epoch, step), which makes
resume exact and N processes equivalent to one with the same global batch.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from torch.utils.data import DataLoader, Dataset, IterableDataset

import genflow
from genflow.config import TrainConfig
from genflow.engine.checkpoint import atomic_torch_save, capture_rng_state, load_checkpoint, restore_rng_state
from genflow.engine.metrics_log import MetricsLogger, plot_loss_trajectory
from genflow.engine.optim import EpochBatchSampler, ExponentialMovingAverage, build_lr_schedule, build_optimizer
from genflow.engine.precision import cpu_description, resolve_precision
from genflow.engine.progress import TrainingProgress
from genflow.engine.recipe import Recipe, StepContext
from genflow.engine.run_dir import CONFIG_FILE, record_runtime, write_run_config
from genflow.errors import ConfigError, GenflowError

__all__ = ["train", "TrainResult", "TrainingDiverged", "make_accelerator"]


class TrainingDiverged(GenflowError):
    """The loss became NaN or Inf; training stopped and the last good checkpoint was kept."""


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


def make_accelerator(precision: str) -> tuple[Accelerator, str, str]:
    """An Accelerator for this machine, the precision it resolved (`no | bf16 | fp16`) and why."""
    on_cpu = not torch.cuda.is_available()
    resolved, reason = resolve_precision(precision, "cpu" if on_cpu else "cuda")
    # Accelerate keeps its settings in process-wide singletons; one process may train several runs
    # (the Python API, tests), so forget the previous run's settings but keep the process group.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(mixed_precision=resolved, cpu=on_cpu), resolved, reason


def _loader(dataset: Dataset, sampler: EpochBatchSampler | None, cfg: TrainConfig, pin: bool, local_batch: int) -> DataLoader:
    if isinstance(dataset, IterableDataset):  # a stream: workers produce batches in the background
        return DataLoader(dataset, batch_size=local_batch, num_workers=cfg.num_workers, pin_memory=pin, drop_last=True,
                          prefetch_factor=4 if cfg.num_workers else None)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers, pin_memory=pin,
                      persistent_workers=False)


def _noise_generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + stream)


@torch.no_grad()
def validation_loss(recipe: Recipe, model: torch.nn.Module, val_data: Dataset, cfg: TrainConfig, device: torch.device,
                    accelerator: Accelerator) -> float:
    """Mean loss over the validation set, with fixed noise (the same at every evaluation)."""
    batch_size = min(cfg.batch_size, len(val_data))
    sampler = EpochBatchSampler(len(val_data), batch_size, seed=cfg.seed, epoch=0, shuffle=False)
    total, count = 0.0, 0
    for b, batch in enumerate(DataLoader(val_data, batch_sampler=sampler)):
        batch = {k: v.to(device) for k, v in batch.items()}
        ctx = StepContext(step=b, micro_step=b, epoch=0, device=device, generator=_noise_generator(cfg.seed, 10**9 + b))
        with accelerator.autocast():
            loss, _ = recipe.compute_loss(model, batch, ctx)
        total += float(loss) * batch_size
        count += batch_size
    return total / max(count, 1)


def train(recipe: Recipe, run_dir: Path, resume_from: Path | None = None, show_progress: bool = True) -> TrainResult:
    """Train `recipe` into `run_dir`, optionally resuming from a checkpoint file."""
    cfg: TrainConfig = recipe.config.train
    accelerator, precision, precision_reason = make_accelerator(cfg.precision)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    is_main = accelerator.is_main_process
    if is_main:  # what this run used, beside what was asked (a resume on other hardware resolves again)
        if not (run_dir / CONFIG_FILE).is_file():  # the Python API, without `genflow train`'s set-up
            run_dir.mkdir(parents=True, exist_ok=True)
            write_run_config(run_dir, recipe.name, recipe.config)
        record_runtime(run_dir, {"device": str(device), "precision_requested": cfg.precision, "precision": precision,
                                 "precision_reason": precision_reason, "world_size": world,
                                 "cpu": cpu_description() if device.type == "cpu" else None,
                                 "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None})
    if cfg.batch_size % world:
        raise ConfigError(f"train.batch_size={cfg.batch_size} must be divisible by the number of processes ({world})")
    torch.manual_seed(cfg.seed)

    # --- data, model, optimiser --------------------------------------------------------------------
    train_data, val_data = recipe.build_datasets()
    streaming = isinstance(train_data, IterableDataset)
    if streaming:  # an iterator of samples (simulator, generator): no length, no replay
        if cfg.batches_per_epoch is None:
            raise ConfigError("config key 'train.batches_per_epoch': a streamed training set has no length; "
                              "set how many batches make an epoch")
        batches_per_epoch = cfg.batches_per_epoch // cfg.grad_accum_steps * cfg.grad_accum_steps
    else:
        batches_per_epoch = len(train_data) // cfg.batch_size // cfg.grad_accum_steps * cfg.grad_accum_steps
        if cfg.batches_per_epoch is not None:
            batches_per_epoch = min(batches_per_epoch, cfg.batches_per_epoch // cfg.grad_accum_steps * cfg.grad_accum_steps)
    if batches_per_epoch == 0:
        size = "the stream" if streaming else f"the training set has {len(train_data)} samples,"
        raise ConfigError(f"{size} fewer than one step of "
                          f"train.batch_size={cfg.batch_size} x grad_accum_steps={cfg.grad_accum_steps}")
    steps_per_epoch = batches_per_epoch // cfg.grad_accum_steps
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    model = recipe.build_model()
    if world > 1 and device.type == "cuda":  # batch statistics over the global batch (no-op without BatchNorm)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, cfg, recipe.parameter_groups(model))
    schedule = build_lr_schedule(optimizer, cfg, steps_per_epoch * cfg.epochs)
    ema = ExponentialMovingAverage(model, cfg.ema_decay) if cfg.ema_decay else None
    progress = {"epoch": 0, "batch": 0, "step": 0, "micro_step": 0}
    best = {"metric": cfg.best_metric, "mode": cfg.best_mode, "value": None, "epoch": None}

    if resume_from is not None:
        state = load_checkpoint(resume_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.model.load_state_dict(state["ema"])
        restore_rng_state(state["rng"])
        progress, best = dict(state["progress"]), dict(state["best"])

    model, optimizer = accelerator.prepare(model, optimizer)
    if resume_from is not None and accelerator.scaler is not None and state.get("scaler"):
        accelerator.scaler.load_state_dict(state["scaler"])
    unwrapped = accelerator.unwrap_model(model)
    if ema is not None:
        ema.model.to(device)

    logger = MetricsLogger(run_dir, enabled=is_main, tags=recipe.tensorboard_tags)
    if resume_from is not None:
        logger.truncate_after(progress["step"])
    ckpt_dir = run_dir / "checkpoints"

    def save_checkpoint(name: str) -> Path | None:
        if not is_main:
            return None
        state = {
            "model": unwrapped.state_dict(),
            "ema": ema.model.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "rng": capture_rng_state(),
            "progress": dict(progress),
            "best": dict(best),
            "genflow_version": genflow.__version__,
        }
        return atomic_torch_save(state, ckpt_dir / f"{name}.pt")

    def save_best_checkpoint() -> None:
        """`best.pt`, and the same file under the recipe's descriptive name (the previous one removed)."""
        path = save_checkpoint("best")
        if recipe.best_checkpoint_name is None or path is None:
            return
        named = ckpt_dir / (recipe.best_checkpoint_name.format(epoch=best["epoch"], metric=best["metric"], value=best["value"]) + ".pt")
        previous = best.get("file")
        if previous and previous != named.name:
            (ckpt_dir / previous).unlink(missing_ok=True)
        best["file"] = named.name
        tmp = named.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)  # a second name for the same bytes: no extra disk
        except OSError:
            shutil.copyfile(path, tmp)
        os.replace(tmp, named)

    def evaluate() -> dict[str, float]:
        """Validation loss + the recipe's metrics and pictures (main process; EMA weights if kept)."""
        eval_model = ema.model if ema is not None else unwrapped
        eval_model.eval()
        metrics: dict[str, float] = {}
        if val_data is not None and len(val_data) > 0:
            metrics["val_loss"] = validation_loss(recipe, eval_model, val_data, cfg, device, accelerator)
        # Outside autocast, but a recipe that calls the model's forward gets Accelerate's autocast wrapper
        # (mixed precision); models are tested to compute the same function either way.
        with torch.no_grad():
            metrics.update(recipe.evaluate(eval_model, val_data, device))
            for name, path in recipe.save_figures(eval_model, val_data, run_dir, device).items():
                logger.log_image_file(name, path, progress["step"])
        model.train()
        return metrics

    def improved(value: float) -> bool:
        if best["value"] is None:
            return True
        return value < best["value"] if best["mode"] == "min" else value > best["value"]

    # --- the loop ------------------------------------------------------------------------------------
    reporter = TrainingProgress(enabled=is_main, bar=show_progress, total_steps=total_steps, done_steps=progress["step"],
                                epochs=cfg.epochs)
    reporter.message(f"training {recipe.name} -> {run_dir}: {total_steps} steps ({steps_per_epoch} per epoch, "
                     f"{cfg.epochs} epochs), global batch {cfg.batch_size}, {len(val_data) if val_data is not None else 0} "
                     f"validation samples; device {device}, {world} process(es); precision {cfg.precision} -> {precision_reason}")
    start_time = time.perf_counter()
    first_step = progress["step"]
    window = {"n": 0, "t": start_time, "sums": {}, "data_wait_s": 0.0}  # sums of logged values between log lines

    def window_values() -> dict[str, float]:
        elapsed = time.perf_counter() - window["t"]
        return {**{k: v / window["n"] for k, v in window["sums"].items()}, "lr": schedule.get_last_lr()[0],
                "samples_per_s": window["n"] * cfg.batch_size / max(elapsed, 1e-9),
                "data_wait_fraction": window["data_wait_s"] / max(elapsed, 1e-9)}
    last_metrics: dict[str, float] = {}
    model.train()
    stop = progress["step"] >= total_steps
    try:
        while not stop and progress["epoch"] < cfg.epochs:
            epoch = progress["epoch"]
            sampler = None if streaming else EpochBatchSampler(
                len(train_data), cfg.batch_size, seed=cfg.seed, epoch=epoch, rank=rank, world_size=world,
                start_batch=progress["batch"], num_batches=batches_per_epoch)
            batches = iter(_loader(train_data, sampler, cfg, pin=device.type == "cuda", local_batch=cfg.batch_size // world))
            for _ in range(batches_per_epoch - progress["batch"]):
                wait_start = time.perf_counter()
                batch = next(batches, None)
                if batch is None:  # a finite stream ran out: the epoch ends here
                    break
                window["data_wait_s"] += time.perf_counter() - wait_start
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                is_update = (progress["micro_step"] + 1) % cfg.grad_accum_steps == 0
                ctx = StepContext(step=progress["step"], micro_step=progress["micro_step"], epoch=epoch, device=device,
                                  rank=rank, world_size=world, generator=_noise_generator(cfg.seed, progress["micro_step"]))
                with nullcontext() if is_update else accelerator.no_sync(model):
                    with accelerator.autocast():
                        loss, extras = recipe.compute_loss(model, batch, ctx)
                    losses = accelerator.gather(loss.detach().float().reshape(1))
                    if not torch.isfinite(losses).all():
                        kept = ckpt_dir / "last.pt"
                        raise TrainingDiverged(
                            f"loss became {float(losses[~torch.isfinite(losses)][0])} at step {progress['step']} "
                            f"(epoch {epoch}); training stopped. Last good checkpoint: "
                            f"{kept if kept.exists() else 'none written yet'}. Lower train.lr or enable train.grad_clip.")
                    accelerator.backward(loss / cfg.grad_accum_steps)
                progress["micro_step"] += 1
                progress["batch"] += 1
                window["n"] += 1
                for key, value in {"loss": float(losses.mean()), **extras}.items():
                    window["sums"][key] = window["sums"].get(key, 0.0) + float(value)
                if not is_update:
                    continue
                if cfg.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                if not accelerator.optimizer_step_was_skipped:
                    schedule.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update(unwrapped)
                progress["step"] += 1
                if progress["batch"] == batches_per_epoch:
                    progress["epoch"], progress["batch"] = epoch + 1, 0

                if progress["step"] % cfg.log_every == 0 or progress["step"] == total_steps:
                    values = window_values()
                    logger.log("train", progress["step"], epoch + 1, values)  # epochs count from 1, as in val records
                    reporter.update(progress["step"], epoch + 1, values)
                    window = {"n": 0, "t": time.perf_counter(), "sums": {}, "data_wait_s": 0.0}
                elif reporter.line_due():  # long steps: a batch log still hears from the run every 30 s
                    reporter.update(progress["step"], epoch + 1, window_values())
                if cfg.checkpoint_every_steps and progress["step"] % cfg.checkpoint_every_steps == 0:
                    save_checkpoint("last")
                if progress["step"] >= total_steps:
                    stop = True
                    break

            if streaming and progress["batch"] != 0 and not stop:  # the stream ran out early: next epoch
                progress["epoch"], progress["batch"] = epoch + 1, 0
            if progress["batch"] != 0:  # stopped mid-epoch (max_steps): keep the exact position
                save_checkpoint("last")
                break
            done_epochs = progress["epoch"]
            if done_epochs % cfg.eval_every == 0 or done_epochs == cfg.epochs or stop:
                if is_main:
                    last_metrics = evaluate()
                    value = last_metrics.get(best["metric"])
                    if value is not None and math.isfinite(value) and improved(value):
                        best.update(value=float(value), epoch=done_epochs)
                        save_best_checkpoint()
                    if best["value"] is not None:
                        last_metrics[f"{best['metric']}_best"] = best["value"]
                    logger.log("val", progress["step"], done_epochs, last_metrics)
                    plot_loss_trajectory(run_dir)
                    reporter.note(done_epochs, last_metrics)
                accelerator.wait_for_everyone()
            if done_epochs % cfg.checkpoint_every == 0:
                save_checkpoint(f"epoch_{done_epochs:04d}")
            save_checkpoint("last")
            accelerator.wait_for_everyone()
    except KeyboardInterrupt:
        # Position as of the last optimiser step: an unfinished gradient accumulation is redone on resume.
        partial = progress["micro_step"] - progress["step"] * cfg.grad_accum_steps
        progress["micro_step"] -= partial
        progress["batch"] -= partial
        path = save_checkpoint("last")
        reporter.close()
        logger.close()
        raise GenflowError(f"interrupted at step {progress['step']}; resume with --resume {run_dir} "
                           f"(checkpoint {path})") from None
    finally:
        reporter.close()

    logger.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(run_dir=run_dir, steps=progress["step"], epochs_done=progress["epoch"],
                       seconds=time.perf_counter() - start_time, best=best, last_metrics=last_metrics,
                       samples_seen=(progress["step"] - first_step) * cfg.batch_size * cfg.grad_accum_steps,
                       peak_memory_mib=peak_memory_mib(accelerator.device))
