"""Parity of mmnist-wm (`--config mmnist_wm_fast`, `mmnist_wm_full`) with copilot4D's Moving MNIST world model.

    python benchmarks/parity/mmnist_wm.py --source /path/to/copilot4D --source-python /path/to/venv/bin/python

PATH is a local checkout of copilot4D (its `tests/mnist_diffusion` scripts). copilot4D has no licence:
genflow never imports it. The benchmark writes a small driver into a temporary folder and runs it with
PY (default: this Python; it needs torch, numpy, tqdm, tensorboard); the driver imports the source's model
as its fast script does (`from train_mnist_full import SimpleVideoTransformer`) and its full script's
`compute_diffusion_loss`. Inputs go to the driver, and its results come back, as .pt files.

Two models, each seeded by the source's own init, in eval mode, on random 20-frame token videos (32 x 32,
levels 0-15) with actions ~ N(0, 0.1^2), masked by genflow's objective with the config's settings:
- fast (D 128, 2 layers, 4 heads, 18 classes; B 2): the `future` task (frames 10-19 partly masked).
  Logits under the causal, full (bidirectional) and identity temporal masks; the training loss, the
  source's `train_epoch` formula (cross-entropy of every future token) vs genflow's objective.
- full (D 384, 6 layers, 6 heads, 17 classes; B 1): the `joint` task (every frame masked, random tokens,
  bidirectional). Logits, and the label-smoothed (0.1) loss over every token of every frame, the source's
  `compute_diffusion_loss` vs genflow's objective.
genflow's half builds the recipe's model from the config, ports the source's weights by name
(`copilot4d_parameter_name`, strict), prints both parameter counts and the largest absolute difference
of each quantity, and exits with 1 if a count differs or a difference is above 1e-5.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MODELS = {  # name -> (genflow config, the source's constructor sizes, batch, genflow's masking task)
    "fast": ("mmnist_wm_fast", {"vocab_size": 17, "mask_token_id": 17, "embed_dim": 128, "num_layers": 2, "num_heads": 4}, 2, "future"),
    "full": ("mmnist_wm_full", {"vocab_size": 16, "mask_token_id": 16, "embed_dim": 384, "num_layers": 6, "num_heads": 6}, 1, "joint"),
}
COMMON = {"num_frames": 20, "height": 32, "width": 32, "dropout": 0.1, "action_dim": 2}  # both scripts' other arguments
LEVELS, SEED, BATCH_DRAW, TOLERANCE = 16, 0, 0.5, 1e-5  # BATCH_DRAW: the batch's ratio draw (fast: r 0.75; full: cos(pi/4))

DRIVER = r'''"""Runs copilot4D's Moving MNIST model on a parity benchmark's inputs. Usage: driver.py SOURCE INPUTS.pt OUT.pt"""
import importlib.machinery
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

source, inputs, out = Path(sys.argv[1]).resolve(), sys.argv[2], sys.argv[3]
# train_mnist_full.py imports `tests.mnist_diffusion.*`. Register SOURCE/tests and SOURCE/tests/mnist_diffusion as
# packages by path: the import then works whether or not a checkout has tests/__init__.py, and no other installed
# `tests` package (some distributions ship one) can shadow the source's.
parent = None
for name, folder in (("tests", source / "tests"), ("tests.mnist_diffusion", source / "tests" / "mnist_diffusion")):
    package = types.ModuleType(name)
    package.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    package.__spec__.submodule_search_locations = package.__path__ = [str(folder)]
    sys.modules[name] = package
    if parent is not None:
        parent.mnist_diffusion = package
    parent = package
sys.path[:0] = [str(source / "tests" / "mnist_diffusion"), str(source)]
from train_mnist_full import DiscreteDiffusionMasker, SimpleVideoTransformer, compute_diffusion_loss  # the fast script's import

data = torch.load(inputs)
results = {"torch": str(torch.__version__)}
for name, spec in data["models"].items():
    torch.manual_seed(data["seed"])
    model = SimpleVideoTransformer(**spec["sizes"]).eval()
    frames = spec["tokens"].shape[1]
    masks = {"causal": DiscreteDiffusionMasker._make_causal_mask(frames, "cpu"), "full": None,  # full: bidirectional
             "identity": DiscreteDiffusionMasker._make_identity_mask(frames, "cpu")}
    with torch.no_grad():
        logits = {kind: model(spec["tokens"], spec["actions"], masks[kind]) for kind in spec["temporal_masks"]}
        if spec["loss"] == "future":  # train_mnist_fast.py's train_epoch: cross-entropy of every future token, all classes
            future = logits["causal"][:, data["num_past"]:]
            loss = F.cross_entropy(future.reshape(-1, future.shape[-1]), spec["targets"][:, data["num_past"]:].reshape(-1))
        else:  # train_mnist_full.py: every token of every frame, label smoothing 0.1 (its --label_smoothing default)
            loss = compute_diffusion_loss(logits["full"], spec["targets"], 0.1)
    results[name] = {"parameters": sum(p.numel() for p in model.parameters()), "weights": model.state_dict(),
                     "logits": logits, "loss": loss}
torch.save(results, out)
'''


def _recipe(config: str):
    from genflow.config import load_config
    from genflow_recipes.mmnist_wm.recipe import MovingMnistWorldModelRecipe

    return MovingMnistWorldModelRecipe(load_config(MovingMnistWorldModelRecipe.config_class,
                                                   MovingMnistWorldModelRecipe.config_file(config)))


def make_inputs(recipes: dict) -> tuple[dict, dict]:
    """Random token videos masked by each config's objective: (genflow's batches, the driver's inputs)."""
    g = torch.Generator().manual_seed(SEED)
    batches, models = {}, {}
    for name, (_, sizes, batch, task) in MODELS.items():
        shape = (batch, COMMON["num_frames"], COMMON["height"], COMMON["width"])
        tokens = torch.randint(0, LEVELS, shape, generator=g)
        actions = torch.randn(batch, COMMON["num_frames"], COMMON["action_dim"], generator=g) * 0.1
        masked = recipes[name].objective.corrupt(tokens, task, torch.rand(shape, generator=g),
                                                 torch.rand(*shape[:2], 2, generator=g), batch_draw=BATCH_DRAW,
                                                 level_noise=torch.rand(shape, generator=g), random_fraction=0.5)
        batches[name] = (tokens, actions, masked)
        kinds = ["causal", "full", "identity"] if name == "fast" else [masked.temporal_mask]
        models[name] = {"sizes": {**COMMON, **sizes}, "actions": actions, "targets": tokens, "temporal_masks": kinds,
                        "tokens": torch.where(masked.masked, sizes["mask_token_id"], masked.tokens),  # the source's mask id
                        "loss": task}
    return batches, {"seed": SEED, "num_past": recipes["fast"].objective.num_past, "models": models}


def compare(recipes: dict, batches: dict, results: dict) -> list[tuple[str, str, float, float]]:
    """genflow's half: (model, quantity, max |genflow - source|, the source's value) rows."""
    from genflow_recipes.mmnist_wm.copilot4d_import import copilot4d_parameter_name

    rows = []
    for name, recipe in recipes.items():
        ref = results[name]
        model = recipe.build_model().eval()
        count = sum(p.numel() for p in model.parameters())
        # spatial_pos (1, 1, N, D) -> (N, D); the source's output_proj.weight is its tied token embedding
        model.load_state_dict({key: ref["weights"][copilot4d_parameter_name(key)].reshape(value.shape)
                               for key, value in model.state_dict().items()})
        tokens, actions, batch = batches[name]
        rows.append((name, "parameters (genflow)", float(count), float(ref["parameters"])))
        with torch.no_grad():
            logits = {kind: model(batch.tokens, actions, kind) for kind in ref["logits"]}
            for kind, theirs in ref["logits"].items():
                ours = logits[kind].reshape(theirs.shape)  # (B, T, H, W, C) -> the source's (B, T, H*W, C)
                rows.append((name, f"logits, {kind} temporal mask", (ours - theirs).abs().max().item(), theirs.abs().max().item()))
            loss = recipe.objective.loss(logits[batch.temporal_mask], tokens, batch)
        what = "future CE (train_epoch)" if name == "fast" else "smoothed CE, all tokens"
        rows.append((name, f"loss: {what}", abs(loss.item() - ref["loss"].item()), ref["loss"].item()))
    return rows


def source_commit(source: Path, given: str | None) -> str:
    """The checkout's commit (git), else --source-commit, else unknown."""
    if (source / ".git").exists():  # not `git -C` alone: it would report an enclosing repository's commit
        done = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        if done.returncode == 0:
            return f"{done.stdout.strip()} (git)" + (f"; --source-commit {given}" if given else "")
    return f"{given} (--source-commit)" if given else "unknown"


def main() -> None:
    from genflow.engine.precision import cpu_description

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="a local checkout of copilot4D")
    parser.add_argument("--source-python", default=sys.executable, help="a Python with the source's dependencies")
    parser.add_argument("--source-commit", help="the commit of a checkout without .git (an export), to print")
    args = parser.parse_args()
    if not (args.source / "tests" / "mnist_diffusion" / "train_mnist_full.py").is_file():
        parser.error(f"{args.source}: no tests/mnist_diffusion/train_mnist_full.py (not a copilot4D checkout?)")
    start = time.perf_counter()
    recipes = {name: _recipe(config) for name, (config, *_) in MODELS.items()}
    batches, inputs = make_inputs(recipes)
    with tempfile.TemporaryDirectory() as tmp:
        driver, given, out = Path(tmp) / "copilot4d_driver.py", Path(tmp) / "inputs.pt", Path(tmp) / "source.pt"
        driver.write_text(DRIVER)
        torch.save(inputs, given)
        subprocess.run([args.source_python, str(driver), str(args.source.resolve()), str(given), str(out)],
                       check=True, cwd=tmp, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        results = torch.load(out)
    rows = compare(recipes, batches, results)
    print(f"CPU: {cpu_description()}")
    print(f"genflow: torch {torch.__version__}; source: {args.source} @ {source_commit(args.source, args.source_commit)}, "
          f"torch {results['torch']} ({args.source_python})")
    worst, failed = 0.0, False
    print(f"{'model':6} {'quantity':34} {'max |diff|':>12} {'source value':>21}")
    for name, what, diff, value in rows:
        if what.startswith("parameters"):
            equal = diff == value
            failed |= not equal
            counts = f"{int(value):,} / {int(diff):,}"
            print(f"{name:6} {'parameters (source / genflow)':34} {'equal' if equal else 'DIFFER':>12} {counts:>21}")
            continue
        print(f"{name:6} {what:34} {diff:>12.2e} {value:>21.6g}")
        worst = max(worst, diff)
    failed |= worst > TOLERANCE
    print(f"worst difference {worst:.2e} (tolerance {TOLERANCE:g}): {'FAIL' if failed else 'pass'}; "
          f"{time.perf_counter() - start:.0f} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
