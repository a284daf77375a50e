"""CLI start-up: wall seconds of `genflow --help`, `genflow recipes` and `genflow --version`.

Each command runs as a fresh process, best of ``--repeats`` (the first run also warms the page
cache). Beside them: a bare interpreter (the floor) and the torch-free recipe catalogue
(:func:`genflow.engine.catalog.recipe_entries`) in a fresh interpreter, which is what
`genflow recipes` costs once it lists from the catalogue instead of importing every recipe.

    python benchmarks/bench_cli_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from genflow.engine.precision import cpu_description

__all__ = ["best_wall_seconds", "main"]


def best_wall_seconds(command: list[str], repeats: int) -> float:
    """Fastest wall time of `command` over `repeats` runs; a failing command stops the benchmark."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed (exit {result.returncode}):\n{result.stderr}")
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"CPU: {cpu_description()}")  # a figure is a figure for this machine

    script = Path(sys.executable).with_name("genflow")  # the console script beside this interpreter
    genflow = [str(script)] if script.is_file() else [sys.executable, "-m", "genflow.cli"]
    commands = [
        ("python -c pass (interpreter floor)", [sys.executable, "-c", "pass"]),
        ("genflow --version", [*genflow, "--version"]),
        ("genflow --help", [*genflow, "--help"]),
        ("genflow recipes", [*genflow, "recipes"]),
        ("recipe_entries() (catalogue, no torch)",
         [sys.executable, "-c", "from genflow.engine.catalog import recipe_entries; recipe_entries()"]),
    ]
    print(f"CLI start-up, best of {args.repeats} fresh processes, Python {sys.version.split()[0]}, {' '.join(genflow)}")
    print(f"{'command':42s} {'wall s':>8s}")
    for name, command in commands:
        print(f"{name:42s} {best_wall_seconds(command, args.repeats):8.3f}")


if __name__ == "__main__":
    main()
