"""Optional dependencies: packages only some recipes need, installed with a pip extra of genflow.

`pip install genflow` leaves them out; `pip install 'genflow[diffusion,video]'` (or `make install`)
brings them in. Where one is missing, the user gets one line naming the extra, not a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from genflow.errors import GenflowError

__all__ = ["import_optional"]


def import_optional(module: str, *, extra: str, needed_by: str, package: str | None = None) -> ModuleType:
    """Import `module`, or raise a one-line `GenflowError` saying which genflow extra installs it.

    Args:
        module: What to import, e.g. ``"skimage.metrics"``.
        extra: The genflow extra that installs it (``[project.optional-dependencies]``), e.g. ``"video"``.
        needed_by: What needs it, for the message, e.g. ``"namo-diffusion"``.
        package: The pip name where it differs from the import name (``scikit-image`` for ``skimage``).

    Only a missing `module` (or a package above it) becomes a `GenflowError`: an installed package
    that fails to import (a missing dependency of its own, a version clash) raises as it is.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        parts = module.split(".")
        missing = {".".join(parts[: i + 1]) for i in range(len(parts))}
        if exc.name not in missing:
            raise
        name = package or parts[0]
        raise GenflowError(f"{needed_by} needs {name}: pip install 'genflow[{extra}]'") from exc
