"""Checkpoints: one file per checkpoint, written atomically, loaded without executing code.

A checkpoint is a `torch.save`d dict of tensors and plain Python values only (model and EMA weights,
optimiser, LR scheduler and grad-scaler state, RNG states, progress, best metric), so it loads with
`torch.load(weights_only=True)`. It is written to a temporary file in the same directory and renamed
over the old one, so a crash mid-write never leaves a half checkpoint behind.

Several checkpoints of a run average into one (`write_averaged_checkpoint`, `genflow export --average`):
`checkpoints/average_best_K.pt` / `average_last_K.pt`, weights only, loadable like any other.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

import genflow
from genflow.errors import CheckpointError, ConfigError

__all__ = ["atomic_write_text", "atomic_torch_save", "remove_stale_temp_files", "load_checkpoint", "load_foreign_checkpoint", "capture_rng_state",
           "restore_rng_state", "link_checkpoint", "training_checkpoint", "average_checkpoints", "checkpoints_to_average",
           "write_averaged_checkpoint"]

_TEMP_GLOB = ".*.pt.*.tmp"  # what atomic_torch_save names its temp files


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`text` to a temp file beside `path`, then renamed over it: a reader sees the old file or the new one,
    never half of one (config.yaml, sweep.json, trackers.json, eval results)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """`torch.save` to a temp file beside `path`, fsync, then rename over `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # disk full, a file where the directory should be, no permission
            kept = "the previous one is kept" if path.is_file() else "none was written"
            raise CheckpointError(f"{path}: could not write the checkpoint ({exc.strerror or exc}); {kept}") from exc
        raise
    return path


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temp files of checkpoint writes that were killed part-way (call before this run writes)."""
    directory = Path(directory)
    stale = sorted(directory.glob(_TEMP_GLOB)) if directory.is_dir() else []
    for file in stale:
        file.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (`weights_only=True`); a missing or unreadable file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"{path}: not a readable genflow checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a genflow checkpoint (no 'model' entry)")
    return state


class _Placeholder:
    """Stands for an object of a class a foreign checkpoint names but genflow does not load (a Lightning
    loop's state, a callback, a function): built and filled without running any of the file's code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def load_foreign_checkpoint(path: str | Path, *, max_placeholders: int = 64) -> tuple[dict[str, Any], list[str]]:
    """Load another framework's torch checkpoint (a Lightning `.ckpt`, say) without executing its code.

    Tensors and plain values load as with `weights_only=True`; every class or function the file names
    beyond those (loop and callback states, hyper-parameter containers, ...) is replaced by an inert
    placeholder, so nothing the file refers to is imported or called.

    Returns:
        The loaded dict, and the dotted names of what was replaced by placeholders (sorted).

    Raises:
        CheckpointError: a missing or unreadable file, or one that is not a dict.
    """
    import pickle

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    placeholders: dict[str, type] = {}
    while True:
        try:
            with torch.serialization.safe_globals([(cls, name) for name, cls in placeholders.items()]):
                state = torch.load(path, map_location="cpu", weights_only=True)
            break
        except pickle.UnpicklingError as exc:
            found = _UNSUPPORTED_GLOBAL.search(str(exc))
            if found is None or len(placeholders) >= max_placeholders:
                raise CheckpointError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[-1][:200]})") from None
            name = found.group(1) if "." in found.group(1) else f"builtins.{found.group(1)}"
            placeholders[name] = type(name.rpartition(".")[2], (_Placeholder,), {"__module__": name.rpartition(".")[0]})
        except Exception as exc:  # truncated or foreign files raise several types
            raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, found {type(state).__name__}")
    return state, sorted(placeholders)


def capture_rng_state() -> dict[str, Any]:
    """Global RNG states (python, numpy, torch CPU and CUDA) as weights_only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    """torch.save keeps tuples, but be lenient with lists (random.setstate needs tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


def link_checkpoint(path: Path, name: Path) -> None:
    """`name` becomes the same file as `path` (a hard link: no extra disk; a copy where links fail), atomically."""
    tmp = name.with_name(f".{name.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, name)


def training_checkpoint(*, model: torch.nn.Module, ema: torch.nn.Module | None, optimizer: torch.optim.Optimizer,
                        schedule: Any, scaler: Any, progress: dict[str, int], best: dict[str, Any],
                        loss_floor: float | None) -> dict[str, Any]:
    """What a training checkpoint holds: weights (and EMA weights), optimiser, schedule and grad-scaler
    states, the global RNG states, the run's position and best metric, and the genflow version. Plain
    tensors and Python values only, so `load_checkpoint` reads it without executing code."""
    return {
        "model": model.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": schedule.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": capture_rng_state(),
        "progress": progress,
        "best": dict(best),
        "loss_floor": loss_floor,  # judges which later checkpoints are good (not the weights: a run resumed
        # half-way may hold another value, from its other checkpoint periods)
        "genflow_version": genflow.__version__,
    }


def average_checkpoints(paths: Sequence[str | Path]) -> dict[str, torch.Tensor]:
    """The equal-weight mean of the weights of several checkpoints of one model, as a state dict.

    Each checkpoint gives its EMA weights where it kept them, else its model weights (the choice
    `load_run` makes); all must be of one kind. Floating tensors are summed in float64, divided and cast
    back to their dtype; other tensors (integer buffers such as BatchNorm's `num_batches_tracked`) are
    taken from the last of `paths`, so pass them oldest first. BatchNorm running means and variances are
    averaged like any float, not recomputed on data.

    Raises:
        CheckpointError: no paths, an unreadable file, EMA and plain weights mixed, or weights whose
            names or shapes differ from the first checkpoint's (named).
    """
    return _average(paths)[0]


def _average(paths: Sequence[str | Path]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """`average_checkpoints`, and the progress of each checkpoint (each file is read once)."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    paths = [Path(p) for p in paths]
    total: dict[str, torch.Tensor] = {}
    reference: dict[str, torch.Tensor] = {}
    first_kind, progress = None, []
    for path in paths:
        checkpoint = load_checkpoint(path)
        progress.append(dict(checkpoint.get("progress") or {}))
        kind = "ema" if checkpoint.get("ema") is not None else "model"
        weights = checkpoint[kind]
        if first_kind is None:
            first_kind, reference = kind, weights
        elif kind != first_kind:
            raise CheckpointError(f"{path}: holds {'EMA' if kind == 'ema' else 'no EMA'} weights but {paths[0].name} "
                                  f"{'does' if first_kind == 'ema' else 'does not'}; average checkpoints of one kind")
        missing, extra = sorted(set(reference) - set(weights)), sorted(set(weights) - set(reference))
        if missing or extra:
            differences = [f"missing {', '.join(missing[:3])}" if missing else "", f"extra {', '.join(extra[:3])}" if extra else ""]
            raise CheckpointError(f"{path}: its weights are not those of {paths[0].name} "
                                  f"({'; '.join(d for d in differences if d)}): not checkpoints of one model")
        for name, tensor in weights.items():
            if tensor.shape != reference[name].shape:
                raise CheckpointError(f"{path}: {name} has shape {tuple(tensor.shape)}, {paths[0].name} has "
                                      f"{tuple(reference[name].shape)}: not checkpoints of one model")
            if not reference[name].is_floating_point():
                total[name] = tensor.clone()  # counters: the newest
            elif name in total:
                total[name] += tensor.double()
            else:
                total[name] = tensor.double()
    averaged = {name: (value / len(paths)).to(reference[name].dtype) if reference[name].is_floating_point() else value
                for name, value in total.items()}
    return averaged, progress


_EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt")


def checkpoints_to_average(checkpoint_dir: str | Path, spec: str) -> tuple[str, int, list[Path]]:
    """The checkpoints `genflow export --average SPEC` averages, oldest first, with the parsed kind and count.

    `best:K`: the K best validations that `train.keep_top_k` kept (`top_epoch_XXXX.pt`), as ranked by the
    list in `last.pt`. `last:K`: the K newest periodic checkpoints `epoch_XXXX.pt` (written every
    `train.checkpoint_every` epochs); `last.pt` is not one of them: it repeats the newest epoch file or
    holds a position mid-epoch, which would break the even spacing of the snapshots.

    Raises:
        ConfigError: `spec` is not `best:K` / `last:K` with K a positive integer.
        CheckpointError: fewer than K such checkpoints (the message names those there are).
    """
    checkpoint_dir = Path(checkpoint_dir)
    kind, _, count = spec.partition(":")
    if kind not in ("best", "last") or not count.isdigit() or int(count) < 1:
        raise ConfigError(f"--average {spec!r}: expected best:K or last:K with K a positive integer, e.g. best:3")
    k = int(count)
    if kind == "best":
        last = checkpoint_dir / "last.pt"
        top = load_checkpoint(last).get("best", {}).get("top", []) if last.is_file() else []
        if len(top) < k:
            kept = ", ".join(entry["file"] for entry in top) or "none"
            hint = f"; or average best:{len(top)}" if top else ""
            raise CheckpointError(f"--average best:{k}: {checkpoint_dir} keeps {len(top)} top checkpoint(s) ({kept}); "
                                  f"train with train.keep_top_k={k} or more to keep {k}{hint}")
        chosen = sorted(top[:k], key=lambda entry: entry["epoch"])
        paths = [checkpoint_dir / entry["file"] for entry in chosen]
        for path in paths:
            if not path.is_file():
                raise CheckpointError(f"{path}: listed among the top checkpoints in {last.name} but not there")
        return kind, k, paths
    periodic = sorted((int(m.group(1)), p) for p in checkpoint_dir.glob("epoch_*.pt") if (m := _EPOCH_FILE.fullmatch(p.name)))
    if len(periodic) < k:
        have = ", ".join(p.stem for _, p in periodic) or "none"
        raise CheckpointError(f"--average last:{k}: {checkpoint_dir} has {len(periodic)} periodic checkpoint(s) ({have}); "
                              f"train.checkpoint_every sets how often they are written")
    return kind, k, [p for _, p in periodic[-k:]]


def write_averaged_checkpoint(checkpoint_dir: str | Path, spec: str) -> Path:
    """Average the checkpoints `spec` names (`checkpoints_to_average`) into `average_<best|last>_K.pt` beside
    them: the weights as `model` (no `ema`: where the run kept EMA weights, those were averaged), the
    newest one's progress, and `averaged_from` (file, epoch and step of each)."""
    checkpoint_dir = Path(checkpoint_dir)
    kind, k, paths = checkpoints_to_average(checkpoint_dir, spec)
    weights, progress = _average(paths)
    state = {"model": weights, "ema": None, "progress": progress[-1],
             "averaged_from": [{"file": path.name, "epoch": p.get("epoch"), "step": p.get("step")} for path, p in zip(paths, progress)],
             "genflow_version": genflow.__version__}
    return atomic_torch_save(state, checkpoint_dir / f"average_{kind}_{k}.pt")
