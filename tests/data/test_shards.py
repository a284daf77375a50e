"""Tests for genflow.data.shards: writing, manifests, verification and the two datasets."""

import json
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from genflow.data import shards
from genflow.data.shards import (
    MANIFEST_NAME,
    ShardDataset,
    ShardWriter,
    StreamingShardDataset,
    dataset_info,
    load_split,
    read_manifest,
    verify_shards,
)
from genflow.errors import ShardError

FIELDS = {"points": ((4, 2), "float32"), "label": ((), "int64")}
SAMPLE_BYTES = 4 * 2 * 4 + 8  # one sample of FIELDS


def make_samples(n, offset=0):
    """Samples whose label is their index, so order and coverage are easy to check."""
    label = np.arange(offset, offset + n, dtype=np.int64)
    points = (label[:, None, None] + np.linspace(0, 0.5, 8).reshape(1, 4, 2)).astype(np.float32)
    return {"points": points, "label": label}


def write_dataset(path, n_train=23, n_test=5, samples_per_shard=5, **kwargs):
    """A dataset of n_train + n_test samples, five per shard by default (train: 5 shards)."""
    with ShardWriter(path, FIELDS, max_shard_bytes=samples_per_shard * SAMPLE_BYTES, seed=7, **kwargs) as writer:
        writer.write("train", **make_samples(n_train))
        writer.write("test", **make_samples(n_test, offset=1000))
    return writer.close()


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "ds"
    write_dataset(path)
    return path


# -- writing -------------------------------------------------------------------------------------


def test_writer_splits_writes_across_bounded_shards(tmp_path):
    with ShardWriter(tmp_path / "ds", FIELDS, max_shard_bytes=5 * SAMPLE_BYTES) as writer:
        writer.write("train", **make_samples(7))
        writer.write("train", **make_samples(6, offset=7))
    shards = writer.close()["splits"]["train"]["shards"]
    assert [s["count"] for s in shards] == [5, 5, 3]
    assert [s["file"] for s in shards] == ["train-00000.h5", "train-00001.h5", "train-00002.h5"]


def test_manifest_records_layout_and_metadata(tmp_path):
    manifest = write_dataset(tmp_path / "ds", source={"kind": "toy"}, attrs={"digits": np.array([4])})
    assert manifest == read_manifest(tmp_path / "ds")
    assert manifest["format"] == "genflow-shards/1"
    assert manifest["fields"] == {
        "points": {"shape": [4, 2], "dtype": "float32"},
        "label": {"shape": [], "dtype": "int64"},
    }
    assert manifest["splits"]["train"]["count"] == 23 and manifest["splits"]["test"]["count"] == 5
    assert manifest["seed"] == 7 and manifest["source"] == {"kind": "toy"} and manifest["attrs"] == {"digits": [4]}
    assert {"created", "genflow_version"} <= set(manifest)
    shard = manifest["splits"]["test"]["shards"][0]
    assert len(shard["sha256"]) == 64 and shard["bytes"] == (tmp_path / "ds" / shard["file"]).stat().st_size


def test_writer_refuses_existing_dataset_without_overwrite(dataset):
    with pytest.raises(ShardError, match="overwrite"):
        ShardWriter(dataset, FIELDS)


def test_overwrite_removes_old_shards(dataset):
    write_dataset(dataset, n_train=3, n_test=1, overwrite=True)
    assert sorted(p.name for p in dataset.glob("*.h5")) == ["test-00000.h5", "train-00000.h5"]
    assert verify_shards(dataset) == []


def test_exception_inside_writer_leaves_no_manifest_or_shards(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "ds", FIELDS) as writer:
        writer.write("train", **make_samples(3))
        raise RuntimeError("generation failed")
    assert not (tmp_path / "ds").exists()  # the directories the write made are gone too: no empty output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "mine" / "a" / "b", FIELDS) as writer:
        writer.write("train", **make_samples(3))
        raise RuntimeError("generation failed")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]  # what was there before stays


def test_an_output_dir_under_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ShardError, match=r"cannot create the output directory: .*file is a file"):
        ShardWriter(tmp_path / "file" / "ds", FIELDS)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"points": np.zeros((2, 4, 2), np.float32)}, "missing \\['label'\\]"),
        ({**make_samples(2), "extra": np.zeros(2)}, "unknown \\['extra'\\]"),
        (
            {"points": np.zeros((2, 4, 2), np.float64), "label": np.zeros(2, np.int64)},
            "'points' has dtype float64, expected float32",
        ),
        (
            {"points": np.zeros((2, 3, 2), np.float32), "label": np.zeros(2, np.int64)},
            r"'points' has shape \(2, 3, 2\), expected \(B, 4, 2\)",
        ),
        ({"points": np.zeros((2, 4, 2), np.float32), "label": np.zeros(3, np.int64)}, "different batch sizes"),
    ],
)
def test_write_rejects_wrong_fields_shapes_and_dtypes(tmp_path, arrays, message):
    with ShardWriter(tmp_path / "ds", FIELDS) as writer, pytest.raises(ShardError, match=message):
        writer.write("train", **arrays)


# -- manifest errors and verification --------------------------------------------------------------


def test_read_manifest_names_missing_directory(tmp_path):
    with pytest.raises(ShardError, match="nope: no such dataset directory"):
        read_manifest(tmp_path / "nope")


def test_read_manifest_reports_missing_invalid_and_foreign_manifests(dataset):
    manifest_path = dataset / MANIFEST_NAME
    text = manifest_path.read_text()
    manifest_path.unlink()
    with pytest.raises(ShardError, match="manifest.json: missing; the write was interrupted"):
        read_manifest(dataset)
    manifest_path.write_text("{not json")
    with pytest.raises(ShardError, match="invalid JSON"):
        read_manifest(dataset)
    manifest_path.write_text(json.dumps({**json.loads(text), "format": "other/2"}))
    with pytest.raises(ShardError, match="format is 'other/2', expected 'genflow-shards/1'"):
        read_manifest(manifest_path)


def test_verify_shards_passes_intact_dataset(dataset):
    assert verify_shards(dataset) == []


def test_verify_shards_reports_corrupt_truncated_and_missing_shards(dataset):
    flipped = dataset / "train-00001.h5"
    data = bytearray(flipped.read_bytes())
    data[-10] ^= 0xFF  # inside the sample data: HDF5 still opens, only the checksum can tell
    flipped.write_bytes(bytes(data))
    truncated = dataset / "train-00002.h5"
    truncated.write_bytes(truncated.read_bytes()[:500])
    (dataset / "test-00000.h5").unlink()

    problems = verify_shards(dataset)
    assert any("train-00001.h5: sha256 mismatch" in p for p in problems)
    assert any("train-00002.h5" in p and "manifest says" in p for p in problems)
    assert any("train-00002.h5: not a readable HDF5 file" in p for p in problems)
    assert any(p.endswith("test-00000.h5: missing") for p in problems)
    assert all("\n" not in p for p in problems)


def test_dataset_info_summarises_splits(dataset):
    info = dataset_info(dataset)
    assert info["splits"]["train"]["count"] == 23 and info["splits"]["train"]["shards"] == 5
    assert info["num_samples"] == 28
    assert info["total_bytes"] == sum(p.stat().st_size for p in dataset.glob("*.h5"))
    assert info["fields"]["points"] == {"shape": [4, 2], "dtype": "float32"}


# -- load_split and ShardDataset -------------------------------------------------------------------


def test_load_split_returns_whole_split_in_order(dataset):
    arrays = load_split(dataset, "train")
    expected = make_samples(23)
    np.testing.assert_array_equal(arrays["label"], expected["label"])
    np.testing.assert_array_equal(arrays["points"], expected["points"])
    assert list(load_split(dataset, "test", ["label"])) == ["label"]


def test_unknown_split_or_field_lists_available_ones(dataset):
    with pytest.raises(ShardError, match=r"no split 'valid'; available splits: \['test', 'train'\]"):
        load_split(dataset, "valid")
    with pytest.raises(ShardError, match=r"no 'val' split \(the dataset predates validation splits"):
        load_split(dataset, "val")
    with pytest.raises(ShardError, match=r"unknown fields \['pts'\]; available fields: \['points', 'label'\]"):
        ShardDataset(dataset, "train", fields=["pts"])


@pytest.mark.parametrize("in_memory", [False, True])
def test_dataset_returns_samples_as_tensors(dataset, in_memory):
    ds = ShardDataset(dataset, "train", in_memory=in_memory)
    assert len(ds) == 23 and ds.fields == ["points", "label"] and ds.field_shape("points") == (4, 2)
    sample = ds[12]
    assert sample["label"].shape == () and sample["label"].item() == 12
    assert sample["points"].dtype == torch.float32 and sample["points"].shape == (4, 2)
    assert ds[-1]["label"].item() == 22
    with pytest.raises(IndexError):
        ds[23]


@pytest.mark.parametrize("in_memory", [False, True])
def test_getitems_keeps_requested_order_across_shards_and_duplicates(dataset, in_memory):
    ds = ShardDataset(dataset, "train", in_memory=in_memory)
    indices = [22, 3, 4, 5, 0, 9, 10, 3, 17]
    batch = ds.get_batch(indices)
    assert batch["label"].tolist() == indices
    torch.testing.assert_close(batch["points"], torch.from_numpy(make_samples(23)["points"][indices]))
    assert [s["label"].item() for s in ds.__getitems__(indices)] == indices


def test_dataloader_with_workers_sees_every_sample_once(dataset):
    ds = ShardDataset(dataset, "train")
    ds[0]  # opens a file in this process: workers must not inherit or pickle it
    loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0))
    batches = list(loader)
    assert batches[0]["points"].shape == (4, 4, 2) and batches[0]["label"].shape == (4,)
    assert sorted(torch.cat([b["label"] for b in batches]).tolist()) == list(range(23))


def test_dataset_pickles_without_open_files(dataset):
    ds = ShardDataset(dataset, "train")
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[7]["label"].item() == 7


def test_truncated_shard_fails_at_construction_naming_the_file(dataset):
    shard = dataset / "train-00003.h5"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ShardError, match="train-00003.h5: 100 bytes, manifest says"):
        ShardDataset(dataset, "train")


def test_garbage_shard_raises_shard_error_naming_the_file(tmp_path):
    path = tmp_path / "ds"
    write_dataset(path, source={"command": "genflow data make-test"})
    shard = path / "train-00001.h5"
    shard.write_bytes(b"\0" * shard.stat().st_size)  # same size, so only opening it can tell
    expected = r"train-00001.h5: not a readable HDF5 file .*re-create it with genflow data make-test"
    with pytest.raises(ShardError, match=expected):  # at construction, not later inside a DataLoader worker
        ShardDataset(path, "train")
    with pytest.raises(ShardError, match=expected):
        StreamingShardDataset(path, "train")


# -- StreamingShardDataset -----------------------------------------------------------------------


def stream_labels(ds):
    return [int(s["label"]) for s in ds]


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])  # 5 shards: more and fewer consumers than shards
def test_streaming_ranks_together_see_every_sample_once(dataset, world_size):
    seen = []
    for rank in range(world_size):
        ds = StreamingShardDataset(dataset, "train", seed=3, buffer_size=4, rank=rank, world_size=world_size)
        labels = stream_labels(ds)
        assert len(labels) == len(ds) and abs(len(labels) - 23 / world_size) < 1
        seen += labels
    assert sorted(seen) == list(range(23))


def test_streaming_consumer_ranges_cover_split_when_consumers_outnumber_shards(dataset):
    ds = StreamingShardDataset(dataset, "train", shuffle=False)
    covered = []
    for consumer in range(12):  # e.g. 3 ranks x 4 workers over 5 shards
        pieces = ds.consumer_ranges(consumer, 12)
        assert pieces, "no consumer may be idle"
        covered += [int(ds._reader.starts[s]) + i for s, a, b in pieces for i in range(a, b)]
    assert sorted(covered) == list(range(23))


def test_streaming_with_workers_sees_every_sample_once(dataset):
    ds = StreamingShardDataset(dataset, "train", seed=1, buffer_size=8, rank=1, world_size=2)
    loader = DataLoader(ds, batch_size=3, num_workers=2)
    labels = torch.cat([b["label"] for b in loader]).tolist()
    rank0 = stream_labels(StreamingShardDataset(dataset, "train", seed=1, rank=0, world_size=2))
    assert len(labels) == len(ds)
    assert sorted(labels + rank0) == list(range(23))


def test_streaming_shuffle_is_seeded_by_seed_and_epoch(dataset):
    ds = StreamingShardDataset(dataset, "train", seed=5, buffer_size=6)
    first = stream_labels(ds)
    assert stream_labels(ds) == first
    assert sorted(first) == list(range(23)) and first != list(range(23))
    ds.set_epoch(1)
    assert stream_labels(ds) != first


def test_streaming_without_shuffle_keeps_stored_order(dataset):
    ds = StreamingShardDataset(dataset, "train", shuffle=False)
    assert stream_labels(ds) == list(range(23))
    sample = next(iter(ds))
    assert sample["points"].shape == (4, 2) and sample["label"].dtype == torch.int64


def test_split_indices_holds_val_out_of_train_and_rejects_fractions_that_leave_no_train():
    from genflow.data.shards import split_indices

    parts = split_indices(np.arange(20), val_fraction=0.2, test_fraction=0.1)
    assert parts["test"].tolist() == [0, 1] and parts["val"].tolist() == [2, 3, 4, 5] and len(parts["train"]) == 14
    with pytest.raises(ShardError, match="val_fraction=0.6 and test_fraction=0.5: expected each in \\[0, 1\\) and together below 1"):
        split_indices(np.arange(20), val_fraction=0.6, test_fraction=0.5)


def test_a_shard_whose_bytes_changed_is_refused_before_training_naming_it(tmp_path, monkeypatch):
    path = tmp_path / "ds"
    write_dataset(path)
    ShardDataset(path, "train")  # the writer recorded its shards as verified
    hashed = []
    original = shards._sha256
    monkeypatch.setattr(shards, "_sha256", lambda file: hashed.append(file.name) or original(file))
    ShardDataset(path, "train")
    assert hashed == []  # unchanged files (size + mtime) are not read again
    shard = path / "train-00002.h5"
    raw = bytearray(shard.read_bytes())
    raw[raw.index(np.float32(10.0).tobytes())] ^= 0x01  # one bit of one sample: same size, still valid HDF5
    shard.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match=r"train-00002.h5: sha256 does not match the manifest"):
        ShardDataset(path, "train")
    with pytest.raises(ShardError, match=r"train-00002.h5: sha256 does not match the manifest"):
        load_split(path, "train")
    assert hashed.count("train-00002.h5") == 2 and "train-00001.h5" not in hashed


def test_a_stream_resumed_mid_epoch_yields_the_rest_of_the_epoch_exactly(tmp_path):
    """Two ranks x two DataLoader workers: set_position(k) continues with batches k, k+1, ... of the
    uninterrupted epoch (the engine's resume), and set_epoch reshuffles."""
    path = tmp_path / "ds"
    write_dataset(path, n_train=40)
    for rank in (0, 1):
        stream = StreamingShardDataset(path, "train", ["label"], seed=3, buffer_size=4, rank=rank, world_size=2)
        stream.set_epoch(1)
        loader = lambda: [b["label"].tolist() for b in DataLoader(stream, batch_size=3, num_workers=2, drop_last=True)]
        batches_per_epoch = stream.batches_per_epoch(3, 2)
        whole = loader()[:batches_per_epoch]
        assert batches_per_epoch == 6 and len(whole) == 6
        stream.set_position(3, 3)
        assert loader()[: batches_per_epoch - 3] == whole[3:]
    stream.set_position(0, 3)
    stream.set_epoch(2)
    assert loader()[:batches_per_epoch] != whole
