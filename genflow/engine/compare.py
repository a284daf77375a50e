"""`genflow eval compare RUN_A RUN_B ...`: sample quality vs network evaluations (NFE) across runs.

Each run's recipe lists the (sampler, steps) settings worth measuring (`compare_settings`) and the
metrics to plot (`compare_metrics`); every setting is evaluated on the same held-out scenes with the
same seed, with the recipe's main (first) evaluation. Its options start from the recipe's
`compare_defaults`, then the user's `key=value`s; each setting sets only `solver` and `steps`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from genflow.engine.run_dir import load_run

__all__ = ["compare_runs"]


def compare_runs(run_dirs: list[Path], out: Path | None = None, values: list[str] | None = None, *,
                 checkpoint: str = "best", device: torch.device | str = "cpu") -> dict[str, Any]:
    """Evaluate every run at each of its recipe's sampler settings; write a table, JSON and a plot.

    `values`: options of the main evaluation (`split=val limit=50`); `solver=` / `steps=` among them
    replace the recipe's list with that one setting. Returns the rows, the paths written and a rich table.
    """
    out = Path(out) if out else Path("runs") / "compare" / time.strftime("%Y%m%d-%H%M%S")
    rows: list[dict[str, Any]] = []
    metrics: tuple[str, ...] = ()
    for run_dir in run_dirs:
        run = load_run(run_dir, checkpoint, device=device)
        recipe = run.recipe
        metrics = metrics or recipe.compare_metrics
        settings = recipe.compare_settings()
        main_eval = next(iter(recipe.evaluations))
        defaults = [f"{k}={json.dumps(v)}" for k, v in recipe.compare_defaults.items()]
        options = recipe.options(main_eval, defaults + list(values or []))
        if any(v.startswith(("solver=", "steps=")) for v in values or []):  # one given setting
            settings = [(options.solver, options.steps)]
        for sampler, n_steps in settings:
            result = recipe.run_eval(main_eval, run.model, run.run_dir, device,
                                     dataclasses.replace(options, solver=sampler, steps=n_steps))
            rows.append({"run": str(run_dir), "recipe": recipe.name, **result})
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path, plot_path = out / "compare.json", out / "compare.md", out / "compare.png"
    json_path.write_text(json.dumps(rows, indent=1) + "\n")
    columns = ["recipe", "sampler", "steps", "nfe", *metrics, "seconds"]
    md_path.write_text(_markdown(rows, columns))
    _plot(rows, metrics, plot_path)
    return {"rows": rows, "json": str(json_path), "markdown": str(md_path), "plot": str(plot_path), "table": _rich(rows, columns)}


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _markdown(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _rich(rows: list[dict[str, Any]], columns: list[str]):
    from rich.table import Table

    table = Table(*columns, title="quality vs network evaluations")
    for row in rows:
        table.add_row(*(_fmt(row.get(c)) for c in columns))
    return table


def _plot(rows: list[dict[str, Any]], metrics: tuple[str, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    lines: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        lines.setdefault((Path(row["run"]).name + f" ({row['recipe']})", row["sampler"]), []).append(row)
    for ax, metric in zip(axes[0], metrics):
        for (run, sampler), points in lines.items():
            points = sorted(points, key=lambda r: r["nfe"])
            ax.plot([p["nfe"] for p in points], [p[metric] for p in points], marker="o", label=f"{run} {sampler}")
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per sample")
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
