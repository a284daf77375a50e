"""Starting training processes (`genflow train ... --gpus N [--nnodes M --node-rank R --master-addr A]`).

The CLI process re-runs itself under `torch.distributed.run` (torchrun): N processes on this machine,
and with `--nnodes M` this machine is node R of M (every node runs the same command with its own
`--node-rank`; node 0's address and port are the rendezvous point). Each process builds an
`Accelerator`, which joins the process group (NCCL on GPUs, gloo on CPU). The same code runs under a
`torchrun` or `accelerate launch` that the user starts (anything that sets RANK, WORLD_SIZE and
MASTER_ADDR; a bare `srun` of one genflow per task does not, so examples/slurm starts one launcher
per node instead): the processes agree on the run name
(rank 0 picks it) and only global rank 0 writes the run dir, which must be on a file system every node
sees. A preemption signal the launcher gets is passed to the processes as SIGTERM (they finish their
step, write last.pt and exit); the launcher then exits with code 75 (`PREEMPTED_EXIT_CODE`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import torch

from genflow.errors import PREEMPTED_EXIT_CODE, ConfigError

__all__ = ["NodeSpec", "is_launched_worker", "launch_processes", "agree_on"]


@dataclass(frozen=True)
class NodeSpec:
    """Where this machine is in a multi-node job (torchrun's static rendezvous)."""

    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"  # node 0's address, reachable from every node
    master_port: int = 29500

    def __post_init__(self) -> None:
        if self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes:
            raise ConfigError(f"--node-rank {self.node_rank} --nnodes {self.nnodes}: expected 0 <= node rank < nodes")
        if not 0 < self.master_port < 65536:
            raise ConfigError(f"--master-port {self.master_port}: expected a TCP port (1-65535)")

    def torchrun_args(self) -> list[str]:
        if self.nnodes == 1:
            return ["--standalone"]
        return [f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}", f"--master-addr={self.master_addr}",
                f"--master-port={self.master_port}"]


def is_launched_worker() -> bool:
    """True inside a process started by torchrun / accelerate launch (LOCAL_RANK and WORLD_SIZE > 1 set)."""
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def agree_on(value):
    """Rank 0's `value` on every process (a collective: every process calls it); `value` itself when alone.

    Joins the default process group first if nobody has (Accelerate later uses the same group).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return value
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def launch_processes(num_processes: int, cli_args: list[str], nodes: NodeSpec = NodeSpec(),
                     preempt_signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")) -> int:
    """Run `genflow <cli_args>` in `num_processes` processes on this node; returns the exit code.

    With CUDA, one process per GPU (so at most the number of visible GPUs); without, CPU processes
    over gloo, each limited to its share of the cores.
    """
    if torch.cuda.is_available() and num_processes > torch.cuda.device_count():
        raise ConfigError(f"--gpus {num_processes}: only {torch.cuda.device_count()} CUDA device(s) visible")
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    cmd = [sys.executable, "-m", "torch.distributed.run", *nodes.torchrun_args(), f"--nproc-per-node={num_processes}",
           "-m", "genflow.cli", *cli_args]
    child = subprocess.Popen(cmd, env=env, start_new_session=True)  # signals reach it through the handler below
    caught: list[int] = []

    def forward(signum, frame):
        if not caught:  # once: torchrun passes SIGTERM on to every process and waits for them
            child.send_signal(signal.SIGTERM)
        caught.append(signum)

    previous = {number: signal.signal(number, forward) for number in (getattr(signal, name) for name in preempt_signals)}
    try:
        code = child.wait()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGINT)
        code = child.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return PREEMPTED_EXIT_CODE if caught else code
