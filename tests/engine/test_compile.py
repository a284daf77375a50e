"""train.compile: the training step runs compiled, checkpoints and resume are as eager ones, a failed compile names the key."""

import json

import pytest
import torch

from genflow.engine.checkpoint import load_checkpoint
from genflow.engine.trainer import train
from genflow.errors import ConfigError


def train_losses(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def last(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


@pytest.mark.slow  # three compiled runs: ~12 s on one core
def test_compiled_training_matches_eager_and_resumes_exactly(toy_recipe, tmp_path):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    train(toy_recipe(max_steps=6, log_every=2), tmp_path / "eager", show_progress=False)
    assert not counters["stats"]["unique_graphs"]
    train(toy_recipe(max_steps=6, log_every=2, compile=True), tmp_path / "compiled", show_progress=False)
    assert counters["stats"]["unique_graphs"] >= 1, "train.compile=true trained eager"
    eager, compiled = last(tmp_path / "eager"), last(tmp_path / "compiled")
    assert list(compiled["model"]) == list(eager["model"])  # no `_orig_mod.` prefixes: a compiled run's checkpoint is a plain one
    assert train_losses(tmp_path / "compiled") == pytest.approx(train_losses(tmp_path / "eager"), rel=1e-4)
    split = tmp_path / "split"
    train(toy_recipe(max_steps=3, log_every=2, compile=True), split, show_progress=False)
    train(toy_recipe(max_steps=6, log_every=2, compile=True), split, resume_from=split / "checkpoints" / "last.pt",
          show_progress=False)
    for name, value in compiled["model"].items():
        assert torch.equal(last(split)["model"][name], value), name


def test_a_machine_that_cannot_compile_is_one_config_error(toy_recipe, tmp_path):
    import torch._inductor.config as inductor

    torch._dynamo.reset()  # nothing compiled earlier in this process is reused
    # inductor's own patch: it restores its config exactly (monkeypatch would leave its settings broken for
    # the compiled samplers tested after this)
    with inductor.patch({"fx_graph_cache": False, "cpp.cxx": (None, str(tmp_path / "no-such-compiler"))}):
        with pytest.raises(ConfigError, match=r"^train.compile=true: torch.compile could not build .*C\+\+ compiler"):
            train(toy_recipe(max_steps=2, compile=True), tmp_path / "run", show_progress=False)
    torch._dynamo.reset()
