"""Side by side: genflow's `dtm` and the reference DTM (THRML / JAX, pschilliOrange/dtm-replication) on one config.

    python benchmarks/parity/dtm.py --source PATH --source-python PY [--seeds 0 1] [--layouts reference image]
        [--gen-sweeps 100] [--steps 843] [--out DIR] [--cores 0 1]

PATH is a local copy of the reference (its `thrmlDenoising` package; a COMMIT file there is printed). The reference
has no licence: genflow never imports it; benchmarks/parity/dtm_reference_driver.py, run with PY (a Python with
jax, thrml, equinox, optax), puts PATH on sys.path and calls it. CI never runs this benchmark.

Config "S", both sides: MNIST binarised at 0.1, the 54,000 images of genflow's train split (datasets/mnist-images),
10 classes x 10 label spots, graph 44_12, T = 3 steps on the log grid, offset 0.15, rates 0.9 (image) / 0.2
(label), batch 64, training chains 40 warm-up sweeps + 10 samples every 4 sweeps at beta 1, Adam (0.9, 0.999),
lr 0.022 with cosine decay to 0.2 x lr over 20 x 843 steps whatever the run's length, no correlation penalty,
no weight decay, fp32; generation: beta 0.8 -> 1.2 over --gen-sweeps sweeps per denoising step.

Each reference seed runs pinned to the first of --cores (single-threaded XLA) while genflow's runs (every seed x
--layouts placement, `model.threads=1`, OMP_NUM_THREADS=1) run pinned to the second, concurrently. Each side saves
1000 free and 1000 label-clamped images (100 per class); all are scored here by the same genflow_recipes.dtm
FrechetScorer (classifier features, levels 1, threshold 0.1, all classes): Fréchet distance to the training
images, as a fraction of the noise ceiling (uniform random images), the floor (1000 real test images), and the
classifier's accuracy on the clamped samples (mean and worst class). Training time per step is the steady state:
the reference's epoch minus a throw-away 4-step epoch that pays the same jax compile (after a first
throw-away model has paid the one-time costs); genflow's median of its
logged windows after the first (torch.compile). `--steps K` shortens both (reference: its data set cut to
K x 64 images; genflow: train.max_steps) for a smoke run. Writes results.json and results.md to --out.

Internal: `--generate RUN --gen-out NPZ` (used by the benchmark) samples a trained genflow run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().with_name("dtm_reference_driver.py")
DATA_DIR = REPO / "datasets" / "mnist-images"
BATCH, FULL_STEPS, PER_CLASS, CLASSES = 64, 54_000 // 64, 100, 10
LR_DECAY_EPOCHS = 20


def genflow_keys(seed: int, layout: str, gen_sweeps: int, steps: int) -> list[str]:
    """Config S as genflow overrides (every key spelled out, not left to dtm.yaml's defaults)."""
    keys = [
        f"data.data_dir={DATA_DIR}", "data.threshold=0.1", "data.classes=null", "data.conditional=true",
        "model.graph=44_12", "model.grayscale_levels=1", "model.num_steps=3", "model.num_label_spots=10",
        "model.time_grid=log", "model.time_offset=0.15", "model.image_rate=0.9", "model.label_rate=0.2",
        f"model.graph_seed={seed}", f"model.placement={layout}", "model.threads=1",
        "sampling.steps_warmup=40", "sampling.n_samples=10", "sampling.steps_per_sample=4", "sampling.training_beta=1.0",
        "generation.beta_start=0.8", "generation.beta_end=1.2", f"generation.sweeps={gen_sweeps}",
        "correlation_penalty.initial=[0.0]", "correlation_penalty.adaptive=false", "optim.bias_decay=0.0",
        "train.epochs=1", "train.batch_size=64", "train.optimizer=adam", "train.betas=[0.9,0.999]", "train.weight_decay=0.0",
        "train.lr=0.022", "train.min_lr=0.0044", "train.lr_schedule=cosine", "train.warmup_steps=0",
        f"train.lr_decay_epochs={LR_DECAY_EPOCHS}", "train.grad_clip=null", "train.precision=no", f"train.seed={seed}",
        "train.log_every=10", "train.log_with=[]", "train.best_metric=val_loss", "eval.fd_every_eval=false",
    ]
    if steps < FULL_STEPS:
        keys.append(f"train.max_steps={steps}")
    return keys


# --- genflow's sampler (a subprocess, pinned) ------------------------------------------------------------------
def generate_genflow(run: Path, out: Path, sweeps: int, seed: int) -> None:
    """Sample a trained genflow run as `genflow eval dtm` does: 1000 free, 1000 clamped (round-robin classes)."""
    import torch

    from genflow.engine.run_dir import load_run

    loaded = load_run(run, checkpoint="last")
    recipe, model = loaded.recipe, loaded.model
    n = PER_CLASS * CLASSES
    facts = {}
    start = time.perf_counter()
    free = recipe.generate(model, n, seed=seed, sweeps=sweeps)["levels"]
    facts["free"] = time.perf_counter() - start
    labels = torch.arange(n) % CLASSES
    start = time.perf_counter()
    clamped = recipe.generate(model, n, seed=seed + 1, labels=labels, sweeps=sweeps)["levels"]
    facts["clamped"] = time.perf_counter() - start
    np.savez_compressed(out, free=free.numpy().astype(np.uint8), clamped=clamped.numpy().astype(np.uint8),
                        clamped_labels=labels.numpy().astype(np.int64))
    out.with_suffix(".json").write_text(json.dumps({"gen_s": facts, "sweeps": sweeps, "torch_threads": torch.get_num_threads()}))
    print(f"genflow: {n} free in {facts['free']:.1f} s, {n} clamped in {facts['clamped']:.1f} s ({sweeps} sweeps)")


# --- the benchmark -------------------------------------------------------------------------------------------
def export_mnist(path: Path) -> None:
    """genflow's train / test shards -> one .npz the reference driver's dataset shim serves."""
    from genflow.data import load_split

    if path.is_file():
        return
    arrays = {}
    for split in ("train", "test"):
        data = load_split(DATA_DIR, split, ["image", "label"])
        arrays[f"{split}_image"], arrays[f"{split}_label"] = data["image"], data["label"]
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def run_queue(jobs: list[tuple[str, list[str], dict, Path]], failures: list[str]) -> None:
    """Run (name, command, env, log) jobs one after another; a failed `genflow train X` skips `genflow generate X`."""
    for name, command, env, log in jobs:
        if name.startswith("genflow generate") and name.replace("generate", "train") in failures:
            continue
        start = time.perf_counter()
        with open(log, "w") as f:
            f.write("$ " + " ".join(command) + "\n")
            f.flush()
            done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        print(f"  [{datetime.datetime.now():%H:%M:%S}] {name}: exit {done.returncode} after {time.perf_counter() - start:.0f} s "
              f"(log {log})", flush=True)
        if done.returncode != 0:
            failures.append(name)


def genflow_steady(run: Path) -> dict:
    """Seconds per training step from the run's logged windows (median after the first: torch.compile)."""
    from genflow.engine.metrics_log import read_metrics

    rows = read_metrics(run)
    rates = [(r["step"], BATCH / r["samples_per_s"]) for r in rows if r.get("samples_per_s")]
    steady = [s for _, s in rates[1:]] or [s for _, s in rates]
    return {"s_per_step_steady": statistics.median(steady) if steady else float("nan"), "windows": len(rates),
            "s_per_step_first_window": rates[0][1] if rates else float("nan"), "steps": max((s for s, _ in rates), default=0)}


def busy_processes() -> list[str]:
    """The machine's busiest processes now (other jobs on these cores skew both sides' timings)."""
    done = subprocess.run(["ps", "-eo", "pid,pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True)
    return [line[:160] for line in done.stdout.splitlines()[1:6]]


def score(npz: Path, scorer, classifier) -> dict:
    import torch

    data = np.load(npz)
    out = {}
    with torch.no_grad():
        for kind in ("free", "clamped"):
            out[f"fd_{kind}"] = float(scorer.frechet(torch.from_numpy(data[kind].astype(np.int64))))
        levels = torch.from_numpy(data["clamped"].astype(np.int64))
        labels = torch.from_numpy(data["clamped_labels"])
        hits = (classifier(torch.from_numpy(scorer.classifier_input(levels))).argmax(1) == labels).float()
    per_class = [float(hits[labels == c].mean()) for c in range(CLASSES)]
    out.update(clamped_accuracy=float(hits.mean()), clamped_accuracy_per_class=per_class,
               worst_class=int(np.argmin(per_class)), worst_class_accuracy=min(per_class),
               free_ink=float(data["free"].mean()), clamped_ink=float(data["clamped"].mean()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="local copy of the reference (holds thrmlDenoising/)")
    parser.add_argument("--source-python", help="a Python with the reference's dependencies (jax, thrml, ...)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--layouts", nargs="+", default=["reference", "image"], help="genflow model.placement values")
    parser.add_argument("--gen-sweeps", type=int, default=100, help="Gibbs sweeps per denoising step when generating")
    parser.add_argument("--steps", type=int, default=FULL_STEPS, help=f"training steps per run (<= {FULL_STEPS}: one epoch)")
    parser.add_argument("--out", type=Path, default=Path("/work/bench/dtm-parity"))
    parser.add_argument("--cores", type=int, nargs=2, default=[0, 1], help="CPU for the reference, CPU for genflow")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)  # internal: sample a genflow run
    parser.add_argument("--gen-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--gen-seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        return generate_genflow(args.generate, args.gen_out, args.gen_sweeps, args.gen_seed)
    if not args.source or not args.source_python:
        parser.error("--source and --source-python are required")
    if not (args.source / "thrmlDenoising" / "DTM.py").is_file():
        parser.error(f"{args.source}: no thrmlDenoising/DTM.py (not a copy of dtm-replication?)")
    if not 1 <= args.steps <= FULL_STEPS:
        parser.error(f"--steps: 1..{FULL_STEPS}")

    import torch

    from genflow.engine.precision import cpu_description
    from genflow_recipes.dtm.fd import FrechetScorer

    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    commit_file = args.source / "COMMIT"
    commit = commit_file.read_text().strip() if commit_file.is_file() else "unknown"
    versions = subprocess.run([args.source_python, "-c", "import jax, thrml; print(jax.__version__, thrml.__version__)"],
                              capture_output=True, text=True)
    jax_version = versions.stdout.strip() or f"? ({versions.stderr.strip()[-200:]})"
    header = {"cpu": cpu_description(), "torch": torch.__version__, "jax_thrml": jax_version, "source": str(args.source.resolve()),
              "source_commit": commit, "cores": args.cores, "steps": args.steps, "gen_sweeps": args.gen_sweeps,
              "seeds": args.seeds, "layouts": args.layouts, "started": f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}",
              "load_before": os.getloadavg(), "busy_before": busy_processes()}
    print(f"CPU: {header['cpu']}")
    print(f"genflow: torch {torch.__version__}; reference: {header['source']} @ {commit}, jax / thrml {jax_version} "
          f"({args.source_python})")
    print(f"reference on core {args.cores[0]}, genflow on core {args.cores[1]}; {args.steps} steps, "
          f"{args.gen_sweeps} generation sweeps; out {out}; load average {header['load_before'][0]:.2f}; busiest now:\n  "
          + "\n  ".join(header["busy_before"]), flush=True)
    mnist = out / "mnist.npz"
    export_mnist(mnist)

    single = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env = {**os.environ, **single}
    ref_jobs, gen_jobs, runs = [], [], {}
    for seed in args.seeds:
        npz = out / "samples" / f"reference-s{seed}.npz"
        ref_jobs.append((f"reference seed {seed}", ["taskset", "-c", str(args.cores[0]), args.source_python, str(DRIVER),
                         "--source", str(args.source.resolve()), "--data-npz", str(mnist), "--out", str(npz), "--seed", str(seed),
                         "--steps", str(args.steps), "--lr-decay-steps", str(LR_DECAY_EPOCHS * FULL_STEPS),
                         "--gen-sweeps", str(args.gen_sweeps), "--per-class", str(PER_CLASS), "--threads", "1"],
                         env, out / "logs" / f"reference-s{seed}.log"))
        for layout in args.layouts:
            name = f"parity-{layout}-s{seed}"
            run = out / "runs" / "dtm" / name
            shutil.rmtree(run, ignore_errors=True)
            runs[(layout, seed)] = run
            pin = ["taskset", "-c", str(args.cores[1]), sys.executable]
            gen_jobs.append((f"genflow train {name}", pin + ["-m", "genflow.cli", "train", "dtm", "--name", name, "--runs-dir",
                             str(out / "runs"), "--no-progress", *genflow_keys(seed, layout, args.gen_sweeps, args.steps)],
                             env, out / "logs" / f"genflow-{name}.log"))
            gen_jobs.append((f"genflow generate {name}", pin + [str(Path(__file__).resolve()), "--generate", str(run),
                             "--gen-out", str(out / "samples" / f"genflow-{layout}-s{seed}.npz"),
                             "--gen-sweeps", str(args.gen_sweeps), "--gen-seed", str(10_000 + seed)],
                             env, out / "logs" / f"genflow-{name}-generate.log"))
    failures: list[str] = []
    start = time.perf_counter()
    queues = [threading.Thread(target=run_queue, args=(jobs, failures)) for jobs in (ref_jobs, gen_jobs)]
    for q in queues:
        q.start()
    for q in queues:
        q.join()
    header.update(load_after=os.getloadavg(), busy_after=busy_processes())
    print(f"both sides done in {time.perf_counter() - start:.0f} s; failures: {failures or 'none'}; load average "
          f"before {header['load_before'][0]:.2f}, at the end (1 / 5 / 15 min) {header['load_after']}", flush=True)

    # --- scoring: one scorer, one classifier, for every side -----------------------------------------------
    torch.set_num_threads(len(args.cores))
    scorer = FrechetScorer(DATA_DIR, levels=1, threshold=0.1, classes=None, classifier_epochs=2,
                           to_images=lambda levels: levels.float().reshape(-1, 28, 28).numpy())
    classifier = scorer.classifier()
    test = scorer.real_images("test")
    with torch.no_grad():
        test_acc = float((classifier(torch.from_numpy(test["input"])).argmax(1).numpy() == test["label"]).mean())
    bounds = scorer.reference(PER_CLASS * CLASSES, seed=0, split="test")
    ceiling = bounds["fd_noise_ceiling"]
    rows = []
    for seed in args.seeds:
        npz = out / "samples" / f"reference-s{seed}.npz"
        if npz.is_file():
            facts = json.loads(npz.with_suffix(".json").read_text())
            rows.append({"side": "reference", "layout": "reference (raster)", "seed": seed, "train_images": facts["train_images"],
                         "steps": facts["steps"], "s_per_step_steady": facts["s_per_step_steady"],
                         "s_per_step_total": facts["s_per_step_total"], "train_s": facts["train_s"],
                         "warmup_s": facts["warmup_s"], "gen_s": facts["gen_s"], **score(npz, scorer, classifier)})
        for layout in args.layouts:
            npz, run = out / "samples" / f"genflow-{layout}-s{seed}.npz", runs[(layout, seed)]
            if not npz.is_file():
                continue
            timing = genflow_steady(run)
            rows.append({"side": "genflow", "layout": layout, "seed": seed, "train_images": 54_000, **timing,
                         "gen_s": json.loads(npz.with_suffix(".json").read_text())["gen_s"], **score(npz, scorer, classifier)})
    ref_speed = [r["s_per_step_steady"] for r in rows if r["side"] == "reference"]
    ref_mean = statistics.mean(ref_speed) if ref_speed else float("nan")
    for r in rows:
        r["fd_free_of_ceiling"] = r["fd_free"] / ceiling
        r["fd_clamped_of_ceiling"] = r["fd_clamped"] / ceiling
        r["speed_vs_reference"] = ref_mean / r["s_per_step_steady"] if r["s_per_step_steady"] else float("nan")
    result = {**header, "failures": failures, "fd_floor": bounds["fd_floor"], "fd_noise_ceiling": ceiling,
              "classifier_test_accuracy": test_acc, "classifier": scorer.classifier_facts, "rows": rows,
              "genflow_keys": genflow_keys(0, "LAYOUT", args.gen_sweeps, args.steps)}
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))

    lines = [f"# DTM parity, config S ({args.steps} steps, {args.gen_sweeps} generation sweeps)", "",
             f"CPU: {header['cpu']}  ", f"genflow torch {torch.__version__}; reference {commit}, jax / thrml {jax_version}  ",
             f"Fréchet distance (classifier features, 1000 images vs train): floor {bounds['fd_floor']:.3f} "
             f"(1000 real test images), noise ceiling {ceiling:.3f}; classifier test accuracy {test_acc:.4f}  ",
             f"load average (1 / 5 / 15 min) at the start {header['load_before']}, at the end of training {header['load_after']} "
             f"(2 means only this benchmark's two pinned jobs); train imgs: the training set each side draws its batches from", "",
             "| side | layout | seed | train imgs | steps | s/step (1 core) | speed vs ref | FD free | /ceiling | "
             "FD clamped | /ceiling | clamped acc | worst class |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['side']} | {r['layout']} | {r['seed']} | {r['train_images']} | {r['steps']} | "
                     f"{r['s_per_step_steady']:.3f} | {r['speed_vs_reference']:.2f}x | {r['fd_free']:.3f} | "
                     f"{r['fd_free_of_ceiling']:.3f} | {r['fd_clamped']:.3f} | {r['fd_clamped_of_ceiling']:.3f} | "
                     f"{r['clamped_accuracy']:.3f} | {r['worst_class']} ({r['worst_class_accuracy']:.2f}) |")
    lines += ["", "speed vs ref: the reference's mean steady s/step over this run's seeds / this row's (per thread, "
              "one pinned core each, both sides running at once).", ""]
    (out / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
