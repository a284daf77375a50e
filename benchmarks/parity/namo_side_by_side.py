"""sage_learning's own training code and genflow's namo recipes, side by side: same data, same steps.

    python benchmarks/parity/namo_side_by_side.py --source PATH --source-python PY --data datasets/namo \
        [--steps 1500] [--seeds 0,1] [--objectives fm,diffusion] [--out runs/side-by-side]

PATH is a local checkout of github.com/dhruvmetha/sage_learning, PY a Python with its dependencies
(torch, lightning, hydra-core, torchmetrics, flow_matching, diffusers; torchvision is stood in where it
does not import, see sage_runtime.py). For each objective and seed, two trainings run at once, one
thread each, so that both see the same machine load:

- the source: its `src/train_generative.py` with its config (`train_fb_flow_matching` /
  `train_hf_diffusion`), its data loader reading the training split of `--data` written back as its
  npz files (64 x 64 float masks), its network at genflow's default size (patch 8, width 128, depth 4,
  4 heads), batch 64, bf16 autocast (its fp16 is GPU-only), validated and checkpointed at the last step;
- genflow: `genflow train namo-fm` / `namo-diffusion` with the recipe's CPU default config and
  `train.max_steps`; or, with `--genflow-config namo_fm_source`, the source's own network, objective and
  optimiser at the same size (namo_diffusion_source for diffusion), which times the two training loops on
  one network (`--no-eval` then skips the scoring).

The source's run is then made a genflow run (`genflow runs import sage-learning`) and both are scored
by `genflow eval namo` on the test split (200 scenes x 8 samples, each with its own default sampler,
last checkpoint: both stop at exactly `--steps`): placement metrics of the raw samples, and of the
accepted proposals (`proposals_*`). Seconds per step: the median interval between step ends (the source,
by a callback of this benchmark) and the median of genflow's logged windows; both include data loading.
Prints one table and writes `summary.json` under `--out`.
The source's loader holds out one file for its validation (train_split 1.0 keeps n - 1).
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
KEYS = ("validity", "push_validity", "mode_coverage", "mode_coverage_multimodal", "best_of_k_iou", "collision_rate")
SOURCE_CONFIG = {"fm": "train_fb_flow_matching", "diffusion": "train_hf_diffusion"}
RECIPE = {"fm": "namo-fm", "diffusion": "namo-diffusion"}

# How the source's Lightning trainer runs here (a trainer config of the source's schema, written by this
# benchmark): CPU, one device, bf16 autocast, the source's clipping, one validation + checkpoint at the last step.
TRAINER_YAML = """\
_target_: lightning.pytorch.trainer.Trainer
accelerator: cpu
devices: 1
max_steps: {steps}
max_epochs: -1
precision: bf16-mixed
gradient_clip_val: 1.0
gradient_clip_algorithm: norm
check_val_every_n_epoch: null
val_check_interval: {steps}
num_sanity_val_steps: 0
logger: false
enable_progress_bar: false
enable_model_summary: false
deterministic: false
callbacks:
  - _target_: lightning.pytorch.callbacks.ModelCheckpoint
    dirpath: ${{paths.output_dir}}/checkpoints
    filename: "last-val_loss{{val_loss:.4f}}"
    monitor: val_loss
    mode: min
    save_top_k: 1
    save_last: true
    auto_insert_metric_name: false
  - _target_: sage_runtime.step_timer
    path: ${{paths.output_dir}}/step_seconds.json
"""


def write_source_npz(data: Path, out: Path) -> int:
    """The training split of genflow shards as the source's scene files (float32 masks, its key names)."""
    from genflow.data import load_split

    marker = out / "done.txt"
    if marker.is_file():
        return int(marker.read_text())
    split = load_split(data, "train", ["context", "target_goal"])
    out.mkdir(parents=True, exist_ok=True)
    names = ("robot_image", "goal_image", "movable_objects_image", "static_objects_image", "target_object")
    for i, (context, goal) in enumerate(zip(split["context"], split["target_goal"])):
        arrays = {name: context[c].astype(np.float32)[:, :, None] for c, name in enumerate(names)}
        arrays["target_goal"] = goal[0].astype(np.float32)[:, :, None]
        np.savez(out / f"scene_{i:06d}.npz", **arrays)
    marker.write_text(str(len(split["context"])))
    return len(split["context"])


def run_source_training(source: Path, hydra_args: list[str]) -> None:
    """In the source's Python: stand in torchvision if needed, then run its training script with `hydra_args`."""
    sys.path.insert(0, str(HERE))
    from sage_runtime import add_source_to_path, install_torchvision_standin

    add_source_to_path(source)
    install_torchvision_standin()
    os.chdir(source)
    sys.argv = [str(source / "src" / "train_generative.py"), *hydra_args]
    runpy.run_path(sys.argv[0], run_name="__main__")


def _launch(command: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=cwd)


def _genflow(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("genflow")), *args]


def _evaluate(run: Path, log: Path) -> dict:
    out = subprocess.run(_genflow("eval", "namo", str(run), "--json", "--checkpoint", "last", "figure=false"),
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    log.write_text(out.stdout + out.stderr)
    if out.returncode:
        raise SystemExit(f"genflow eval namo {run} failed: see {log}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _genflow_step_seconds(run: Path) -> float:
    """Median seconds per step of 64 over a genflow run's logged training windows (data waits included)."""
    rates = [json.loads(line)["samples_per_s"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"kind": "train"' in line and "samples_per_s" in line]
    return float(64 / np.median(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="a local checkout of sage_learning")
    parser.add_argument("--source-python", default=sys.executable, help="a Python with the source's dependencies")
    parser.add_argument("--data", type=Path, default=Path("datasets/namo"), help="genflow namo shards (train / val / test)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--objectives", default="fm,diffusion")
    parser.add_argument("--out", type=Path, default=Path("runs/side-by-side"))
    parser.add_argument("--genflow-config", help="a config of the recipe for genflow's side (default: its CPU default); "
                        "with namo_fm_source / namo_diffusion_source at genflow's size both sides train the same network")
    parser.add_argument("--no-eval", action="store_true", help="time the training steps only")
    parser.add_argument("--train-source", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if args.train_source is not None:
        return run_source_training(args.source.resolve(), args.train_source)

    from genflow.engine import cpu_description
    import torch

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve()
    print(f"{cpu_description()}; torch {torch.__version__}; each training one thread, two at a time", flush=True)
    scenes = write_source_npz(data, out / "source-npz")
    conf = out / "source-conf" / "trainer"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "cpu_bench.yaml").write_text(TRAINER_YAML.format(steps=args.steps))
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for objective in args.objectives.split(","):
            tag = f"{objective}-s{seed}"
            source_dir, genflow_dir = out / "source" / tag, out / "runs" / RECIPE[objective] / f"genflow-{tag}"
            hydra = [f"--config-name={SOURCE_CONFIG[objective]}", f"--config-dir={out / 'source-conf'}", "trainer=cpu_bench",
                     f"data.data_dir={out / 'source-npz'}", "data.train_split=1.0", "num_workers=0", "batch_size=64",
                     f"seed={seed + 1}",  # the source seeds only when seed is truthy
                     "model.network.patch=8", "model.network.dim=128", "model.network.depth=4", "model.network.heads=4",
                     f"hydra.run.dir={source_dir}"]
            jobs = {}
            if not (source_dir / "checkpoints" / "last.ckpt").is_file():
                jobs["source"] = (_launch([args.source_python, __file__, "--source", str(args.source), "--train-source", *hydra],
                                          out / f"source-{tag}.log"), time.perf_counter())
            if not (genflow_dir / "checkpoints" / "last.pt").is_file():
                same_network = []
                if args.genflow_config:
                    name = args.genflow_config.replace("namo_fm", "namo_diffusion") if objective == "diffusion" else args.genflow_config
                    same_network = ["--config", name, "model.network.patch_size=8", "model.network.hidden_size=128",
                                    "model.network.depth=4", "model.network.num_heads=4", "train.precision=bf16"]
                jobs["genflow"] = (_launch(_genflow("train", RECIPE[objective], "--runs-dir", str(out / "runs"), "--name",
                                                    f"genflow-{tag}", "--no-progress", f"data.data_dir={data}",
                                                    f"train.max_steps={args.steps}", f"train.seed={seed}", *same_network),
                                           out / f"genflow-{tag}.log"), time.perf_counter())
            seconds = {}
            for who, (process, start) in jobs.items():
                if process.wait():
                    raise SystemExit(f"{who} training {tag} failed: see {out / f'{who}-{tag}.log'}")
                seconds[who] = time.perf_counter() - start
                (out / f"{who}-{tag}.seconds").write_text(f"{seconds[who]:.1f}")
            for who in ("source", "genflow"):
                if who not in seconds and (out / f"{who}-{tag}.seconds").is_file():
                    seconds[who] = float((out / f"{who}-{tag}.seconds").read_text())
            step_seconds = {"source": float(np.median(json.loads((source_dir / "step_seconds.json").read_text()))),
                            "genflow": _genflow_step_seconds(genflow_dir)}
            if args.no_eval:
                rows.append({"objective": objective, "seed": seed, **{f"{who}_step_seconds": v for who, v in step_seconds.items()}})
                print(json.dumps(rows[-1]), flush=True)
                continue
            imported = out / "runs" / RECIPE[objective] / f"source-{tag}"
            if not imported.is_dir():
                done = subprocess.run(_genflow("runs", "import", "sage-learning", str(source_dir), f"runs_dir={out / 'runs'}",
                                               f"name=source-{tag}", "checkpoint=last.ckpt", f"data_dir={data}"),
                                      capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"genflow runs import failed: {done.stderr.strip()}")
            for who, run in (("source", imported), ("genflow", genflow_dir)):
                result = _evaluate(run, out / f"eval-{who}-{tag}.log")
                rows.append({"objective": objective, "seed": seed, "trained_by": who, "seconds": seconds.get(who),
                             "step_seconds": step_seconds[who],
                             "sampler": f"{result['sampler']} {result['steps']}", "nfe": result["nfe"],
                             **{k: result[k] for k in KEYS}, **{f"proposals_{k}": result[f"proposals_{k}"] for k in KEYS},
                             "proposals_acceptance_rate": result["proposals_acceptance_rate"]})
                print(json.dumps(rows[-1]), flush=True)
    (out / "summary.json").write_text(json.dumps({"steps": args.steps, "source_train_scenes": scenes - 1, "rows": rows}, indent=1))
    if args.no_eval:
        for r in rows:
            print(f"{r['objective']:10} seed {r['seed']}: s/step source {r['source_step_seconds']:.3f}, genflow "
                  f"{r['genflow_step_seconds']:.3f} (genflow / source {r['genflow_step_seconds'] / r['source_step_seconds']:.3f})")
        return
    print(f"\n{'objective':10} {'seed':>4} {'trained by':10} {'s/step':>7}  " + "  ".join(f"{k[:12]:>12}" for k in KEYS)
          + "   (raw | accepted proposals)")
    for r in rows:
        per_step = f"{r['step_seconds']:7.3f}"
        print(f"{r['objective']:10} {r['seed']:>4} {r['trained_by']:10} {per_step}  "
              + "  ".join(f"{r[k]:5.3f}|{r['proposals_' + k]:5.3f}" for k in KEYS) + f"   accepted {r['proposals_acceptance_rate']:.3f}")


if __name__ == "__main__":
    main()
