"""A few procedural NAMO scenes as shards (made once per test session; tests never change them)."""

import pytest

from genflow.cli import main


@pytest.fixture(scope="session")
def namo_data(tmp_path_factory):
    """20 scenes (12 train / 4 val / 4 test), imported beside a corrupt file the importer must skip and name."""
    root = tmp_path_factory.mktemp("namo")
    assert main(["data", "make-namo", "--scenes", "20", "--out", str(root / "npz"), "--seed", "3"]) == 0
    (root / "npz" / "broken.npz").write_bytes(b"not a zip archive")
    assert main(["data", "import-npz", str(root / "npz"), "--kind", "namo", "--out", str(root / "shards"),
                 "--val-fraction", "0.2", "--test-fraction", "0.2"]) == 0
    return root / "shards"
