"""benchmarks/gpu_check.py --smoke: the GPU check's whole path (data makers, every recipe's GPU config, eager and one
compiled run, the table) runs on CPU, so the script is known to work before it meets a GPU."""

import subprocess
import sys
from pathlib import Path

import pytest

from genflow.engine.catalog import recipe_entries

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow  # every recipe trains 3 tiny steps, digit4 also compiled: ~25 s on one core
def test_smoke_prints_a_row_per_recipe():
    out = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("recipe "))
    rows = {line.split()[0]: line for line in lines[header + 1:] if line.strip()}
    assert set(rows) == {entry.name for entry in recipe_entries()}
    for name, row in rows.items():
        if name == "dtm-lunar" and "skipped: needs gymnasium" in row:
            continue
        assert "failed" not in row, row
        assert row.split()[-1] != "-", f"{name}: no loss logged"
    assert rows["digit4"].split()[4] != "-", "digit4 was not compiled"
