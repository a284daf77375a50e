"""Dataset makers and importers that register themselves: `genflow data make KIND` / `data import KIND SRC`.

A `DataCommand` is a name, a one-line summary, an options dataclass (fields commented with their help
line, like configs) and the function that does the work. genflow finds them through the entry-point
groups `genflow.data_makers` and `genflow.data_importers` (see pyproject.toml), so a recipe package
adds its own data commands without touching genflow:

    [project.entry-points."genflow.data_makers"]
    rings = "my_recipes.rings:MAKE_RINGS"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from genflow.config import check_ranges
from genflow.errors import ConfigError
from genflow.lazy import pick_registered, registered

__all__ = ["DataCommand", "DataJob", "check_data_options", "data_commands", "get_data_command", "GROUPS"]

GROUPS = {"make": "genflow.data_makers", "import": "genflow.data_importers"}


def check_data_options(options: Any) -> None:
    """The declared ranges of a data command's options dataclass (call it from its `__post_init__`), so one
    built in Python is checked as `genflow data make KIND key=value` checks what it reads."""
    try:
        check_ranges(options)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("config key", "data option", 1)) from None


@dataclass(frozen=True)
class DataJob:
    """What the CLI hands a data command besides its options."""

    command: str  # the command line that remakes this dataset (recorded in the manifest)
    progress: Callable[[int, int], None]  # progress(done, total)
    source: Path | None = None  # importers: the SOURCE argument


@dataclass(frozen=True)
class DataCommand:
    """One `genflow data make NAME` / `genflow data import NAME SOURCE` command.

    `run(options, job)` writes the data and returns what to print: `"dataset"` (a shard directory,
    summarised as a table) and any other `key: value` lines.
    """

    name: str
    summary: str
    options: type
    run: Callable[[Any, DataJob], dict[str, Any]]
    source: str | None = None  # importers: what SOURCE is, e.g. "directory of .npz files"; None for makers


def data_commands(action: Literal["make", "import"]) -> dict[str, DataCommand]:
    """The installed data commands of `action`, by name."""
    return registered(GROUPS[action], DataCommand)


def get_data_command(action: Literal["make", "import"], name: str) -> DataCommand:
    """The data command `name`; an unknown one is one clear line with the closest names."""
    return pick_registered(data_commands(action), name, f"data {action} kind", " (see `genflow data list`)")
