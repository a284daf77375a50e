"""Metrics logging: `metrics.jsonl` (one JSON object a line) and TensorBoard, main process only."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["MetricsLogger", "read_metrics", "plot_loss_trajectory"]


class MetricsLogger:
    """Appends records to `run_dir/metrics.jsonl` and mirrors scalars to TensorBoard in `run_dir/tb`."""

    def __init__(self, run_dir: Path, enabled: bool = True, tags: dict[str, str] | None = None):
        self.enabled = enabled
        self.tags = dict(tags or {})
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))

    def log(self, kind: str, step: int, epoch: int, values: dict[str, float]) -> None:
        """Record `values` (e.g. kind 'train' or 'val') at optimiser step `step`."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "epoch": epoch, **{k: float(v) for k, v in values.items()}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        for key, value in values.items():
            name = f"{kind}/{key}"
            self._tb.add_scalar(self.tags.get(name, name), float(value), step)

    def log_image_file(self, tag: str, path: Path, step: int) -> None:
        """Mirror a PNG the recipe wrote (e.g. samples.png) into TensorBoard's images."""
        if self.enabled:
            import matplotlib.image

            image = matplotlib.image.imread(str(path))[..., :3]
            self._tb.add_image(self.tags.get(tag, tag), image, step, dataformats="HWC")

    def truncate_after(self, step: int) -> None:
        """On resume, drop records past the checkpoint's step so the log has no duplicates."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


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
