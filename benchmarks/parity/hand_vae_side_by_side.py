"""smplx-pose-priors' own training beside genflow's, on the same hand shards for the same epochs, scored by genflow.

    python benchmarks/parity/hand_vae_side_by_side.py --source /path/to/smplx-pose-priors \\
        --source-python /path/to/its/venv/bin/python --data datasets/hands --epochs 100 --seeds 0 1 \\
        --genflow RUN [RUN ...]

1. The shards' train / val / test poses are written in the source's layout: one `<set>.npz` per split with
   `lhand_pose` / `rhand_pose`, and `{train,val,test}_samples.json` listing every frame (the same split).
2. For each model (standard, so3) and seed, `hand_vae_source_driver.py` trains the source's Lightning module
   with its own data module and trainer settings, in the source's environment, pinned to one core
   (`--core`), the intended pipeline by default (`--pipeline shipped` for the one as published); bf16-mixed,
   and fp32 for its so3 model, whose loss is NaN under 16-bit autocast.
3. Its best checkpoint (ModelCheckpoint on `val/loss`) becomes a genflow run
   (`genflow runs import smplx-pose-priors ... pipeline=...`), and `genflow eval hands` scores it on the
   test split as it scores genflow's own runs, given with `--genflow` (trained separately, e.g.
   `genflow train hand-vae train.seed=1`).
4. One table: reconstruction error, hypothesis-selection top-1 (`est`), energy AUROC, training seconds.

The source has no licence: it is only run from the local copy `--source`, never imported here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
GENFLOW = Path(sys.executable).with_name("genflow")
COLUMNS = ("model_recon_deg", "hyp_est_model_top1", "hyp_est_gaussian_top1", "model_auroc_noise_0.1", "model_auroc_random_joint")


def export_source_layout(data: Path, out: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT))
    from genflow.data import load_split

    files, splits = out / "data", out / "splits"
    files.mkdir(parents=True, exist_ok=True)
    splits.mkdir(exist_ok=True)
    for split in ("train", "val", "test"):
        poses = load_split(data, split, ["pose"])["pose"]
        np.savez(files / f"genflow_{split}.npz", lhand_pose=poses[:, :45], rhand_pose=poses[:, 45:])
        (splits / f"{split}_samples.json").write_text(json.dumps({f"genflow_{split}": list(range(len(poses)))}))
    return files, splits


def evaluate(run: Path, env: dict[str, str], core: int) -> dict:
    out = subprocess.run(["taskset", "-c", str(core), str(GENFLOW), "eval", "hands", str(run), "--json"], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--source-python", type=Path, required=True, help="python of an environment with the source's requirements")
    parser.add_argument("--data", type=Path, default=ROOT / "datasets" / "hands")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "parity-hand-vae")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--models", nargs="+", default=["standard", "so3"])
    parser.add_argument("--pipeline", choices=("intended", "shipped"), default="intended")
    parser.add_argument("--core", type=int, default=0)
    parser.add_argument("--genflow", type=Path, nargs="*", default=[], help="genflow runs to score beside the source's")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    files, splits = export_source_layout(args.data, args.work / "source-layout")
    rows = []
    for seed in args.seeds:
        for model_type in args.models:
            out = args.work / f"source-{model_type}-{args.pipeline}-s{seed}"
            if not (out / "summary.json").is_file():
                subprocess.run(["taskset", "-c", str(args.core), str(args.source_python), str(Path(__file__).with_name("hand_vae_source_driver.py")),
                                "--source", str(args.source), "--data-dir", str(files), "--splits-dir", str(splits), "--out", str(out),
                                "--model-type", model_type, "--epochs", str(args.epochs), "--seed", str(seed),
                                "--pipeline", args.pipeline,
                                # its so3 loss is NaN under 16-bit autocast (recipe page): that model runs in fp32
                                "--precision", "32-true" if model_type == "so3" else "bf16-mixed"], env=env, check=True)
            summary = json.loads((out / "summary.json").read_text())
            name = out.name
            run = args.work / "runs" / "hand-vae" / name
            if not run.is_dir():
                subprocess.run([str(GENFLOW), "runs", "import", "smplx-pose-priors", summary["best_checkpoint"],
                                f"runs_dir={args.work / 'runs'}", f"name={name}", f"pipeline={args.pipeline}",
                                f"data_dir={args.data}"], env=env, check=True, capture_output=True)
            rows.append((name, summary["train_seconds"], summary["epochs_run"], evaluate(run, env, args.core)))
    for run in args.genflow:
        rows.append((run.name, None, None, evaluate(run, env, args.core)))
    print(f"| run | train s | epochs | {' | '.join(COLUMNS)} |")
    print("|---" * (3 + len(COLUMNS)) + "|")
    for name, seconds, epochs, result in rows:
        cells = " | ".join(f"{result[c]:.4g}" for c in COLUMNS)
        print(f"| {name} | {seconds if seconds is not None else ''} | {epochs if epochs is not None else ''} | {cells} |")


if __name__ == "__main__":
    main()
