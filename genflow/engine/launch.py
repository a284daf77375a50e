"""Starting N training processes (`genflow train ... --gpus N`).

The CLI process re-runs itself under `torch.distributed.run` (torchrun) with N processes; each one
builds an `Accelerator`, which joins the process group (NCCL on GPUs, gloo on CPU). Everything that
must agree between processes (run name, resume checkpoint) is resolved before the launch.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from genflow.errors import ConfigError

__all__ = ["is_launched_worker", "launch_processes"]


def is_launched_worker() -> bool:
    """True inside a process started by torchrun / accelerate launch."""
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_processes(num_processes: int, cli_args: list[str]) -> int:
    """Run `genflow <cli_args>` in `num_processes` processes; returns the launcher's exit code.

    With CUDA, one process per GPU (so at most the number of visible GPUs); without, CPU processes
    over gloo, each limited to its share of the cores.
    """
    if torch.cuda.is_available() and num_processes > torch.cuda.device_count():
        raise ConfigError(f"--gpus {num_processes}: only {torch.cuda.device_count()} CUDA device(s) visible")
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_processes}",
           "-m", "genflow.cli", *cli_args]
    return subprocess.call(cmd, env=env)
