"""`genflow data import hands DIR`: files in the SMPL-X layout (one capture set per file), split by set, frame,
as given, or the source's own frame lists."""

import json

import numpy as np
import pytest

from genflow.data.shards import load_split
from genflow.errors import ConfigError, DataSourceError
from genflow_recipes.hand_vae.dataset import import_hands_npz, read_hands_npz

SIZES = {"ACCAD": 400, "Bedlam": 120, "CMU": 90, "DanceDB": 300, "GRAB": 60, "KIT": 200, "MOYO": 50, "arctic": 80}


def _write_set(path, frames, seed=0, **extra):
    """One set as the source stores it: hand poses beside body keys, a string array and anything in `extra`."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, lhand_pose=rng.normal(0, 0.3, (frames, 45)), rhand_pose=rng.normal(0, 0.3, (frames, 45)),
             global_orient=np.zeros((frames, 3)), body_pose=np.zeros((frames, 63)), jaw_pose=np.zeros((frames, 3)),
             betas=np.zeros(10), gender=np.array("neutral"), **extra)


@pytest.fixture
def sets_dir(tmp_path):
    src = tmp_path / "sets"
    for i, (name, frames) in enumerate(SIZES.items()):
        _write_set(src / f"{name}.npz", frames, seed=i)
    return src


def test_reads_lhand_pose_rhand_pose_beside_body_keys_and_a_pickled_array(tmp_path):
    _write_set(tmp_path / "a.npz", 7, subject=np.array([{"id": 1}], dtype=object))  # needs pickle: never read
    pose = read_hands_npz(tmp_path / "a.npz")
    with np.load(tmp_path / "a.npz") as npz:
        assert np.allclose(pose, np.concatenate([npz["lhand_pose"], npz["rhand_pose"]], axis=1))
    assert pose.shape == (7, 90) and pose.dtype == np.float32


def test_a_pickled_hand_key_is_refused_by_name(tmp_path):
    left = np.empty(3, dtype=object)
    left[:] = [np.zeros(45)] * 3
    np.savez(tmp_path / "p.npz", lhand_pose=left, rhand_pose=np.zeros((3, 45)))
    with pytest.raises(DataSourceError, match=r"p.npz: 'lhand_pose' is an object array \(needs pickle, refused\)"):
        read_hands_npz(tmp_path / "p.npz")


def test_split_by_set_puts_each_set_in_one_split_near_the_fractions_and_repeats_for_a_seed(sets_dir, tmp_path):
    summary = import_hands_npz(sets_dir, tmp_path / "a", seed=3)
    assert summary.split == "set" and summary.warning is None
    assert all(len(parts) == 1 for parts in summary.sets.values()) and set(summary.sets) == set(SIZES)
    total = sum(SIZES.values())
    for split in ("val", "test"):
        assert 0 < summary.splits[split] and abs(summary.splits[split] / total - 0.1) < 0.05
    assert sum(len(load_split(tmp_path / "a", s, ["pose"])["pose"]) for s in ("train", "val", "test")) == total
    attrs = json.loads((tmp_path / "a" / "manifest.json").read_text())["attrs"]
    assert attrs["split"] == "set" and attrs["sets"]["CMU"]["frames"] == 90
    assert {name: entry["split"] for name, entry in attrs["sets"].items()} == \
        {name: next(iter(parts)) for name, parts in summary.sets.items()}
    lines = (tmp_path / "a" / "splits.txt").read_text().splitlines()
    assert lines[0] == "set\tsplit\tframes" and len(lines) == 1 + len(SIZES)
    again = import_hands_npz(sets_dir, tmp_path / "b", seed=3)
    assert again.sets == summary.sets
    others = [import_hands_npz(sets_dir, tmp_path / f"s{seed}", seed=seed).sets for seed in range(4)]
    assert any(other != summary.sets for other in others)  # the seed chooses the sets


def test_split_by_set_needs_three_readable_files(tmp_path):
    _write_set(tmp_path / "src" / "one.npz", 50)
    _write_set(tmp_path / "src" / "two.npz", 50)
    with pytest.raises(DataSourceError, match="2 readable .* needs at least 3; use split=frame"):
        import_hands_npz(tmp_path / "src", tmp_path / "out")
    summary = import_hands_npz(tmp_path / "src", tmp_path / "out", split="frame")
    assert "leak" in summary.warning and all(len(parts) == 3 for parts in summary.sets.values())
    assert summary.splits == {"train": 80, "val": 10, "test": 10}


def test_split_given_keeps_the_folders_and_is_chosen_when_they_exist(tmp_path):
    src = tmp_path / "src"
    for split, names in {"train": ["ACCAD", "CMU"], "val": ["GRAB"], "test": ["KIT", "MOYO"]}.items():
        for name in names:
            _write_set(src / split / f"{name}.npz", 10 + len(name))
    _write_set(src / "loose.npz", 5)  # outside the three folders: named as skipped
    summary = import_hands_npz(src, tmp_path / "out")
    assert summary.split == "given"
    assert summary.sets == {"ACCAD": {"train": 15}, "CMU": {"train": 13}, "GRAB": {"val": 14},
                            "KIT": {"test": 13}, "MOYO": {"test": 14}}
    assert summary.skipped == [("loose.npz", "outside train/, val/ and test/ (split=given)")]
    assert "loose.npz" in (tmp_path / "out" / "skipped.txt").read_text()
    assert import_hands_npz(src, tmp_path / "by_set", split="set").split == "set"  # an explicit split wins


def _write_samples(folder, samples):
    folder.mkdir(exist_ok=True)
    for split, lists in samples.items():
        (folder / f"{split}_samples.json").write_text(json.dumps(lists))


def test_splits_folder_keeps_the_sources_frame_lists_exactly(sets_dir, tmp_path):
    samples = {"train": {"CMU": [5, 0, 89], "GRAB": [1, 2, 3, 4]}, "val": {"CMU": [6], "GRAB": [7]}, "test": {"CMU": [8, 9]}}
    _write_samples(tmp_path / "splits", samples)
    summary = import_hands_npz(sets_dir, tmp_path / "out", splits_dir=tmp_path / "splits")
    assert summary.split == "splits" and "by frame" in summary.warning
    assert summary.sets == {"CMU": {"train": 3, "val": 1, "test": 2}, "GRAB": {"train": 4, "val": 1}}
    cmu, grab = read_hands_npz(sets_dir / "CMU.npz"), read_hands_npz(sets_dir / "GRAB.npz")
    train = load_split(tmp_path / "out", "train", ["pose"])["pose"]
    assert np.array_equal(train, np.concatenate([cmu[[5, 0, 89]], grab[[1, 2, 3, 4]]]))
    assert np.array_equal(load_split(tmp_path / "out", "test", ["pose"])["pose"], cmu[[8, 9]])
    assert len(summary.skipped) == len(SIZES) - 2 and all("not named in" in why for _, why in summary.skipped)


def test_splits_folder_rejects_an_index_out_of_range_or_a_missing_set(sets_dir, tmp_path):
    _write_samples(tmp_path / "splits", {"train": {"CMU": [0]}, "val": {"CMU": [90]}, "test": {"CMU": [1]}})
    with pytest.raises(DataSourceError, match=r"val_samples.json: set 'CMU' frame index 90 out of range; .*CMU.npz has 90 frames"):
        import_hands_npz(sets_dir, tmp_path / "out", splits_dir=tmp_path / "splits")
    assert not (tmp_path / "out" / "manifest.json").exists()
    _write_samples(tmp_path / "splits", {"train": {"CMU": [0]}, "val": {"Nowhere": [0]}, "test": {"CMU": [1]}})
    with pytest.raises(DataSourceError, match=r"Nowhere.npz: missing; .*val_samples.json names set 'Nowhere'"):
        import_hands_npz(sets_dir, tmp_path / "out", splits_dir=tmp_path / "splits")
    with pytest.raises(ConfigError, match="give one"):
        import_hands_npz(sets_dir, tmp_path / "out", split="set", splits_dir=tmp_path / "splits")


def test_a_file_with_a_wrong_hand_shape_is_skipped_by_name(sets_dir, tmp_path):
    np.savez(sets_dir / "Broken.npz", lhand_pose=np.zeros((10, 44)), rhand_pose=np.zeros((10, 45)), body_pose=np.zeros((10, 63)))
    summary = import_hands_npz(sets_dir, tmp_path / "out")
    assert summary.skipped == [("Broken.npz", "lhand_pose / rhand_pose have shapes (10, 44) / (10, 45); "
                                "expected (N, 45) or (N, 15, 3) each")]
    assert "Broken" not in summary.sets and summary.converted == len(SIZES) and summary.num_files == len(SIZES) + 1
    with pytest.raises(DataSourceError, match=r"Broken.npz: lhand_pose / rhand_pose have shapes"):
        read_hands_npz(sets_dir / "Broken.npz")


def test_cli_prints_where_each_set_went(sets_dir, tmp_path, cli):
    code, out, err = cli("data", "import", "hands", sets_dir, f"out={tmp_path / 'out'}", "seed=3")
    assert code == 0, err
    assert "split: by set" in out and any(line.split() == ["set", "frames", "split"] for line in out.splitlines())
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1] and line.split()[0] in SIZES}
    assert set(rows) == set(SIZES) and {where for _, where in rows.values()} == {"train", "val", "test"}
    assert all(int(frames) == SIZES[name] for name, (frames, _) in rows.items())
    code, out, err = cli("data", "import", "hands", sets_dir, f"out={tmp_path / 'frames'}", "split=frame")
    assert code == 0, err
    assert "warning: split=frame" in out and "train " in out
