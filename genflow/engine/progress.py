"""What a training run prints: a rich progress bar on a terminal, plain lines everywhere else.

A batch job (SLURM, `nohup`, `> log`) has no terminal, and a bar that redraws in place writes
nothing readable there until it finishes. So when stdout is not a TTY, or with `--no-progress`, the
run prints one plain line every `train.log_every` steps and at least every 30 s:

    epoch 1/12  step 40/2304  loss 0.1234  lr 1.00e-03  812 samples/s  elapsed 0:00:32  eta 0:30:01
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta

__all__ = ["TrainingProgress", "format_duration"]

PLAIN_LINE_EVERY_S = 30.0


def format_duration(seconds: float) -> str:
    """`0:04:05` (`1 day, 2:00:00` past a day)."""
    return str(timedelta(seconds=int(max(seconds, 0))))


class TrainingProgress:
    """Progress of one run on the main process: a rich bar (terminal) or plain lines (logs)."""

    def __init__(self, *, enabled: bool, bar: bool, total_steps: int, done_steps: int, epochs: int, stream=None):
        self.enabled, self.total, self.epochs = enabled, total_steps, epochs
        self.stream = stream or sys.stdout
        self.start_steps, self.start_time = done_steps, time.perf_counter()
        self.last_line = self.start_time
        self.latest: tuple[int, int, dict[str, float]] | None = None
        self._bar = None
        if enabled and bar and self.stream.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
            self._task = self._bar.add_task("train", total=total_steps, completed=done_steps, epoch=f"1/{epochs}", info="")
            self._bar.start()

    def _print(self, line: str) -> None:
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.stream, flush=True)

    def message(self, line: str) -> None:
        """A one-off line (the run's set-up, a warning), in either mode."""
        if self.enabled:
            self._print(line)

    def eta_seconds(self, step: int) -> float | None:
        done = step - self.start_steps
        if done <= 0:
            return None
        return (self.total - step) * (time.perf_counter() - self.start_time) / done

    def update(self, step: int, epoch: int, values: dict[str, float]) -> None:
        """The latest training values (mean loss since the last line, lr, samples/s) at optimiser step `step`."""
        if not self.enabled:
            return
        if self._bar is not None:
            info = f"loss {values['loss']:.4f}  lr {values['lr']:.2e}  {values['samples_per_s']:.0f} samples/s"
            self._bar.update(self._task, completed=step, epoch=f"{epoch}/{self.epochs}", info=info)
            return
        eta = self.eta_seconds(step)
        extra = "".join(f"  {k} {v:.4f}" for k, v in values.items()
                        if k not in ("loss", "lr", "samples_per_s", "data_wait_fraction"))
        self._print(f"epoch {epoch}/{self.epochs}  step {step}/{self.total}  loss {values['loss']:.4f}{extra}  "
                    f"lr {values['lr']:.2e}  {values['samples_per_s']:.1f} samples/s  "
                    f"elapsed {format_duration(time.perf_counter() - self.start_time)}  "
                    f"eta {format_duration(eta) if eta is not None else '?'}")
        self.last_line = time.perf_counter()

    def line_due(self) -> bool:
        """In plain mode, whether 30 s have passed since the last line (steps slower than the log interval)."""
        return self.enabled and self._bar is None and time.perf_counter() - self.last_line >= PLAIN_LINE_EVERY_S

    def note(self, epoch: int, metrics: dict[str, float]) -> None:
        """An evaluation summary line."""
        if self.enabled:
            self._print(f"epoch {epoch}/{self.epochs} eval: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
