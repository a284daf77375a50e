"""Choosing the number of compute threads from the cores other processes leave free.

OpenMP threads spin while they wait for each other. When another process occupies one of two cores,
two spinning threads take turns with it and a short parallel kernel can run 4-23x slower than on one
thread (measured with `benchmarks/gibbs.py --busy 1`, see the README); the passive wait policy avoids
that but costs 3x on a quiet CPU. So a sampler that runs many short kernels asks
:class:`ThreadBudget` before each run: it reads how busy the process's allowed CPUs were since the
last reading (``/proc/stat``) minus this process's own CPU time, and uses the cores that are left
(at least 1, at most the starting thread count). The kernels follow at run time (torch.compile with
``cpp.dynamic_threads``). Where ``/proc/stat`` is missing (not Linux) the thread count stays fixed.

A training run's own helpers are not competitors: with ``family_root`` the budget counts as its own the
CPU time of that process and all its descendants (a run's DataLoader workers; under torchrun, the
launcher's ranks and their workers), and ``share`` splits the free cores among the run's processes on
this machine.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import torch

__all__ = ["ThreadBudget", "CpuReading", "read_cpu", "family_cpu_seconds"]

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


def family_cpu_seconds(root: int, proc: str = "/proc") -> float | None:
    """CPU seconds (user + system) of process `root` and every live descendant, each with the time of its
    children that have exited (so a DataLoader worker that ends keeps counting); None without /proc."""
    parents: dict[int, int] = {}
    seconds: dict[int, float] = {}
    try:
        entries = [name for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return None
    for name in entries:
        try:
            with open(f"{proc}/{name}/stat") as f:
                text = f.read()
        except OSError:  # ended between the listing and the read
            continue
        fields = text[text.rfind(")") + 2:].split()  # after "pid (comm) ": the name may hold spaces and parentheses
        parents[int(name)] = int(fields[1])
        seconds[int(name)] = sum(int(v) for v in fields[11:15]) / _TICKS  # utime stime cutime cstime
    if root not in seconds:
        return None
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += seconds.get(pid, 0.0)
        todo.extend(children.get(pid, ()))
    return total


def read_cpu(cpus: set[int] | None = None, stat: str = "/proc/stat", *, family_root: int | None = None) -> CpuReading | None:
    """Busy time of `cpus` (default: those this process may run on) and this process's own CPU time (with
    `family_root`: that of the process tree under it, `family_cpu_seconds`); None where /proc/stat cannot
    be read."""
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
    own = family_cpu_seconds(family_root) if family_root is not None else None
    if own is None:
        times = os.times()
        own = times.user + times.system
    return CpuReading(time.monotonic(), busy / _TICKS, own)


class ThreadBudget:
    """Sets torch's thread count to the cores other processes leave free (see the module docstring).

    `threads`: a fixed count, or None for the automatic choice between 1 and `max_threads` (default:
    torch's thread count when genflow was imported). `interval`: seconds between two decisions, the
    first one `interval` after the start; `update()` costs one clock read in between. `reader`: where
    readings come from (`read_cpu` of the allowed CPUs; tests pass their own). `family_root`: the
    process whose tree is this run (its CPU time is not a competitor's); `share`: the run's processes
    on these cores, which split the free ones; `confirm`: readings in a row that must agree before the
    count changes (a training run ignores a competitor's short bursts); `first_after`: seconds to the first
    decision, which needs no confirming (the start-up of a run is its first reading), default `interval`.
    """

    def __init__(self, threads: int | None = None, max_threads: int | None = None, interval: float = 1.0,
                 reader=None, *, family_root: int | None = None, share: int = 1, confirm: int = 1,
                 first_after: float | None = None):
        self.fixed = threads
        self.max_threads = max(1, max_threads or _STARTING_THREADS)
        self.interval = interval
        self.share, self.confirm = max(1, share), max(1, confirm)
        self._pending: list[int] = []
        self.first_after = interval if first_after is None else first_after
        self.decisions = 0
        self.cpus = _allowed_cpus()
        self.reader = reader or (lambda: read_cpu(self.cpus, family_root=family_root))
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
        due = self.interval if self.decisions else self.first_after
        if self.fixed is None and self._last is not None and time.monotonic() - self._last.wall >= due:
            reading = self.reader()
            if reading is not None:
                self._decide(reading)
        return self.threads

    def _decide(self, reading: CpuReading) -> None:
        others = self.others(reading)
        held = math.ceil(others - _HELD) if others > _HELD else 0
        target = min(self.max_threads, max(1, (len(self.cpus) - held) // self.share))
        self._last = reading
        self._pending = [*self._pending, target][-self.confirm:]
        confirmed = self.decisions == 0 or (len(self._pending) == self.confirm and len(set(self._pending)) == 1)
        self.decisions += 1
        if target != torch.get_num_threads() and confirmed:
            torch.set_num_threads(target)
            self.changes.append((target, round(others, 2)))
