"""`train.profile START:END`: torch.profiler over a span of optimiser steps, written into RUN/profile/.

The span is a Python slice of the run's optimiser steps counted from 0: `10:15` records five steps, the
ones metrics.jsonl logs as steps 11 to 15 (it logs the steps done). Recording starts at the first batch
of step START and stops when END steps are done, so each recorded step is whole: data loading, forward,
backward, the optimiser, and the log line or checkpoint where one falls. The files: `trace.json`, a
Chrome trace for ui.perfetto.dev or chrome://tracing (each step under an "optimiser step N" span), and
`ops.txt`, torch's per-op table sorted by self CPU time (and, on a GPU, a second by self GPU time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile, record_function

__all__ = ["StepProfiler", "step_profiler"]

TABLE_ROWS = 40  # ops listed in each table of ops.txt


class StepProfiler:
    """Records optimiser steps `start` (0-based) up to `end` of one process, then writes the trace and the table."""

    def __init__(self, directory: Path, *, start: int, end: int, device: torch.device, say: Callable[[str], None]):
        self.directory, self.start, self.end, self.device, self.say = directory, start, end, device, say
        self.profiler: profile | None = None  # while recording
        self.span: record_function | None = None  # the trace's span of the step being recorded
        self.first = start  # steps done when recording began
        self.finished = False

    def at(self, step: int, *, between_steps: bool) -> None:
        """Called with the steps done, before the first batch and after each batch (`between_steps`: no gradient
        accumulation is under way): starts recording at step `start`, labels each step, stops at `end`."""
        if self.profiler is None and not self.finished and between_steps and self.start <= step < self.end:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            self.profiler, self.first = profile(activities=activities), step
            self.profiler.start()
        if self.profiler is None:
            return
        if step >= self.end:
            self.finish(step)
        elif between_steps:
            self._close_span()
            self.span = record_function(f"optimiser step {step + 1}")  # numbered as metrics.jsonl logs it
            self.span.__enter__()

    def finish(self, step: int) -> None:
        """Stop recording and write trace.json and ops.txt (at `end`, or where the run stopped before it); say
        where they are, or that the run stopped before the span."""
        if self.finished:
            return
        self.finished = True
        if self.profiler is None:
            self.say(f"profiling: the run stopped at step {step}, before step {self.start + 1}; nothing profiled")
            return
        self._close_span()
        profiler, self.profiler = self.profiler, None
        profiler.stop()
        self.directory.mkdir(parents=True, exist_ok=True)
        trace, table = self.directory / "trace.json", self.directory / "ops.txt"
        profiler.export_chrome_trace(str(trace))
        events = profiler.key_averages()
        steps = f"{self.first + 1}..{step}" if step > self.first else f"{self.first + 1} (unfinished)"
        tables = [f"self CPU time, optimiser steps {steps}\n"
                  f"{events.table(sort_by='self_cpu_time_total', row_limit=TABLE_ROWS)}"]
        if self.device.type == "cuda":
            tables.append(f"self GPU time\n{events.table(sort_by='self_device_time_total', row_limit=TABLE_ROWS)}")
        table.write_text("\n\n".join(tables))
        early = f" (the run stopped before step {self.end})" if step < self.end else ""
        self.say(f"profile of optimiser steps {steps}{early}: {trace} (open it in ui.perfetto.dev or "
                 f"chrome://tracing) and the per-op table {table}")

    def _close_span(self) -> None:
        if self.span is not None:
            self.span.__exit__(None, None, None)
            self.span = None


def step_profiler(directory: Path, span: tuple[int, int], *, done: int, total: int, device: torch.device,
                  say: Callable[[str], None]) -> StepProfiler | None:
    """The profiler of `span` (START, END) for a run at step `done` of `total`, or None (said) when the run
    has none of those steps left; a span reaching past the run's end is cut there (said)."""
    start, end = span
    if start >= total or done >= min(end, total):
        where = f"the run has {total} optimiser steps" if start >= total else f"the run starts at step {done}"
        say(f"train.profile={start}:{end}: {where}, so none of steps {start + 1}..{end} is left to profile; "
            f"nothing profiled")
        return None
    if end > total:
        say(f"train.profile={start}:{end}: the run ends at step {total}; profiling steps {max(start, done) + 1}..{total}")
    return StepProfiler(directory, start=start, end=min(end, total), device=device, say=say)
