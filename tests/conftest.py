"""Shared fixtures: a toy recipe for engine tests (defined in support.py), tiny synthetic MNIST-like
digits and an in-process `genflow` runner for CLI tests."""

from __future__ import annotations

import numpy as np
import pytest

from support import ToyConfig, ToyRecipe, draw_digit_images


@pytest.fixture(autouse=True)
def fixed_training_threads(monkeypatch):
    """In-process training keeps the thread count it starts with: a run's numbers depend on it, and two runs a
    test compares (exact resume) must not differ because one of them followed a busy neighbour. (CLI runs of
    the tiny digit4 model fix it with train.threads=1, in TINY_MODEL.)"""
    import torch

    import genflow.engine.trainer as trainer

    budget = trainer.ThreadBudget
    monkeypatch.setattr(trainer, "ThreadBudget", lambda threads=None, **kwargs: budget(threads or torch.get_num_threads(), **kwargs))


@pytest.fixture
def toy_recipe():
    def make(**train_overrides) -> ToyRecipe:
        cfg = ToyConfig()
        for key, value in train_overrides.items():
            if hasattr(cfg.train, key):
                setattr(cfg.train, key, value)
            else:
                setattr(cfg, key, value)
        return ToyRecipe(cfg)

    return make


@pytest.fixture(scope="session")
def tiny_mnist_npz(tmp_path_factory):
    """An MNIST-format npz (x_train, y_train, x_test, y_test) of synthetic digits, labels 4 and 7."""
    path = tmp_path_factory.mktemp("mnist") / "mnist.npz"
    x_train, x_test = draw_digit_images(80, seed=1), draw_digit_images(20, seed=2)
    y_train, y_test = np.array([4, 7] * 40, dtype=np.int64), np.array([4, 7] * 10, dtype=np.int64)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


@pytest.fixture(scope="session")
def digit4_dir(tmp_path_factory, tiny_mnist_npz):
    """A tiny digit4 dataset (64-point clouds of the synthetic digits), made once; tests copy it before changing it."""
    from genflow.cli import main

    out = tmp_path_factory.mktemp("data") / "digit4"
    assert main(["data", "make-digit4", "--out", str(out), "--source", str(tiny_mnist_npz), "--points", "64"]) == 0
    return out


@pytest.fixture
def cli(capsys):
    """Run `genflow ARGS...` in this process: returns (exit code, stdout, stderr)."""
    from genflow.cli import main

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def opened_splits(monkeypatch):
    """Every dataset split any reader opens while the test runs, as a list of split names."""
    from genflow.data import shards

    opened: list[str] = []
    original = shards._SplitReader.__init__

    def spy(self, path, split, fields):
        opened.append(split)
        original(self, path, split, fields)

    monkeypatch.setattr(shards._SplitReader, "__init__", spy)
    return opened
