"""Metrics logging, main process only: `metrics.jsonl` (one JSON object a line), always, and the
experiment trackers of `train.log_with` through Accelerate (`Accelerator(log_with=...)`,
`init_trackers`, `log`, `end_training`):

- tensorboard: `RUN/tb`, under the recipe's tag names (`Recipe.tensorboard_tags`), with its pictures;
- mlflow: the store of `MLFLOW_TRACKING_URI` when set (a file store, sqlite, a server), in the experiment
  `MLFLOW_EXPERIMENT_NAME` or else the recipe's name; unset, a local file store `RUN/mlruns`;
- wandb: Weights & Biases; the user's `WANDB_*` settings win, else the project is the recipe's name, the
  run is named after the run dir and its local files are in `RUN/wandb`.

Every tracker gets the same scalars as metrics.jsonl, named `kind/name` (`train/loss`, `val/val_loss`),
and the run's resolved config, flattened to `section.key` scalars, as hyper-parameters. The first start
records the MLflow and W&B runs in `RUN/trackers.json`; a resume continues them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from accelerate import Accelerator
from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, WandBTracker, on_main_process

from genflow.engine.checkpoint import atomic_write_text
from genflow.errors import GenflowError

__all__ = ["MetricsLogger", "RunTensorBoardTracker", "RunMLflowTracker", "RunWandBTracker", "make_trackers",
           "read_tracker_runs", "record_tracker_runs", "flatten_config", "read_metrics", "plot_loss_trajectory"]

# train.log_with name -> (module it imports, package to pip install)
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
                    "mlflow": ("mlflow", "mlflow-skinny")}
TRACKER_RUNS_FILE = "trackers.json"  # the MLflow and W&B runs of a run dir, which a resume continues


def _note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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


def _is_file_store(uri: str) -> bool:
    """A path or file:// URI, as MLflow reads a tracking URI (`databricks` is not one)."""
    from mlflow.utils.uri import is_local_uri

    return is_local_uri(uri)


def _store_uri(uri: str) -> str:
    """A file store's path as an absolute file URI (the same store from any directory); a URL without its password."""
    if _is_file_store(uri) and urlsplit(uri).scheme != "file":
        return Path(uri).resolve().as_uri()
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", "@", 1)))


class RunMLflowTracker(MLflowTracker):
    """Accelerate's MLflow tracker on the user's store, or else on a local file store in the run dir.

    `MLFLOW_TRACKING_URI` (set in the environment) picks the store, so runs of many run dirs land in one
    store and `mlflow ui --backend-store-uri URI` compares them; unset, the store is `RUN/mlruns` (no
    server). `MLFLOW_EXPERIMENT_NAME` picks the experiment, else the recipe's name (Accelerate reads it).
    The tracking URI is process-wide in MLflow, so it is set while the run is open and restored at
    `finish`. MLflow 3 keeps file stores in maintenance mode behind MLFLOW_ALLOW_FILE_STORE=true (its
    database store needs SQLAlchemy, which mlflow-skinny lacks); that is set the same way, for file stores.

    A resume (`recorded`: this tracker's entry of `trackers.json`) reopens the recorded MLflow run when it
    is in the same store, so the metrics continue at their steps in one run; from another store it starts
    a new run there and says so. The run's parameters cannot change in MLflow: a resume keeps the first
    values and tags the run `genflow.resumed.<key>` with each value the resume changed (e.g. more epochs).
    MLflow keeps the points a killed run logged past its checkpoint (metrics.jsonl drops them on resume);
    the resumed run logs those steps again beside them.
    """

    def __init__(self, run_dir: Path, *, experiment_name: str, run_name: str, tags: dict[str, str],
                 recorded: dict[str, Any] | None = None):
        super().__init__(experiment_name=experiment_name, run_name=run_name, tags=tags)  # MLFLOW_RUN_ID wins over `recorded`
        self.run_store_uri = (Path(run_dir) / "mlruns").resolve().as_uri()
        self.recorded = dict(recorded or {})
        self.tracking_uri = self.run_store_uri
        self.resumed = False
        self._saved_env: dict[str, str | None] | None = None

    @property
    def store_in_run_dir(self) -> bool:
        return self.tracking_uri == self.run_store_uri

    @on_main_process
    def start(self) -> None:
        """Open the run (the recorded one on a resume in the same store).

        Raises:
            GenflowError: MLflow cannot use the store (e.g. `sqlite:` without SQLAlchemy); the message names it.
        """
        import mlflow
        from mlflow.exceptions import MlflowException

        self._saved_env = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE")}
        user_uri = os.environ.get("MLFLOW_TRACKING_URI")
        self.tracking_uri = _store_uri(user_uri) if user_uri else self.run_store_uri
        if _is_file_store(self.tracking_uri):
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        mlflow.set_tracking_uri(self.tracking_uri)
        try:
            if self.run_id is None and self.recorded:
                self.run_id = self._recorded_run_here()
            self.resumed = self.run_id is not None
            super().start()
        except MlflowException as exc:
            self.finish("FAILED")  # restores the process's MLflow settings: no caller holds this tracker yet
            where = f"MLFLOW_TRACKING_URI={self.tracking_uri}" if user_uri else f"the store {self.tracking_uri}"
            raise GenflowError(f"train.log_with=mlflow: MLflow cannot use {where}: "
                               f"{str(exc).strip().splitlines()[0]}") from exc

    def _recorded_run_here(self) -> str | None:
        """The recorded run's id when it is in this store; otherwise None, and one line saying why."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        recorded_uri, run_id = self.recorded.get("tracking_uri"), self.recorded.get("run_id")
        same_store = self.store_in_run_dir if self.recorded.get("store_in_run_dir") else recorded_uri == self.tracking_uri
        if not same_store:
            _note(f"mlflow: this run was tracked at {recorded_uri}; the resume starts a new MLflow run at {self.tracking_uri}")
            return None
        try:
            run = MlflowClient(self.tracking_uri).get_run(run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            _note(f"mlflow: run {run_id} of {TRACKER_RUNS_FILE} is not in {self.tracking_uri}; the resume starts a new MLflow run")
            return None
        return run.info.run_id

    @on_main_process
    def store_init_configuration(self, values: dict) -> None:
        """Log the config as the run's parameters; a resumed run keeps the first values and tags the changes."""
        import mlflow

        if self.resumed:
            logged = mlflow.get_run(self.active_run.info.run_id).data.params
            changed = {key: value for key, value in values.items() if key in logged and logged[key] != str(value)}
            for key, value in changed.items():
                mlflow.set_tag(f"genflow.resumed.{key}", value)
            values = {key: value for key, value in values.items() if key not in changed}
        super().store_init_configuration(values)

    def recorded_run(self) -> dict[str, Any]:
        """This tracker's entry of `trackers.json`: what a resume needs to reopen the run."""
        info = self.active_run.info
        return {"run_id": info.run_id, "experiment_id": info.experiment_id, "tracking_uri": self.tracking_uri,
                "store_in_run_dir": self.store_in_run_dir}

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


class RunWandBTracker(WandBTracker):
    """Accelerate's W&B tracker that leaves the user's settings in charge.

    `wandb.init` gets only what the environment does not set: `project` (the recipe's name) without
    WANDB_PROJECT, `name` (the run dir's) without WANDB_NAME, `dir` (the run dir) without WANDB_DIR; the
    entity, mode, group, tags and the rest come from `WANDB_*` alone. A resume (`recorded`: this tracker's
    entry of `trackers.json`) passes the recorded `id` with `resume="allow"` (unless WANDB_RUN_ID or
    WANDB_RESUME is set), so it continues the same W&B run. W&B ignores points at steps below the last one
    it has, so the steps a killed run logged past its checkpoint keep their first values.
    """

    def __init__(self, run_dir: Path, *, project: str, run_name: str, recorded: dict[str, Any] | None = None):
        super().__init__(project)
        self.run_dir, self.project, self.display_name = Path(run_dir), project, run_name
        self.recorded = dict(recorded or {})

    @on_main_process
    def start(self) -> None:
        import wandb

        defaults = {"WANDB_PROJECT": ("project", self.project), "WANDB_NAME": ("name", self.display_name),
                    "WANDB_DIR": ("dir", str(self.run_dir))}
        kwargs: dict[str, Any] = {arg: value for env, (arg, value) in defaults.items() if not os.environ.get(env)}
        if self.recorded.get("id") and not os.environ.get("WANDB_RUN_ID"):
            kwargs["id"] = self.recorded["id"]
            if not os.environ.get("WANDB_RESUME"):
                kwargs["resume"] = "allow"
        self.run = wandb.init(**kwargs)

    def recorded_run(self) -> dict[str, Any]:
        """This tracker's entry of `trackers.json`: what a resume needs to continue the run."""
        return {"id": self.run.id, "project": self.run.project}


def make_trackers(names: list[str], run_dir: Path, *, experiment: str, tags: dict[str, str] | None = None,
                  tensorboard_tags: dict[str, str] | None = None, resuming: bool = False) -> list[GeneralTracker]:
    """What `Accelerator(log_with=...)` takes for `train.log_with` names: the trackers above, bound to the
    run dir; `resuming`: continue the MLflow and W&B runs recorded in `trackers.json`.

    Raises:
        GenflowError: a tracker whose package is not installed (the message names it).
    """
    for name in names:
        module, package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise GenflowError(f"train.log_with={name} needs the {package} package: pip install {package} "
                               f"(or log without it: train.log_with=none)")
    recorded = read_tracker_runs(run_dir) if resuming else {}
    trackers: list[GeneralTracker] = []
    for name in names:
        if name == "tensorboard":
            trackers.append(RunTensorBoardTracker(run_dir, tensorboard_tags))
        elif name == "mlflow":
            trackers.append(RunMLflowTracker(run_dir, experiment_name=experiment, run_name=Path(run_dir).name,
                                             tags=dict(tags or {}), recorded=recorded.get("mlflow")))
        else:
            trackers.append(RunWandBTracker(run_dir, project=experiment, run_name=Path(run_dir).name,
                                            recorded=recorded.get("wandb")))
    return trackers


def read_tracker_runs(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The tracker runs recorded in `RUN/trackers.json` (`{"mlflow": {"run_id": ...}, "wandb": {"id": ...}}`); {} if none.

    Raises:
        GenflowError: the file is not a JSON object (the message names it).
    """
    path = Path(run_dir) / TRACKER_RUNS_FILE
    if not path.is_file():
        return {}
    try:
        runs = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GenflowError(f"{path}: not valid JSON ({exc}); delete it to start new tracker runs") from exc
    if not isinstance(runs, dict):
        raise GenflowError(f"{path}: expected a JSON object of tracker runs; delete it to start new tracker runs")
    return runs


def record_tracker_runs(run_dir: Path, trackers: list[GeneralTracker]) -> None:
    """Record the MLflow and W&B runs of the started `trackers` in `RUN/trackers.json` (written to a temp
    file and renamed), beside those of trackers this start did not use. Call on the main process only."""
    started = {tracker.name: tracker.recorded_run() for tracker in trackers
               if isinstance(tracker, (RunMLflowTracker, RunWandBTracker))}
    if not started:
        return
    path = Path(run_dir) / TRACKER_RUNS_FILE
    runs = {**read_tracker_runs(run_dir), **started}
    atomic_write_text(path, json.dumps(runs, indent=2) + "\n")


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
