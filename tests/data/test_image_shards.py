"""Labelled image shards for dtm: MNIST-format sources (IDX directory, e.g. Fashion-MNIST) -> shards."""

import numpy as np
import pytest

from genflow.cli import main
from genflow.data.image_shards import load_image_source
from genflow.data.shards import load_split
from genflow.errors import DataSourceError
from test_mnist import write_idx_dir


def test_fashion_from_an_idx_directory_keeps_the_official_test_split_and_holds_val_out_of_train(tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 30).astype(np.uint8)
    write_idx_dir(tmp_path / "fashion", images, labels, n_train=24, gz=True)
    out = tmp_path / "shards"
    assert main(["data", "make-mnist-images", "--fashion", "--source", str(tmp_path / "fashion"), "--out", str(out)]) == 0
    train, val, test = load_split(out, "train"), load_split(out, "val"), load_split(out, "test")
    assert np.array_equal(test["image"], images[24:]) and np.array_equal(test["label"], labels[24:])
    assert len(val["image"]) == 2 and len(train["image"]) == 22  # a seeded 10 % of the official 24 training images
    rows = lambda x: {r.tobytes() for r in x}  # noqa: E731
    assert rows(train["image"]) | rows(val["image"]) == rows(images[:24]) and not rows(train["image"]) & rows(val["image"])
    assert "Fashion-MNIST" in capsys.readouterr().out


def test_missing_fashion_directory_is_a_clear_error(tmp_path):
    with pytest.raises(DataSourceError, match="dataset-fashion-mnist"):
        load_image_source(tmp_path / "nowhere", fashion=True)
