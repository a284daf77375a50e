"""Parity of digit4's `digit4_source` config with FlowMix's MnistFlow2D (JAX / flax): ported weights, same outputs.

    python benchmarks/parity/digit4.py --source PATH --source-python PY [--out DIR]

PATH is a local copy of FlowMix (holding `src/`); PY a Python with jax, flax and optax. The source has no licence:
genflow never imports it; benchmarks/parity/digit4_reference_driver.py, run with PY, imports and calls it. CI never
runs this benchmark.

For each prediction target (velocity, noise, target) the driver initialises the source's model (its class defaults:
372,930 parameters), perturbs every parameter by N(0, 0.1^2), and returns its parameters by flax name, the latent codes of 8 clouds of 128 points, its
field's output on random (x_t, t) and the loss of its `compute_loss` on those clouds with the noise and times its
key draws (a key whose times lie in [0.01, 0.99]). The weights are ported by name into genflow's Digit4Flow built from `digit4_source.yaml`, and the same
quantities are computed there, in float32 on the CPU.

The two codes run time in opposite directions (the source: t = 0 data, t = 1 noise, velocity = noise - data;
genflow: t = 0 noise, t = 1 data), so the port maps one onto the other exactly: genflow is evaluated at
1 - t, the time projection's weights are multiplied by the fixed orthogonal map that takes the sinusoids of
1 - t to those of t, and for a velocity prediction the output layer is negated (a noise or data prediction means
the same point in both). The loss needs no change: the same noise, data and time give the same squared error.

Prints the CPU, versions, parameter counts and the largest differences: absolute for the latent codes and the
field's output, relative (to the largest value) for the velocity a noise / data prediction implies (it divides by
t or 1 - t, down to 0.1 here) and for the loss; passes when every one is <= 1e-5. Writes results.json to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).resolve().with_name("digit4_reference_driver.py")
CONFIG = REPO / "recipes" / "digit4" / "configs" / "digit4_source.yaml"
TOLERANCE = 1e-5


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                flags = Path("/proc/cpuinfo").read_text()
                return line.split(":", 1)[1].strip() + (" (avx512_bf16)" if "avx512_bf16" in flags else " (no avx512_bf16)")
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_flip(kernel: np.ndarray) -> np.ndarray:
    """torch weight `(out, time_dim)` reading the sinusoids of genflow's t, equal to the source's kernel
    `(time_dim, out)` reading those of 1 - t: [sin, cos](f (1 - t)) = M [sin, cos](f t)."""
    half = kernel.shape[0] // 2
    f = np.exp(-np.log(10000.0) * np.arange(half) / (half - 1))
    m = np.zeros((2 * half, 2 * half))
    idx = np.arange(half)
    m[idx, idx], m[idx, half + idx] = -np.cos(f), np.sin(f)  # sin(f - f t) = sin f cos(f t) - cos f sin(f t)
    m[half + idx, idx], m[half + idx, half + idx] = np.sin(f), np.cos(f)  # cos(f - f t) = cos f cos(f t) + sin f sin(f t)
    return (kernel.astype(np.float64).T @ m).astype(np.float32)


def port(model, params: dict[str, np.ndarray], *, negate_output: bool) -> int:
    """Copy the source's flax parameters into genflow's Digit4Flow (digit4_source) by name; returns how many."""

    def dense(name: str, layer: torch.nn.Linear, weight=None, sign: float = 1.0) -> None:
        kernel = params[f"param:params/{name}/kernel"]
        layer.weight.copy_(torch.from_numpy(sign * (kernel.T if weight is None else weight)))
        if layer.bias is not None:
            layer.bias.copy_(torch.from_numpy(sign * params[f"param:params/{name}/bias"]))
        elif f"param:params/{name}/bias" in params:
            raise KeyError(f"{name} has a bias the port would drop")

    def norm(name: str, layer: torch.nn.LayerNorm) -> None:
        layer.weight.copy_(torch.from_numpy(params[f"param:params/{name}/scale"]))
        layer.bias.copy_(torch.from_numpy(params[f"param:params/{name}/bias"]))

    enc, field = model.encoder, model.field
    linears = [m for m in enc.point_mlp if isinstance(m, torch.nn.Linear)]
    norms = [m for m in enc.point_mlp if isinstance(m, torch.nn.LayerNorm)]
    with torch.no_grad():
        for i, (linear, layer_norm) in enumerate(zip(linears, norms)):
            dense(f"encoder/Dense_{i}", linear)
            norm(f"encoder/LayerNorm_{i}", layer_norm)
        dense(f"encoder/Dense_{len(linears)}", enc.head[0])
        dense("crn/Dense_0", field.context_projection)
        dense("crn/Dense_1", field.time_projection, weight=time_flip(params["param:params/crn/Dense_1/kernel"]))
        dense("crn/Dense_2", field.cond_mlp)
        dense("crn/Dense_3", field.input_projection)
        for i, (layer, modulation, layer_norm) in enumerate(zip(field.layers, field.modulations, field.norms)):
            dense(f"crn/Dense_{4 + 2 * i}", layer)
            dense(f"crn/Dense_{5 + 2 * i}", modulation)
            norm(f"crn/LayerNorm_{i}", layer_norm)
        dense(f"crn/Dense_{4 + 2 * len(field.layers)}", field.output_projection, sign=-1.0 if negate_output else 1.0)
    ported = sum(v.size for k, v in params.items() if k.startswith("param:"))
    if ported != sum(p.numel() for p in model.parameters()):
        raise SystemExit(f"ported {ported} numbers into a model of {sum(p.numel() for p in model.parameters())}")
    return ported


class _FixedDraws:
    """Stands in for the engine's StepContext: hands compute_loss the source's noise and (mapped) times."""

    def __init__(self, noise: torch.Tensor, u: torch.Tensor):
        self.noise, self.u = noise, u

    def randn(self, *shape, dtype=torch.float32):
        return self.noise

    def rand(self, *shape, dtype=torch.float32):
        return self.u


def compare(source: Path, python: str, prediction: str, workdir: Path) -> dict:
    from genflow_recipes.digit4.recipe import Digit4Config, Digit4Flow, Digit4Recipe, ModelConfig

    rng = np.random.default_rng(0)
    b, n = 8, 128
    points = rng.uniform(-1, 1, (b, n, 2)).astype(np.float32)
    x_t = rng.normal(size=(b, n, 2)).astype(np.float32)
    t_source = rng.uniform(0.1, 0.9, b).astype(np.float32)
    inputs, out = workdir / f"inputs_{prediction}.npz", workdir / f"source_{prediction}.npz"
    np.savez(inputs, points=points, x_t=x_t, t=t_source, loss_seed=np.int64(7), prediction=np.array(prediction))
    subprocess.run([python, str(DRIVER), "parity", "--source", str(source), "--inputs", str(inputs), "--out", str(out)],
                   check=True)
    src = dict(np.load(out))
    meta = json.loads(out.with_suffix(".json").read_text())

    cfg = Digit4Config(model=ModelConfig(**{**yaml.safe_load(CONFIG.read_text())["model"], "prediction_target": prediction}))
    model = Digit4Flow(cfg.model).float().eval()
    ported = port(model, src, negate_output=prediction == "velocity")
    recipe = Digit4Recipe(cfg)
    sign = -1.0 if prediction == "velocity" else 1.0
    with torch.no_grad():
        pts, xt = torch.from_numpy(points), torch.from_numpy(x_t)
        t_genflow = 1.0 - torch.from_numpy(t_source)
        z = model.encode(pts)["context"]
        field = model.field(xt, t_genflow, z)
        velocity = recipe.objective.to_velocity(field, x_t=xt, t=t_genflow)
        # the source's velocity at its time, in genflow's direction
        src_field = torch.from_numpy(src["field"])
        ts = torch.from_numpy(t_source)[:, None, None]
        src_velocity = {"velocity": src_field, "noise": (src_field - xt) / (1 - ts + 1e-8),
                        "target": (xt - src_field) / (ts + 1e-8)}[prediction]
        eps = recipe.objective.t_eps
        u = ((1.0 - torch.from_numpy(src["loss_t"])) - eps) / (1 - 2 * eps)
        loss, _ = recipe.compute_loss(model, {"points": pts}, _FixedDraws(torch.from_numpy(src["loss_noise"]), u))
    source_loss = float(src["loss"])
    return {
        "prediction": prediction, "params_source": meta["params"], "params_genflow": sum(p.numel() for p in model.parameters()),
        "ported": ported,
        "latent_max_abs": float((z - torch.from_numpy(src["z"])).abs().max()),
        "field_max_abs": float((field - sign * src_field).abs().max()),
        "field_scale": float(src_field.abs().max()),
        # noise / data predictions divide by t or 1 - t: the field's float32 rounding grows by up to 1 / 0.1
        "velocity_max_rel": float((velocity - (-src_velocity)).abs().max() / src_velocity.abs().max()),
        "loss_source": source_loss, "loss_genflow": float(loss),
        "loss_rel": abs(float(loss) - source_loss) / abs(source_loss),
        "versions": {k: meta[k] for k in ("jax", "flax", "optax", "numpy", "python")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="local copy of FlowMix (holds src/)")
    parser.add_argument("--source-python", default=sys.executable, help="a Python with jax, flax, optax")
    parser.add_argument("--out", type=Path, default=None, help="directory for results.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [compare(args.source, args.source_python, p, Path(tmp)) for p in ("velocity", "noise", "target")]
    header = {"cpu": cpu_model(), "torch": torch.__version__, **rows[0]["versions"]}
    print(json.dumps(header))
    print(f"parameters: source {rows[0]['params_source']:,}, genflow digit4_source {rows[0]['params_genflow']:,}")
    print("| prediction | latent max abs | field max abs (field max) | velocity max rel | loss source | loss genflow | loss rel |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for r in rows:
        print(f"| {r['prediction']} | {r['latent_max_abs']:.2e} | {r['field_max_abs']:.2e} ({r['field_scale']:.1f}) "
              f"| {r['velocity_max_rel']:.2e} "
              f"| {r['loss_source']:.6f} | {r['loss_genflow']:.6f} | {r['loss_rel']:.2e} |")
        worst = max(worst, r["latent_max_abs"], r["field_max_abs"], r["velocity_max_rel"], r["loss_rel"])
    passed = worst <= TOLERANCE and all(r["params_source"] == r["params_genflow"] for r in rows)
    print(f"{'PASS' if passed else 'FAIL'}: largest difference {worst:.2e} (tolerance {TOLERANCE:g})")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"header": header, "rows": rows, "passed": passed}, indent=1))
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
