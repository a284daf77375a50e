"""Another framework's checkpoint loads without running any code it names; a broken one is one clear error."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from genflow.engine import load_foreign_checkpoint
from genflow.errors import CheckpointError

CALLS: list[str] = []


def _called(what):
    CALLS.append(what)
    return what


class _Callback:
    def __init__(self):
        self.state = {"best": torch.tensor(0.5)}


class _RunsCode:
    def __reduce__(self):
        return (_called, ("loading ran the file's code",))


def test_classes_and_functions_a_checkpoint_names_become_inert_placeholders(tmp_path, monkeypatch):
    module = types.ModuleType("some_framework_callbacks")
    module._Callback, module._RunsCode = _Callback, _RunsCode
    monkeypatch.setattr(_Callback, "__module__", module.__name__)
    monkeypatch.setattr(_RunsCode, "__module__", module.__name__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": {"w": torch.arange(3.0)}, "callbacks": [_Callback()], "hook": _RunsCode(), "epoch": 4}, path)
    monkeypatch.delitem(sys.modules, module.__name__)  # what loading may not need: the framework's code

    state, placeholders = load_foreign_checkpoint(path)
    assert torch.equal(state["state_dict"]["w"], torch.arange(3.0)) and state["epoch"] == 4
    assert not CALLS
    assert f"{module.__name__}._Callback" in placeholders and f"{__name__}._called" in placeholders
    assert type(state["callbacks"][0]).__name__ == "_Callback" and not hasattr(state["callbacks"][0], "state")


def test_a_truncated_checkpoint_is_one_clear_error(tmp_path):
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="cut.ckpt: not a readable checkpoint"):
        load_foreign_checkpoint(path)
