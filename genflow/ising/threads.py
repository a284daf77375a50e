"""Choosing the number of compute threads from the cores other processes leave free.

OpenMP threads spin while they wait for each other. When another process occupies one of two cores,
two spinning threads take turns with it and a short parallel kernel can run 4-23x slower than on one
thread (measured with `benchmarks/gibbs.py --busy 1`, see the README); the passive wait policy avoids
that but costs 3x on a quiet CPU. So a sampler that runs many short kernels asks
:class:`ThreadBudget` before each run: it reads how busy the process's allowed CPUs were since the
last reading (``/proc/stat``) minus this process's own CPU time, and uses the cores that are left
(at least 1, at most the starting thread count). The kernels follow at run time (torch.compile with
``cpp.dynamic_threads``). Where ``/proc/stat`` is missing (not Linux) the thread count stays fixed.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import torch

__all__ = ["ThreadBudget", "CpuReading", "read_cpu"]

_STARTING_THREADS = torch.get_num_threads()  # torch's choice (physical cores, or OMP_NUM_THREADS) before any budget
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# another process that gets at least this share of a core over a reading counts as holding it: two
# spinning threads leave a competitor ~0.5 of a core, so a lower bar would never see it
_HELD = 0.3


@dataclass(frozen=True)
class CpuReading:
    wall: float  # time.monotonic() seconds
    busy: float  # busy seconds of the allowed CPUs, all processes
    own: float  # this process's CPU seconds (user + system, all threads)


def _allowed_cpus() -> set[int]:
    return set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def read_cpu(cpus: set[int] | None = None, stat: str = "/proc/stat") -> CpuReading | None:
    """Busy time of `cpus` (default: those this process may run on) and this process's own CPU time;
    None where /proc/stat cannot be read."""
    cpus = _allowed_cpus() if cpus is None else cpus
    try:
        with open(stat) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        busy += sum(values) - values[3] - values[4]
    times = os.times()
    return CpuReading(time.monotonic(), busy / _TICKS, times.user + times.system)


class ThreadBudget:
    """Sets torch's thread count to the cores other processes leave free (see the module docstring).

    `threads`: a fixed count, or None for the automatic choice between 1 and `max_threads` (default:
    torch's thread count when genflow was imported). `interval`: seconds between two decisions, the
    first one `interval` after the start; `update()` costs one clock read in between. `reader`: where
    readings come from (`read_cpu` of the allowed CPUs; tests pass their own).
    """

    def __init__(self, threads: int | None = None, max_threads: int | None = None, interval: float = 1.0,
                 reader=None):
        self.fixed = threads
        self.max_threads = max(1, max_threads or _STARTING_THREADS)
        self.interval = interval
        self.cpus = _allowed_cpus()
        self.reader = reader or (lambda: read_cpu(self.cpus))
        self.changes: list[tuple[int, float]] = []  # (threads, other processes' cores) at each change
        if threads is not None:
            torch.set_num_threads(threads)
            self._last = None
            return
        torch.set_num_threads(self.max_threads)
        self._last = self.reader()

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    def others(self, reading: CpuReading) -> float:
        """Cores other processes used, on average, since the last reading."""
        wall = reading.wall - self._last.wall
        return max(0.0, (reading.busy - self._last.busy) - (reading.own - self._last.own)) / max(wall, 1e-9)

    def update(self) -> int:
        """Re-decide if `interval` has passed since the last decision; returns the thread count."""
        if self.fixed is None and self._last is not None and time.monotonic() - self._last.wall >= self.interval:
            reading = self.reader()
            if reading is not None:
                self._decide(reading)
        return self.threads

    def _decide(self, reading: CpuReading) -> None:
        others = self.others(reading)
        held = math.ceil(others - _HELD) if others > _HELD else 0
        target = min(self.max_threads, max(1, len(self.cpus) - held))
        if target != torch.get_num_threads():
            torch.set_num_threads(target)
            self.changes.append((target, round(others, 2)))
        self._last = reading
