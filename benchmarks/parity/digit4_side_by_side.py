"""Side by side: FlowMix's own training code and genflow's digit4 on the same clouds, scored by one evaluator.

    python benchmarks/parity/digit4_side_by_side.py --source PATH --source-python PY [--data datasets/digit4]
        [--epochs 12] [--seed 42] [--source-npz NPZ] [--runs RUN ...] [--split test] [--out DIR] [--core 1]

The source side: benchmarks/parity/digit4_reference_driver.py `train` (run with PY, pinned to --core, one XLA
thread) trains FlowMix's MnistFlow2D with its own `train_step` and Adam on the `train` clouds of --data (exported
here to an npz), batch 32, --epochs epochs, keeps the parameters with the best val Chamfer-L2 (checked every 4
epochs on 256 val clouds, as `make demo` checks genflow's) and reconstructs every test and val cloud with Euler,
20 steps, at the true times. `--source-npz` scores an existing driver output instead of training.

The genflow side: each --runs RUN directory (trained with `genflow train digit4 ...`) is scored by
`genflow eval chamfer RUN --json split=...`. The source's reconstructions are scored by the same function
(`genflow_recipes.digit4.recipe.chamfer_report`) with the same seed, so the resampling noise floor is the same
pair of resamplings for every row, drawn with the construction the dataset's manifest records.

`--trivial` adds two outputs that ignore their input (the first training cloud for every digit; Gaussian noise of
std 0.5), which show how loose an absolute bar on the squared Chamfer is. Prints a markdown table (Chamfer-L2 and squared Chamfer, each with its ratio to the floor) and writes
results.json to --out. CI never runs this benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().with_name("digit4_reference_driver.py")


def train_source(args, out_dir: Path) -> Path:
    from genflow.data import load_split

    clouds = out_dir / "clouds.npz"
    np.savez(clouds, **{s: load_split(args.data, s, ["points"])["points"] for s in ("train", "val", "test")})
    out = out_dir / f"source_seed{args.seed}.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
    subprocess.run(["taskset", "-c", str(args.core), args.source_python, str(DRIVER), "train", "--source", str(args.source),
                    "--data-npz", str(clouds), "--out", str(out), "--epochs", str(args.epochs), "--seed", str(args.seed)],
                   check=True, env=env)
    return out


def score_source(npz: Path, data: Path, split: str) -> dict:
    from genflow.data import load_split, read_manifest
    from genflow.data.point_clouds import cloud_construction
    from genflow_recipes.digit4.recipe import chamfer_report

    arrays = load_split(data, split, ["points", "image"])
    generated = torch.from_numpy(np.load(npz)[f"{split}_generated"])
    construction = cloud_construction(read_manifest(data))
    result = {"construction": construction, **chamfer_report(generated, torch.from_numpy(arrays["points"]), arrays["image"],
                                                              construction=construction, seed=0)}
    meta = npz.with_suffix(".json")
    if meta.exists():
        info = json.loads(meta.read_text())
        result.update({k: info[k] for k in ("params", "steps", "train_seconds", "best_val_chamfer_l2", "jax")})
    return result


def score_run(run: Path, split: str) -> dict:
    out = subprocess.run([str(REPO / ".venv" / "bin" / "genflow"), "eval", "chamfer", str(run), "--json", f"split={split}"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out[out.index("{"):])


def score_trivial(data: Path, split: str) -> dict:
    """Two outputs that ignore their input: the first training cloud for every digit, and N(0, 0.5^2) noise."""
    from genflow.data import load_split, read_manifest
    from genflow.data.point_clouds import cloud_construction
    from genflow_recipes.digit4.recipe import chamfer_report

    arrays = load_split(data, split, ["points", "image"])
    points = torch.from_numpy(arrays["points"])
    construction = cloud_construction(read_manifest(data))
    fixed = torch.from_numpy(load_split(data, "train", ["points"])["points"][:1]).expand_as(points).contiguous()
    noise = torch.from_numpy(np.random.default_rng(0).normal(0, 0.5, points.shape).astype(np.float32))
    return {name: {"construction": construction, **chamfer_report(g, points, arrays["image"], construction=construction)}
            for name, g in (("one fixed training cloud", fixed), ("N(0, 0.5^2) noise", noise))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="local copy of FlowMix (holds src/)")
    parser.add_argument("--source-python", default=sys.executable)
    parser.add_argument("--data", type=Path, default=REPO / "datasets" / "digit4")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--source-npz", type=Path, default=None, help="score this driver output instead of training")
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="genflow digit4 run directories")
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "digit4-side-by-side")
    parser.add_argument("--core", type=int, default=1)
    parser.add_argument("--trivial", action="store_true", help="also score two outputs that ignore the input")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {}
    npz = args.source_npz
    if npz is None and args.source is not None:
        npz = train_source(args, args.out)
    if npz is not None:
        rows[f"FlowMix ({npz.stem})"] = score_source(npz, args.data, args.split)
    for run in args.runs:
        rows[f"genflow {run.name}"] = score_run(run, args.split)
    if args.trivial:
        rows.update(score_trivial(args.data, args.split))
    print(f"| system | {args.split} chamfer_l2 | ratio to floor | chamfer_sq | ratio to floor | floor l2 / sq |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['chamfer_l2']:.4f} | {r['ratio_to_floor_l2']:.2f} | {r['chamfer_sq']:.5f} | "
              f"{r['ratio_to_floor_sq']:.2f} | {r['noise_floor_l2']:.4f} / {r['noise_floor_sq']:.5f} |")
    (args.out / "results.json").write_text(json.dumps({"split": args.split, "data": str(args.data), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
