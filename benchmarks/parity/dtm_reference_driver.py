"""Trains the reference DTM (THRML / JAX) on one config and saves its generated images; run by benchmarks/parity/dtm.py.

    PY dtm_reference_driver.py --source PATH --data-npz MNIST.npz --out OUT.npz --seed 0 [--steps 843]
        [--lr-decay-steps 16860] [--gen-sweeps 100] [--threads 1]

PY is a Python with the reference's dependencies (jax, thrml, equinox, optax, ...). PATH is a local copy of the
reference (its `thrmlDenoising` package); it is put on sys.path and only imported and called, never copied. genflow
never imports this file or the reference.

The reference reads MNIST through tensorflow_datasets; this driver installs a stand-in module that serves the
arrays of MNIST.npz (written by dtm.py from genflow's shards: train_image (N, 28, 28) uint8, train_label, and the
same for test). `--steps K` keeps the first K x batch training images, so one reference epoch is K steps; the
cosine span stays `--lr-decay-steps` optimiser steps whatever K is. Without a GPU, a request for the "gpu"
devices is answered with the CPU devices.

Writes OUT.npz (free, clamped: (n, 784) uint8 0/1; clamped_labels) and OUT.json (timings, config, versions).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from pathlib import Path

BATCH = 64
STEPS_PER_EPOCH = 54_000 // BATCH  # 843, the full training set's epoch
WARMUP = 4  # steps of the throw-away model that measures the compile


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="local copy of the reference (holds thrmlDenoising/)")
    parser.add_argument("--data-npz", type=Path, required=True, help="MNIST arrays exported from genflow's shards")
    parser.add_argument("--out", type=Path, required=True, help="output .npz (a .json with the same stem beside it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=STEPS_PER_EPOCH, help="training steps (one epoch of steps x 64 images)")
    parser.add_argument("--lr-decay-steps", type=int, default=20 * STEPS_PER_EPOCH, help="cosine decay span in optimiser steps")
    parser.add_argument("--gen-sweeps", type=int, default=100, help="Gibbs sweeps per denoising step when generating")
    parser.add_argument("--per-class", type=int, default=100, help="generated images per class (free: the same count in all)")
    parser.add_argument("--threads", type=int, default=0, help="1: single-threaded XLA; 0: XLA's default")
    return parser.parse_args()


def configure_threads(threads: int) -> None:
    """Must run before jax is imported."""
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1".strip()
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[name] = "1"


def install_dataset_shim(data_npz: Path, limit: dict) -> dict:
    """A stand-in `tensorflow_datasets` module serving the exported arrays (the first limit["train"] training
    images; the caller may change it between loads); returns what it served last (counts)."""
    import numpy as np

    arrays = dict(np.load(data_npz))
    served = {}

    def split(name: str, limit: int | None) -> dict:
        images, labels = arrays[f"{name}_image"], arrays[f"{name}_label"]
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        served[name] = int(len(images))
        return {"image": images.reshape(len(images), 28, 28, 1).astype("uint8"), "label": labels.astype("int64")}

    def load(name=None, batch_size=None, data_dir=None, **_):
        if name != "mnist" or batch_size != -1:
            raise ValueError(f"dataset shim: only load(name='mnist', batch_size=-1), got name={name!r} batch_size={batch_size!r}")
        return {"train": split("train", limit["train"]), "test": split("test", None)}

    module = types.ModuleType("tensorflow_datasets")
    module.load = load
    module.as_numpy = lambda tree: tree
    sys.modules["tensorflow_datasets"] = module
    return served


def patch_gpu_request() -> str:
    """If jax has no GPU, make jax.devices('gpu' | 'cuda') return the CPU devices. Returns the platform used."""
    import jax

    original = jax.devices
    try:
        original("gpu")
        return "gpu"
    except RuntimeError:
        pass

    def devices(backend=None):
        if isinstance(backend, str) and backend.lower() in ("gpu", "cuda"):
            return original("cpu")
        return original(backend)

    jax.devices = devices
    return "cpu"


def main() -> None:
    args = parse_args()
    configure_threads(args.threads)
    limit = {"train": args.steps * BATCH if args.steps < STEPS_PER_EPOCH else None}
    served = install_dataset_shim(args.data_npz, limit)
    platform = patch_gpu_request()
    sys.path.insert(0, str(args.source.resolve()))

    import jax
    import jax.random as jr
    import numpy as np
    import optax

    from thrmlDenoising.DTM import DTM
    from thrmlDenoising.utils import make_cfg

    cfg = make_cfg(
        exp={"seed": args.seed, "n_cores": 1, "compute_autocorr": False, "generate_gif": False},
        data={"dataset_name": "mnist", "target_classes": tuple(range(10)), "pixel_threshold_for_single_trials": 0.1},
        graph={"graph_preset_architecture": 44_12, "num_label_spots": 10, "grayscale_levels": 1, "torus": True},
        sampling={"batch_size": BATCH, "n_samples": 10, "steps_per_sample": 4, "steps_warmup": 40, "training_beta": 1.0},
        generation={"generation_beta_start": 0.8, "generation_beta_end": 1.2, "fid_images_per_digit": args.per_class,
                    "steps_warmup": args.gen_sweeps},
        diffusion_schedule={"num_diffusion_steps": 3, "kind": "log", "diffusion_offset": 0.15},
        diffusion_rates={"image_rate": 0.9, "label_rate": 0.2},
        optim={"step_learning_rates": (0.022,), "momentum": 0.9, "b2_adam": 0.999, "n_epochs_for_lrd": 20,
               "alpha_cosine_decay": 0.2},
        cp={"correlation_penalty": (0.0,), "adaptive_cp": False},
        wd={"weight_decay": (0.0,), "adaptive_wd": False},
    )

    # The reference sizes its cosine span as n_epochs_for_lrd x (batches per epoch of the data it holds); with a
    # shortened data set (--steps) keep the span of the full one by fixing decay_steps while the model is built.
    original_schedule, spans = optax.cosine_decay_schedule, []
    limit_main = limit["train"]

    def fixed_span_schedule(init_value, decay_steps, alpha=0.0, **kw):
        spans.append((int(decay_steps), args.lr_decay_steps))
        return original_schedule(init_value=init_value, decay_steps=args.lr_decay_steps, alpha=alpha, **kw)

    def build(train_images: int | None):
        limit["train"] = train_images
        optax.cosine_decay_schedule = fixed_span_schedule
        try:
            return DTM(cfg)
        finally:
            optax.cosine_decay_schedule = original_schedule

    def train(model) -> float:
        start = time.perf_counter()
        model.train(n_epochs=1, evaluate_every=0)  # 0: no logging folder, no evaluation, no saving
        jax.block_until_ready([s.model.weights for s in model.steps])
        return time.perf_counter() - start

    # Compile time does not depend on the scan's length. A first throw-away model pays the one-time costs (imports,
    # traces jax caches for later models); a second, of WARMUP steps, then pays what the main model's compile will
    # cost, so (main - second) / (steps - WARMUP) is the steady time of a step.
    first_s = train(build(2 * BATCH))
    print(f"\nreference: first throw-away model, 2 steps in {first_s:.1f} s", flush=True)
    warm_s = train(build(WARMUP * BATCH))
    print(f"\nreference: second throw-away model, {WARMUP} steps in {warm_s:.1f} s (mostly jax compile)", flush=True)
    start = time.perf_counter()
    dtm = build(limit_main)
    build_s = time.perf_counter() - start
    n_train = int(dtm.train_dataset["image"].shape[0])
    steps = n_train // BATCH
    print(f"reference: {n_train} training images ({served}), {steps} steps per epoch, cosine span "
          f"{args.lr_decay_steps} steps (reference's own would be {spans[-1][0] if spans else '?'}), built in {build_s:.1f} s",
          flush=True)
    train_s = train(dtm)
    steady = (train_s - warm_s) / (steps - WARMUP) if steps > WARMUP else float("nan")
    print(f"\nreference: trained {steps} steps in {train_s:.1f} s ({train_s / steps:.3f} s/step with compile; "
          f"steady {steady:.3f} s/step = (epoch - warm-up) / {steps - WARMUP} steps)", flush=True)

    key = jr.PRNGKey(10_000 + args.seed)
    k_free, k_clamped = jr.split(key)
    out, gen = {}, {}
    for name, k, free in (("free", k_free, True), ("clamped", k_clamped, False)):
        start = time.perf_counter()
        _, _, images = dtm.gen_images(k, args.per_class, free, 1)  # (classes, per_class, pixels) in [0, 1]
        images = np.asarray(jax.block_until_ready(images))
        gen[name] = time.perf_counter() - start
        out[name] = (images.reshape(-1, images.shape[-1]) > 0.5).astype(np.uint8)
        print(f"reference: {len(out[name])} {name} images in {gen[name]:.1f} s (with compile)", flush=True)
    classes = np.asarray(cfg.data.target_classes)
    out["clamped_labels"] = np.repeat(classes, args.per_class).astype(np.int64)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)

    commit = args.source / "COMMIT"
    import thrml

    facts = {
        "side": "reference", "seed": args.seed, "platform": platform, "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax": jax.__version__, "thrml": getattr(thrml, "__version__", "?"), "optax": optax.__version__,
        "source": str(args.source.resolve()), "source_commit": commit.read_text().strip() if commit.is_file() else None,
        "train_images": n_train, "test_images": served.get("test"), "steps": steps, "lr_decay_steps": args.lr_decay_steps,
        "build_s": build_s, "train_s": train_s, "warmup_steps": WARMUP, "warmup_s": warm_s, "first_throwaway_s": first_s,
        "s_per_step_total": train_s / steps, "s_per_step_steady": steady, "gen_sweeps": args.gen_sweeps,
        "gen_s": gen, "config": _plain(cfg),
    }
    args.out.with_suffix(".json").write_text(json.dumps(facts, indent=1, default=str))


def _plain(cfg) -> dict:
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(cfg), default=str))


if __name__ == "__main__":
    main()
