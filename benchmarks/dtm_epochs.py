"""The Fréchet distance of dtm runs per epoch (val_fd: 1000 free images against the training set, the engine's
evaluation after every epoch), beside each denoising step's autocorrelation statistic; prints the λ_cp values.

    python benchmarks/dtm_epochs.py RUN[=LABEL] ... --out PNG
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from genflow.engine.metrics_log import read_metrics  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories, each optionally =LABEL")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    fig, (fd_axis, ac_axis) = plt.subplots(1, 2, figsize=(9, 3.4))
    for spec in args.runs:
        run, _, label = spec.partition("=")
        label = label or Path(run).name
        val = [r for r in read_metrics(Path(run)) if r["kind"] == "val"]
        epochs = [r["epoch"] for r in val]
        steps = sorted(k for k in val[0] if k.startswith("autocorr_step"))
        line, = fd_axis.plot(epochs, [r["val_fd"] for r in val], marker="o", label=label)
        for k, style in zip(steps, ("-", "--", ":", "-.")):
            ac_axis.plot(epochs, [r[k] for r in val], style, marker=".", color=line.get_color(),
                         label=f"{label}, step {k.removeprefix('autocorr_step')}")
        for r in val:
            autocorr = " / ".join(f"{r[k]:.3f}" for k in steps)
            penalty = " / ".join(f"{r[k.replace('autocorr', 'cp')]:.4f}" for k in steps)
            print(f"{label} epoch {r['epoch']}: val_fd {r['val_fd']:.1f}, autocorrelation {autocorr}, λ_cp {penalty}")
    fd_axis.set(xlabel="epoch", ylabel="val FD (1000 free images vs train)")
    ac_axis.set(xlabel="epoch", ylabel="autocorrelation statistic")
    for axis in (fd_axis, ac_axis):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
