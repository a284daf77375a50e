"""Parity of namo-fm / namo-diffusion (`--config namo_*_source`) with sage_learning, the codebase they replace.

    python benchmarks/parity/namo.py --source PATH [--source-python PY] [--sizes source,default]

PATH is a local checkout of github.com/dhruvmetha/sage_learning. The source's half runs in a
subprocess with PY (default: this Python), a Python that has the source's dependencies (torch,
lightning, torchmetrics, flow_matching, diffusers; torchvision is stood in if it does not import,
see sage_runtime.py). genflow never imports the source; only that subprocess does.

For each objective (flow matching, diffusion) and network size, the source's half builds its DiT inside
its GenerativeModule with the path, sampler, focal Dice weight (0.005) and AdamW (lr 1e-4, weight decay
0.01) of its configs, sets every parameter to random values (so the zero-initialised adaptive-norm
projections do not hide the blocks), and records, on random scenes: the network output, the primary
(MSE) loss, the focal Dice term, the total loss, the weights after one AdamW step with gradient-norm
clipping at 1, and 20 sampling steps (midpoint ODE / DDIM) from the same starting noise. genflow's half
ports the weights by name (recipes/namo/sage_dit.py), computes the same quantities with the recipe's
own loss (`loss_terms`), the engine's optimiser and the recipe's samplers, and prints the largest
absolute difference of each. It exits with 1 if any is above 1e-5 (samples: relative to their scale).
"""

from __future__ import annotations

import argparse
import functools
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SIZES = {  # name -> (patch, width, depth, heads)
    "source": (4, 256, 8, 8),  # the source's configs: 9,043,969 parameters
    "default": (8, 128, 4, 4),  # genflow's CPU default size
}
BATCH, IMAGE, SEED, STEPS = 4, 64, 0, 20
START_SEED = 100  # the sampling noise's generator
TOLERANCE = 1e-5


def _scenes(seed: int) -> dict[str, torch.Tensor]:
    """Random scenes: 5 context masks, a goal mask, path noise, times and sampling noise (same on both sides)."""
    g = torch.Generator().manual_seed(seed)
    context = (torch.rand(BATCH, 5, IMAGE, IMAGE, generator=g) < 0.2).to(torch.uint8)
    goal = torch.zeros(BATCH, 1, IMAGE, IMAGE)
    for i in range(BATCH):  # a rectangle per scene
        r, c = torch.randint(0, IMAGE - 16, (2,), generator=g).tolist()
        h, w = torch.randint(4, 16, (2,), generator=g).tolist()
        goal[i, 0, r:r + h, c:c + w] = 1
    return {"context": context, "goal": goal, "noise": torch.randn(BATCH, 1, IMAGE, IMAGE, generator=g),
            "t": torch.rand(BATCH, generator=g),
            # the first draw of its own generator, as genflow's samplers draw their start
            "x_init": torch.randn(BATCH, 1, IMAGE, IMAGE, generator=torch.Generator().manual_seed(START_SEED))}


# --- the source's half (runs in the subprocess) -------------------------------------------------------------
def source_half(source: Path, out: Path, sizes: list[str]) -> None:
    from sage_runtime import add_source_to_path, install_torchvision_standin

    add_source_to_path(source)
    standin = install_torchvision_standin()
    from src.model.dit.dit import DiT
    from src.model.generative_module import GenerativeModule
    from src.model.paths.fb_flow_matching_path import FBFlowMatchingPath
    from src.model.paths.hf_diffusion_path import HFDiffusionPath
    from src.model.samplers.fb_ode_sampler import FBODESampler
    from src.model.samplers.hf_diffusion_sampler import HFDiffusionSampler

    data = _scenes(SEED)
    # the source's data loader: masks -> [-1, 1]; coordinate grid (x, y) = linspace(0, 1) -> [-1, 1]
    ys, xs = np.meshgrid(np.linspace(0, 1, IMAGE), np.linspace(0, 1, IMAGE), indexing="ij")
    grid = torch.from_numpy(np.stack([xs, ys]).astype(np.float32)) * 2 - 1
    context = torch.cat([data["context"].float() * 2 - 1, grid.expand(BATCH, -1, -1, -1)], dim=1)
    x1 = torch.clamp(data["goal"] * 2 - 1, -1, 1)
    results = {"standin_torchvision": standin}
    for size in sizes:
        patch, width, depth, heads = SIZES[size]
        for objective in ("fm", "diffusion"):
            torch.manual_seed(SEED)
            network = DiT(img_size=IMAGE, patch=patch, in_ch=8, dim=width, depth=depth, heads=heads, out_ch=1)
            if objective == "fm":
                path, sampler = FBFlowMatchingPath(scheduler="condot"), FBODESampler(method="midpoint")
            else:
                path = HFDiffusionPath(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")
                sampler = HFDiffusionSampler(sampler_type="ddim", num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                             prediction_type="epsilon", eta=0.0, clip_sample=False)
            module = GenerativeModule(network=network, path=path, sampler=sampler, aux_loss_weight=0.005,
                                      optimizer=functools.partial(torch.optim.AdamW, lr=1e-4, weight_decay=0.01))
            count = sum(p.numel() for p in network.parameters())
            g = torch.Generator().manual_seed(SEED + 1)
            with torch.no_grad():
                for p in module.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            weights = {k: v.clone() for k, v in module.state_dict().items()}
            sample = path.sample(x_0=data["noise"], x_1=x1, t=data["t"])
            prediction = module(torch.cat([context, sample.x_t], dim=1), sample.t)
            primary = module.criterion(prediction, sample.target)
            clean = path.get_x1_from_prediction(sample.x_t, sample.t, prediction)
            focal = module._focal_dice_loss(torch.sigmoid(torch.clamp(clean, -10.0, 10.0)), (x1 + 1) / 2)
            total = module._compute_loss(prediction=prediction, target=sample.target, x_t=sample.x_t, t=sample.t, x_1=x1)
            with torch.no_grad():
                drawn = sampler.sample(model=lambda x, t: module(torch.cat([context, x], dim=1), t),
                                       x_init=data["x_init"].clone(), num_steps=STEPS)
            optimizer = module.configure_optimizers()["optimizer"]
            optimizer.zero_grad()
            total.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)  # Lightning's gradient_clip_val=1.0, norm
            optimizer.step()
            results[f"{size}/{objective}"] = {
                "parameters": count, "weights": weights, "prediction": prediction.detach(),
                "primary": primary.detach(), "focal_dice": focal.detach(), "total": total.detach(),
                "samples": drawn, "stepped": {k: v.clone() for k, v in module.state_dict().items()}}
    torch.save(results, out)


# --- genflow's half ---------------------------------------------------------------------------------------
def _genflow_recipe(objective: str, size: str):
    from genflow.config import load_config
    from genflow_recipes.namo.recipe import NamoDiffusionRecipe, NamoFlowMatchingRecipe

    cls = NamoFlowMatchingRecipe if objective == "fm" else NamoDiffusionRecipe
    patch, width, depth, heads = SIZES[size]
    overrides = [f"model.network.patch_size={patch}", f"model.network.hidden_size={width}",
                 f"model.network.depth={depth}", f"model.network.num_heads={heads}"]
    name = "namo_fm_source" if objective == "fm" else "namo_diffusion_source"
    return cls(load_config(cls.config_class, cls.config_file(name), overrides))


def genflow_half(results: dict) -> list[tuple[str, str, float, float]]:
    from genflow.engine.optim import build_lr_schedule, build_optimizer
    from genflow_recipes.namo.sage_dit import sage_checkpoint_key

    data = _scenes(SEED)
    rows = []
    for key, ref in results.items():
        if not isinstance(ref, dict):
            continue
        size, objective = key.split("/")
        recipe = _genflow_recipe(objective, size)
        model = recipe.build_model()

        count = sum(p.numel() for p in model.parameters())
        model.load_state_dict({name: ref["weights"][sage_checkpoint_key(name)] for name in model.state_dict()})
        x1 = data["goal"] * 2 - 1
        if objective == "fm":  # genflow draws t in [eps, 1 - eps]: give it the u that lands on the source's t
            eps = recipe.objective.t_eps
            times = (data["t"] - eps) / (1 - 2 * eps)
            x_t = recipe.objective.path.sample(x0=data["noise"], x1=x1, t=data["t"]).x_t
        else:
            times = data["t"]
            x_t = recipe.objective.add_noise(x0=x1, noise=data["noise"], timesteps=recipe.objective.sample_timesteps(times))
        prediction = model(x_t, data["t"], data["context"])
        loss, primary, focal = recipe.loss_terms(model, mask=data["goal"], context=data["context"], noise=data["noise"],
                                                 times=times)
        with torch.no_grad():  # the recipe's own sampler; its first draw from the generator is the source's x_init
            drawn, _ = recipe.draw(model, data["context"], torch.Generator().manual_seed(START_SEED),
                                   *recipe.default_sampling())
        train = recipe.config.train
        optimizer = build_optimizer(model, train)
        schedule = build_lr_schedule(optimizer, train, total_steps=1000)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()
        schedule.step()
        stepped = max((p.detach() - ref["stepped"][sage_checkpoint_key(n)]).abs().max().item() for n, p in model.named_parameters())
        scale = ref["samples"].abs().max().item()
        rows += [
            (key, "parameters", float(ref["parameters"]), float(count)),
            (key, "network output", (prediction - ref["prediction"]).abs().max().item(), ref["prediction"].abs().max().item()),
            (key, "primary (MSE) loss", abs(primary.item() - ref["primary"].item()), ref["primary"].item()),
            (key, "focal Dice term", abs(focal.item() - ref["focal_dice"].item()), ref["focal_dice"].item()),
            (key, "total loss", abs(loss.item() - ref["total"].item()), ref["total"].item()),
            (key, "weights after 1 AdamW step", stepped, 0.0),
            (key, f"samples, {STEPS} steps (relative)", (drawn - ref["samples"]).abs().max().item() / scale, scale),
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="a local checkout of sage_learning")
    parser.add_argument("--source-python", default=sys.executable, help="a Python with the source's dependencies")
    parser.add_argument("--sizes", default="source,default", help="comma-separated: source (9.0M) and/or default (1.3M)")
    parser.add_argument("--emit", type=Path, help=argparse.SUPPRESS)  # internal: run the source's half, write here
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    if args.emit:
        return source_half(args.source, args.emit, sizes)
    torch.set_num_threads(1)
    print(f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "source.pt"
        start = time.perf_counter()
        subprocess.run([args.source_python, __file__, "--source", str(args.source), "--sizes", args.sizes, "--emit", str(out)],
                       check=True, env={"OMP_NUM_THREADS": "1", **__import__("os").environ})
        results = torch.load(out, weights_only=False)
    rows = genflow_half(results)
    worst = 0.0
    print(f"{'run':18} {'quantity':34} {'|genflow - source|':>18} {'source value':>14}")
    for key, what, diff, value in rows:
        if what == "parameters":
            print(f"{key:18} {what:34} {'equal' if diff == value else 'DIFFER':>18} {int(value):>14,}")
            worst = worst if diff == value else float("inf")
            continue
        print(f"{key:18} {what:34} {diff:>18.2e} {value:>14.5g}")
        worst = max(worst, diff)
    print(f"worst difference {worst:.2e} (tolerance {TOLERANCE:g}); torchvision stand-in: {results['standin_torchvision']}; "
          f"{time.perf_counter() - start:.0f} s")
    sys.exit(0 if worst <= TOLERANCE else 1)


if __name__ == "__main__":
    main()
