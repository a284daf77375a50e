"""Mixed precision that fits the hardware, and what the hardware is.

`auto` (the default) trains in bf16 only where bf16 is fast: on a CUDA GPU that supports it (else
fp16 with a grad scaler), and on a CPU with native bf16 matrix instructions (AVX512-BF16 or AMX on
x86, BF16 on Arm). Elsewhere it trains in fp32: on an AVX2-only CPU bf16 autocast is about 10x
slower than fp32. The request (`auto`) is what a run's config keeps, so a run resumed on other
hardware resolves again; the resolved choice is recorded beside it.
"""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genflow.errors import ConfigError

__all__ = ["PRECISION_NAMES", "normalise_precision", "resolve_precision", "cpu_has_native_bf16", "cpu_description",
           "autocast_dtype"]

if TYPE_CHECKING:
    import torch

# Every spelling a user may write (CLI, YAML, the source trainers' Lightning names) -> the request.
PRECISION_NAMES = {
    "auto": "auto",
    "no": "no", "fp32": "no", "32": "no", "32-true": "no",
    "bf16": "bf16", "bf16-mixed": "bf16",
    "fp16": "fp16",
    "16-mixed": "16-mixed",  # Lightning's: fp16 on a GPU, bf16 on a CPU
}
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def normalise_precision(value: Any, key: str = "train.precision") -> str:
    """A precision request in any accepted spelling -> `auto | no | bf16 | fp16 | 16-mixed`.

    YAML reads `no` as false and `32` as an integer; both mean full precision here.
    """
    if value is False:
        value = "no"
    elif isinstance(value, int) and not isinstance(value, bool):
        value = {32: "32", 16: "16-mixed"}.get(value, value)
    name = PRECISION_NAMES.get(str(value).strip().lower()) if isinstance(value, str) else None
    if name is None:
        raise ConfigError(f"config key '{key}': expected one of {' | '.join(PRECISION_NAMES)}, got {value!r}")
    return name


def _cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo `flags` or Arm `Features`; macOS sysctl)."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return set(value.split())
        return set()
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return set()
        return {"bf16"} if out.stdout.strip() == "1" else set()
    return set()


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 matrices natively (AVX512-BF16 / AMX-BF16, Arm BF16)."""
    flags = _cpu_flags()
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return any(flag in flags for flag in _BF16_CPU_FLAGS)


@lru_cache(maxsize=1)
def cpu_description() -> str:
    """`<model name> (<torch CPU capability>; bf16 native: yes|no; N cores)`: printed with every benchmark."""
    model = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
                break
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    flags = _cpu_flags()
    bf16 = "yes (" + ", ".join(sorted(f for f in flags if f in _BF16_CPU_FLAGS or f == "bf16")) + ")" \
        if cpu_has_native_bf16() else "no"
    vector = " ".join(sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sve", "asimd", "neon"))))
    return f"{model} ({capability}; bf16 native: {bf16}; {torch.get_num_threads()} threads; flags: {vector or 'unknown'})"


def resolve_precision(request: str, device_type: str) -> tuple[str, str]:
    """(what Accelerate gets: `no | bf16 | fp16`, what it is and why) for a request on a device type (`cpu`, `cuda`)."""
    import torch

    request = normalise_precision(request)
    if device_type == "cuda":
        if request in ("auto", "16-mixed"):
            if request == "16-mixed" or not torch.cuda.is_bf16_supported():
                return "fp16", "fp16 with a grad scaler" + (" (this GPU has no bf16)" if request == "auto" else "")
            return "bf16", "bf16 (this GPU supports it)"
        return request, f"{'fp32' if request == 'no' else request} as requested"
    if request == "fp16":
        raise ConfigError("config key 'train.precision': fp16 needs a CUDA GPU; on CPU use auto, bf16 or no")
    native = cpu_has_native_bf16()
    if request == "auto":
        if native:
            return "bf16", "bf16 (this CPU has native bf16 matrix instructions)"
        return "no", "fp32 (this CPU has no native bf16; bf16 autocast would be several times slower)"
    if request == "16-mixed":
        request = "bf16"  # Lightning's meaning of 16-mixed on a CPU
    if request == "bf16" and not native:
        return "bf16", "bf16 as requested (warning: this CPU has no native bf16, expect it to be slower than fp32)"
    return request, f"{'fp32' if request == 'no' else request} as requested"


def autocast_dtype(request: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a recipe's own inference code should use for the run's precision request."""
    import torch

    if normalise_precision(request) == "fp16" and device.type != "cuda":
        return None  # a GPU run's fp16 evaluated on a CPU: full precision
    resolved, _ = resolve_precision(request, device.type)
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolved)
