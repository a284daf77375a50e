"""Metrics logging, main process only: `metrics.jsonl` (one JSON object a line), always, and the
experiment trackers of `train.log_with` through Accelerate (`Accelerator(log_with=...)`,
`init_trackers`, `log`, `end_training`):

- tensorboard: `RUN/tb`, under the recipe's tag names (`Recipe.tensorboard_tags`), with its pictures;
- mlflow: a local file store `RUN/mlruns` (no server; `mlflow ui --backend-store-uri RUN/mlruns`);
- wandb: Weights & Biases, its local files in `RUN/wandb`.

Every tracker gets the same scalars as metrics.jsonl, named `kind/name` (`train/loss`, `val/val_loss`),
and the run's resolved config, flattened to `section.key` scalars, as hyper-parameters.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, on_main_process

from genflow.errors import GenflowError

__all__ = ["MetricsLogger", "RunTensorBoardTracker", "RunMLflowTracker", "make_trackers", "flatten_config",
           "read_metrics", "plot_loss_trajectory"]

# train.log_with name -> (module it imports, package to pip install)
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
                    "mlflow": ("mlflow", "mlflow-skinny")}


class RunTensorBoardTracker(TensorBoardTracker):
    """Accelerate's TensorBoard tracker writing to `RUN/tb`, under the recipe's tag names."""

    def __init__(self, run_dir: Path, tags: dict[str, str] | None = None):
        super().__init__("tb", run_dir)  # Accelerate writes to logging_dir / run_name
        self.tags = dict(tags or {})

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        super().log({self.tags.get(k, k): v for k, v in values.items()}, step=step, **kwargs)

    @on_main_process
    def log_image_file(self, tag: str, path: Path, step: int) -> None:
        """Mirror a PNG the recipe wrote (e.g. samples.png) into TensorBoard's images."""
        import matplotlib.image

        image = matplotlib.image.imread(str(path))[..., :3]
        self.writer.add_image(self.tags.get(tag, tag), image, step, dataformats="HWC")


class RunMLflowTracker(MLflowTracker):
    """Accelerate's MLflow tracker on a local file store in the run dir: no server.

    The tracking URI is process-wide in MLflow, so it is set while the run is open and restored at
    `finish`. MLflow 3 keeps the file store in maintenance mode behind MLFLOW_ALLOW_FILE_STORE=true
    (its database store needs SQLAlchemy, which mlflow-skinny lacks); that is set the same way.
    Each `genflow train` (the first and each resume) is one MLflow run, named after the run dir.
    """

    def __init__(self, store: Path, *, experiment_name: str, run_name: str, tags: dict[str, str]):
        super().__init__(experiment_name=experiment_name, run_name=run_name, tags=tags)
        self.store_uri = Path(store).resolve().as_uri()
        self._saved_env: dict[str, str | None] | None = None

    @on_main_process
    def start(self) -> None:
        import mlflow

        self._saved_env = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE")}
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        mlflow.set_tracking_uri(self.store_uri)
        super().start()

    @on_main_process
    def finish(self, status: str = "FINISHED") -> None:
        """End the MLflow run (`FINISHED`, `FAILED` or `KILLED`) and restore the process's MLflow settings."""
        import mlflow

        if self._saved_env is None:  # not started, or finished already
            return
        mlflow.end_run(status)
        mlflow.set_tracking_uri(self._saved_env["MLFLOW_TRACKING_URI"])  # None: back to MLflow's default
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = None


def make_trackers(names: list[str], run_dir: Path, *, experiment: str, tags: dict[str, str] | None = None,
                  tensorboard_tags: dict[str, str] | None = None) -> list[str | GeneralTracker]:
    """What `Accelerator(log_with=...)` takes for `train.log_with` names: TensorBoard and MLflow as
    trackers bound to the run dir, W&B by name (`init_kwargs` from `tracker_init_kwargs`).

    Raises:
        GenflowError: a tracker whose package is not installed (the message names it).
    """
    for name in names:
        module, package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise GenflowError(f"train.log_with={name} needs the {package} package: pip install {package} "
                               f"(or log without it: train.log_with=none)")
    trackers: list[str | GeneralTracker] = []
    for name in names:
        if name == "tensorboard":
            trackers.append(RunTensorBoardTracker(run_dir, tensorboard_tags))
        elif name == "mlflow":
            trackers.append(RunMLflowTracker(Path(run_dir) / "mlruns", experiment_name=experiment,
                                             run_name=Path(run_dir).name, tags=dict(tags or {})))
        else:
            trackers.append(name)
    return trackers


def tracker_init_kwargs(run_dir: Path) -> dict[str, dict[str, Any]]:
    """`init_trackers(init_kwargs=...)` for the trackers given by name: W&B named after the run dir, files inside it."""
    return {"wandb": {"name": Path(run_dir).name, "dir": str(run_dir)}}


def flatten_config(tree: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """`{"train": {"lr": 1e-3, "betas": [0.9, 0.999]}}` -> `{"train.lr": 0.001, "train.betas": "[0.9, 0.999]"}`.

    Trackers take scalars only: lists become their JSON text, None becomes "null" (as in config.yaml).
    """
    flat: dict[str, bool | int | float | str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=str)
    return flat


class MetricsLogger:
    """Appends records to `run_dir/metrics.jsonl` and sends their scalars to the accelerator's trackers."""

    def __init__(self, run_dir: Path, accelerator: Accelerator, enabled: bool = True):
        self.enabled = enabled
        self.accelerator = accelerator
        self.path = Path(run_dir) / "metrics.jsonl"
        self._trackers_ended = False

    def log(self, kind: str, step: int, epoch: int, values: dict[str, float]) -> None:
        """Record `values` (e.g. kind 'train' or 'val') at optimiser step `step`."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "epoch": epoch, **{k: float(v) for k, v in values.items()}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.accelerator.log({f"{kind}/{key}": float(value) for key, value in values.items()}, step=step)

    def log_image_file(self, tag: str, path: Path, step: int) -> None:
        """Mirror a PNG the recipe wrote (e.g. samples.png) to the trackers that show pictures (TensorBoard)."""
        if self.enabled:
            for tracker in self.accelerator.trackers:
                if isinstance(tracker, RunTensorBoardTracker):
                    tracker.log_image_file(tag, path, step)

    def truncate_after(self, step: int) -> None:
        """On resume, drop records past the checkpoint's step so the log has no duplicates."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def end_trackers(self, status: str = "FINISHED") -> None:
        """Close the trackers of a run that stopped early (`FAILED`, or `KILLED` by Ctrl-C); once only.
        A run that finishes closes them through `accelerator.end_training()`."""
        if self._trackers_ended:
            return
        self._trackers_ended = True
        for tracker in self.accelerator.trackers:
            if isinstance(tracker, RunMLflowTracker):
                tracker.finish(status)
            else:
                tracker.finish()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_trajectory(run_dir: Path, metrics: list[str] | None = None) -> Path | None:
    """`loss_trajectory.png`: training loss, validation loss and each validation metric vs step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [r for r in records if r["kind"] == "train" and "loss" in r]
    val = [r for r in records if r["kind"] == "val"]
    if not train:
        return None
    names = metrics or sorted({k for r in val for k in r if k not in ("kind", "step", "epoch", "val_loss")})
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(5 * (1 + len(names)), 3.6), squeeze=False)
    ax = axes[0, 0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss", lw=1)
    if any("val_loss" in r for r in val):
        ax.plot([r["step"] for r in val if "val_loss" in r], [r["val_loss"] for r in val if "val_loss" in r], "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_yscale("log" if all(r["loss"] > 0 for r in train) else "linear")
    ax.legend()
    ax.set_title("loss")
    for ax, name in zip(axes[0, 1:], names):
        points = [(r["step"], r[name]) for r in val if name in r and math.isfinite(r[name])]
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-")
        ax.set_xlabel("step")
        ax.set_title(name)
    fig.tight_layout()
    path = Path(run_dir) / "loss_trajectory.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
