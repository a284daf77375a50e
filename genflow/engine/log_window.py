"""The log window: what happened since the last train log line, kept on the device until a log point reads it."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from accelerate import Accelerator

from genflow.errors import GenflowError

__all__ = ["LogWindow", "TrainingDiverged"]


class TrainingDiverged(GenflowError):
    """The loss became NaN or Inf; training stopped and the last good checkpoint was kept."""


class LogWindow:
    """The batches since the last train log line. Their losses stay on the device until a log point
    (or a checkpoint, or an evaluation) reads them: one device sync there instead of one per step."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.batches = 0
        self.data_wait_s = 0.0
        self.losses: list[torch.Tensor] = []  # each batch's loss on this process, (1,) float32 on the device
        self.positions: list[tuple[int, int]] = []  # (step, epoch) of each batch, for the divergence message
        self.extras: dict[str, list[float | torch.Tensor]] = {}  # the recipe's extra scalars, per batch

    def add(self, loss: torch.Tensor, extras: dict[str, float | torch.Tensor], *, step: int, epoch: int) -> None:
        self.batches += 1
        self.losses.append(loss.detach().float().reshape(1))
        self.positions.append((step, epoch))
        for key, value in extras.items():
            self.extras.setdefault(key, []).append(value.detach() if isinstance(value, torch.Tensor) else value)

    def host_losses(self, accelerator: Accelerator | None) -> torch.Tensor:
        """The losses `(processes, batches)` on the host: gathered from every process (a collective: all
        processes call it at the same points), or this process's alone (`accelerator=None`)."""
        if not self.losses:
            return torch.zeros(1, 0)
        local = torch.cat(self.losses)
        if accelerator is None:
            return local.cpu().reshape(1, -1)
        return accelerator.gather(local).cpu().reshape(-1, len(self.losses))

    def raise_if_diverged(self, losses: torch.Tensor, kept: Path, lr: float) -> None:
        """TrainingDiverged at the first batch whose loss (on any process) is NaN or Inf; the message
        names `kept` (the last checkpoint from before the loss blew up) and what to change."""
        bad = ~torch.isfinite(losses)
        if not bad.any():
            return
        first = int(bad.any(dim=0).nonzero()[0])
        step, epoch = self.positions[first]
        where = (f"the last good checkpoint is {kept} (written while the loss was still near its lowest); continue "
                 f"from it with a lower learning rate: genflow train RECIPE --resume {kept} train.lr={lr / 10:.3g}"
                 if kept.exists() else "no checkpoint was written while the loss was sane")
        raise TrainingDiverged(f"loss became {float(losses[:, first][bad[:, first]][0])} at step {step} (epoch {epoch}); "
                               f"training stopped; {where} (or lower train.grad_clip, or add train.warmup_steps)")

    def values(self, losses: torch.Tensor, lr: float, batch_size: int) -> dict[str, float]:
        """Means over the window (the loss over all processes in `losses`), lr, throughput, data wait."""
        elapsed = time.perf_counter() - self.start
        means = {"loss": sum(losses.mean(dim=0).tolist()) / self.batches}
        for key, items in self.extras.items():
            tensors = [v.float().reshape(()) for v in items if isinstance(v, torch.Tensor)]
            moved = iter(torch.stack(tensors).tolist() if tensors else [])  # one transfer for a key's tensors
            means[key] = sum(next(moved) if isinstance(v, torch.Tensor) else float(v) for v in items) / self.batches
        return {**means, "lr": lr, "samples_per_s": self.batches * batch_size / max(elapsed, 1e-9),
                "data_wait_fraction": self.data_wait_s / max(elapsed, 1e-9)}
