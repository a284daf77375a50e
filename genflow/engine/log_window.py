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
    """The batches since the last train log line. Their losses, and the sums of the recipe's extra scalars
    given as tensors, stay on the device until a log point (or a checkpoint, or an evaluation) reads them:
    one device sync there instead of one per step."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.batches = 0
        self.data_wait_s = 0.0
        self.losses: list[torch.Tensor] = []  # each batch's loss on this process, (1,) float32 on the device
        self.positions: list[tuple[int, int]] = []  # (step, epoch) of each batch, for the divergence message
        # The recipe's extra scalars summed over the window: a key's sum stays on the device once a tensor is in it
        # (in float64: the sum the host would make of the values read one by one), else a Python float
        self.extra_sums: dict[str, torch.Tensor | float] = {}

    def add(self, loss: torch.Tensor, extras: dict[str, float | torch.Tensor], *, step: int, epoch: int) -> None:
        """Keep one batch's loss and add its extras to the window's sums, without reading a tensor on the host."""
        self.batches += 1
        self.losses.append(loss.detach().float().reshape(1))
        self.positions.append((step, epoch))
        for key, value in extras.items():
            if not isinstance(value, torch.Tensor):
                value = float(value)
            elif value.numel() == 1:
                value = value.detach().reshape(()).double()
            else:
                raise GenflowError(f"compute_loss returned the extra '{key}' of shape {tuple(value.shape)}: expected a "
                                   f"scalar (a 0-dim tensor or a number)")
            self.extra_sums[key] = self.extra_sums.get(key, 0.0) + value

    def host_losses(self, accelerator: Accelerator | None) -> torch.Tensor:
        """The losses `(processes, batches)` on the host: gathered from every process (a collective: all
        processes call it at the same points), or this process's alone (`accelerator=None`)."""
        if not self.losses:
            return torch.zeros(1, 0)
        local = torch.cat(self.losses)
        if accelerator is None:
            return local.cpu().reshape(1, -1)
        return accelerator.gather(local).cpu().reshape(-1, len(self.losses))

    def raise_if_diverged(self, losses: torch.Tensor, kept: Path, lr: float, *, hint: str = "") -> None:
        """TrainingDiverged at the first batch whose loss (on any process) is NaN or Inf; the message
        names `kept` (the last checkpoint from before the loss blew up) and what to change (`hint`: the
        run's own likely cause first, e.g. a compiled bf16 network)."""
        bad = ~torch.isfinite(losses)
        if not bad.any():
            return
        first = int(bad.any(dim=0).nonzero()[0])
        step, epoch = self.positions[first]
        where = (f"the last good checkpoint is {kept} (written while the loss was still near its lowest); continue "
                 f"from it with a lower learning rate: genflow train RECIPE --resume {kept} train.lr={lr / 10:.3g}"
                 if kept.exists() else "no checkpoint was written while the loss was sane")
        raise TrainingDiverged(f"loss became {float(losses[:, first][bad[:, first]][0])} at step {step} (epoch {epoch}); "
                               f"training stopped; {where} ({hint}or lower train.grad_clip, or add train.warmup_steps)")

    def values(self, losses: torch.Tensor, lr: float, batch_size: int) -> dict[str, float]:
        """Means over the window (the loss over all processes in `losses`), lr, throughput, data wait."""
        elapsed = time.perf_counter() - self.start
        means = {"loss": sum(losses.mean(dim=0).tolist()) / self.batches}
        on_device = {key: value for key, value in self.extra_sums.items() if isinstance(value, torch.Tensor)}
        read = {}
        if on_device:  # one transfer for every key's sum
            device = next(iter(on_device.values())).device
            read = dict(zip(on_device, torch.stack([value.to(device) for value in on_device.values()]).tolist()))
        # a key the recipe logs at some batches only (e.g. one per task) is still divided by all the window's batches
        means.update({key: read.get(key, value) / self.batches for key, value in self.extra_sums.items()})
        return {**means, "lr": lr, "samples_per_s": self.batches * batch_size / max(elapsed, 1e-9),
                "data_wait_fraction": self.data_wait_s / max(elapsed, 1e-9)}
