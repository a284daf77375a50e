"""Runs FlowMix's MnistFlow2D (JAX / flax) for benchmarks/parity/digit4.py: forward parity outputs, or a training run.

    PY digit4_reference_driver.py parity --source PATH --inputs IN.npz --out OUT.npz [--seed 0]
    PY digit4_reference_driver.py train --source PATH --data-npz CLOUDS.npz --out OUT.npz [--epochs 12] [--batch 32]
        [--seed 42] [--eval-every 4] [--val-clouds 256] [--steps 20] [--reuse-epoch-key]

PY is a Python with jax, flax and optax. PATH is a local copy of FlowMix (holding `src/`); it is put on sys.path and
its modules are imported and called, never copied. genflow never imports this file or the source.

The model is the source's `MnistFlow2D` with its class defaults (latent 64, PointNet 64-128-256 with LayerNorm, the
6 x 64 `GlobalAdaLNMLPCRN`, unit-norm latent, velocity prediction): 372,930 parameters.

`parity`: initialises the model (seed), adds N(0, 0.1^2) to every parameter (the zero output layer and identity
LayerNorms of a fresh model would hide a wrong port), and writes its parameters by flax name
(`params/encoder/Dense_0/kernel`, ...), the latent codes of IN.npz's `points`, the field's output on (`x_t`, those codes, `t`) in the source's own
time (t = 0 data, t = 1 noise), and the loss of `compute_loss` on `points` with the first key from `loss_seed` on
whose times lie in [0.01, 0.99] (genflow clamps t to [1e-3, 1 - 1e-3] where noise / data predictions divide by
t or 1 - t; the source adds 1e-8), with the noise and times that key draws (so genflow can compute its loss on the same batch). With `prediction` = noise / target in
IN.npz, the model predicts that and the loss is weighted back to velocity space (the source's `loss_targets`).

`train`: the source's `train_step` (imported from src/train_all_digits.py; its plotting imports are stubbed out)
with Adam(1e-3, 0.9, 0.999) over CLOUDS.npz's `train` clouds in their stored order, unshuffled, as the source's
loop batches them. One change, said here and in the results: a fresh key per step (the source splits the same
epoch key at every step, so all steps of an epoch draw the same noise and times; `--reuse-epoch-key` keeps that).
Every --eval-every epochs the first --val-clouds `val` clouds are reconstructed (encode, then Euler from noise with
the field evaluated at the true time; the source's own sampler passes the step index as the time) and the
parameters with the lowest mean Chamfer-L2 are kept, as genflow keeps best.pt. At the end the kept parameters
reconstruct every `test` and `val` cloud; OUT.npz holds `test_generated`, `val_generated`; OUT.json the log,
timings and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import types
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["parity", "train"])
    parser.add_argument("--source", type=Path, required=True, help="local copy of FlowMix (holds src/)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--inputs", type=Path, help="parity: points, x_t, t, loss_seed (and prediction)")
    parser.add_argument("--data-npz", type=Path, help="train: train / val / test clouds (N, P, 2) float32")
    parser.add_argument("--seed", type=int, default=None, help="initialisation seed (parity 0, train 42)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--val-clouds", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="Euler steps of the reconstructions")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many training steps (smoke runs)")
    parser.add_argument("--reuse-epoch-key", action="store_true", help="the source's loop: one key for every step of an epoch")
    return parser.parse_args()


def import_source(source: Path):
    """Put the source on sys.path with its plotting package stubbed (it needs matplotlib and scikit-learn)."""
    sys.path.insert(0, str(source.resolve()))
    stub = types.ModuleType("src.plotting")
    for name in ("plot_samples", "plot_unconditional_samples", "plot_loss_trajectory", "create_tsne_plot",
                 "visualize_masked_digits"):
        setattr(stub, name, lambda *a, **k: None)
    sys.modules["src.plotting"] = stub
    from src.models.mnist_flow_2d import MnistFlow2D, PredictionTarget
    from src import train_all_digits

    return MnistFlow2D, PredictionTarget, train_all_digits


def flat_params(params) -> dict:
    import jax
    import numpy as np

    out = {}
    for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
        out["/".join(str(getattr(p, "key", p)) for p in path)] = np.asarray(value)
    return out


def versions() -> dict:
    import flax
    import jax
    import numpy as np
    import optax

    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def make_model(MnistFlow2D, PredictionTarget, prediction: str = "velocity"):
    target = PredictionTarget(prediction)
    return MnistFlow2D(prediction_target=target, loss_targets=(PredictionTarget.VELOCITY,))


def run_parity(args) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    MnistFlow2D, PredictionTarget, _ = import_source(args.source)
    inputs = np.load(args.inputs)
    prediction = str(inputs["prediction"]) if "prediction" in inputs else "velocity"
    model = make_model(MnistFlow2D, PredictionTarget, prediction)
    points, x_t, t = (jnp.asarray(inputs[k]) for k in ("points", "x_t", "t"))
    key = jax.random.PRNGKey(0 if args.seed is None else args.seed)
    params = model.init(key, points[:2], key)
    # perturb every parameter: at initialisation the field's output layer is zero and the LayerNorms are the
    # identity, which would hide a wrong port
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree_util.tree_unflatten(tree, [v + 0.1 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)])
    z, _, _ = model.apply(params, points, key, method=model.encode)
    field = model.apply(params, x_t, z, t, method=lambda m, x, c, s: m.crn(x, c, s))
    # the draws compute_loss makes from its key (encode's key is unused without a VAE); the first seed from
    # loss_seed on whose times all lie in [0.01, 0.99], where genflow does not clamp t (its t_eps is 1e-3)
    loss_seed = int(inputs["loss_seed"])
    while True:
        loss_key = jax.random.PRNGKey(loss_seed)
        _, k_flow = jax.random.split(loss_key)
        k_noise, k_time = jax.random.split(k_flow, 2)
        noise = jax.random.normal(k_noise, points.shape)
        times = jax.random.uniform(k_time, (points.shape[0],))
        if float(times.min()) >= 0.01 and float(times.max()) <= 0.99:
            break
        loss_seed += 1
    loss, metrics = model.apply(params, points, loss_key, method=model.compute_loss)
    count = sum(int(v.size) for v in jax.tree_util.tree_leaves(params["params"]))
    arrays = {f"param:{k}": v for k, v in flat_params(params).items()}
    np.savez(args.out, z=np.asarray(z), field=np.asarray(field), loss=np.asarray(loss),
             flow_loss=np.asarray(metrics["flow_loss"]), loss_noise=np.asarray(noise), loss_t=np.asarray(times), **arrays)
    args.out.with_suffix(".json").write_text(json.dumps({"params": count, "prediction": prediction, "loss_seed": loss_seed,
                                                         **versions()}, indent=1))


def reconstruct(model, params, clouds, key, steps: int, batch: int = 128):
    """Encode each cloud, then integrate noise (t = 1) to data (t = 0) with Euler at the true times."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    def velocity(m, x, z, t):
        return m.convert_crn_output_to_velocity(m.crn(x, z, t), x, t)

    @jax.jit
    def one_batch(p, x, k):
        k_enc, k_noise = jax.random.split(k)
        z, _, _ = model.apply(p, x, k_enc, method=model.encode)
        y = jax.random.normal(k_noise, x.shape)
        for i in range(steps):
            t = jnp.full((x.shape[0],), 1.0 - i / steps)
            y = y - model.apply(p, y, z, t, method=velocity) / steps
        return y

    out = []
    for lo in range(0, len(clouds), batch):
        key, k = jax.random.split(key)
        out.append(np.asarray(one_batch(params, jnp.asarray(clouds[lo:lo + batch]), k)))
    return np.concatenate(out)


def chamfer_l2(a, b):
    import numpy as np

    d = np.sqrt(np.maximum(((a[:, :, None, :] - b[:, None, :, :]) ** 2).sum(-1), 0.0))
    return float((d.min(2).mean(1) + d.min(1).mean(1)).mean())


def run_train(args) -> None:
    import jax
    import numpy as np
    import optax

    MnistFlow2D, PredictionTarget, source_training = import_source(args.source)
    data = np.load(args.data_npz)
    train, val, test = data["train"], data["val"], data["test"]
    model = make_model(MnistFlow2D, PredictionTarget)
    seed = 42 if args.seed is None else args.seed
    key = jax.random.PRNGKey(seed)
    key, k_init = jax.random.split(key)
    params = model.init(k_init, train[:2], k_init)
    count = sum(int(v.size) for v in jax.tree_util.tree_leaves(params["params"]))
    optimizer = optax.adam(1e-3, b1=0.9, b2=0.999)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(p, o, x, k):
        return source_training.train_step(model, p, o, x, k, optimizer)

    log, best, best_params, steps_done, train_seconds = [], float("inf"), params, 0, 0.0
    started = time.time()
    for epoch in range(1, args.epochs + 1):
        key, k_epoch = jax.random.split(key)
        t0, losses = time.time(), []
        for lo in range(0, len(train), args.batch):
            if args.reuse_epoch_key:
                _, k_step = jax.random.split(k_epoch)  # the source's loop: the same split every step
            else:
                k_epoch, k_step = jax.random.split(k_epoch)
            params, opt_state, loss, _ = step(params, opt_state, train[lo:lo + args.batch], k_step)
            losses.append(float(loss))
            steps_done += 1
            if args.max_steps and steps_done >= args.max_steps:
                break
        train_seconds += time.time() - t0
        entry = {"epoch": epoch, "steps": steps_done, "loss": float(np.mean(losses)), "epoch_seconds": time.time() - t0}
        if epoch % args.eval_every == 0 or epoch == args.epochs or (args.max_steps and steps_done >= args.max_steps):
            clouds = val[: args.val_clouds]
            score = chamfer_l2(reconstruct(model, params, clouds, jax.random.PRNGKey(0), args.steps), clouds)
            entry["val_chamfer_l2"] = score
            if score < best:
                best, best_params, entry["best"] = score, params, True
        log.append(entry)
        print(json.dumps(entry), flush=True)
        if args.max_steps and steps_done >= args.max_steps:
            break
    test_generated = reconstruct(model, best_params, test, jax.random.PRNGKey(1), args.steps)
    val_generated = reconstruct(model, best_params, val, jax.random.PRNGKey(2), args.steps)
    np.savez(args.out, test_generated=test_generated, val_generated=val_generated)
    args.out.with_suffix(".json").write_text(json.dumps({
        "params": count, "seed": seed, "epochs": args.epochs, "batch": args.batch, "steps": steps_done,
        "train_seconds": train_seconds, "wall_seconds": time.time() - started, "best_val_chamfer_l2": best,
        "reuse_epoch_key": args.reuse_epoch_key, "euler_steps": args.steps, "log": log,
        "threads": os.environ.get("XLA_FLAGS", ""), **versions()}, indent=1))


def main() -> None:
    args = parse_args()
    run_parity(args) if args.mode == "parity" else run_train(args)


if __name__ == "__main__":
    main()
