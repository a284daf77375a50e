"""Procedural hand poses, corruptions, AUROC, and the MANO-style npz importer."""

import numpy as np
import pytest

from genflow_recipes.hand_vae.dataset import import_hands_npz, read_hands_npz
from genflow_recipes.hand_vae.skeleton import FAMILIES, inside_limits, make_hand_poses
from genflow.data.shards import load_split
from genflow.errors import DataSourceError
from genflow_recipes.hand_vae.metrics import CORRUPTIONS, auroc, corrupt


def test_procedural_poses_respect_limits_and_cover_every_family():
    poses, families = make_hand_poses(3000, seed=0)
    assert poses.shape == (3000, 90) and poses.dtype == np.float32 and families.shape == (3000, 2)
    assert inside_limits(poses).all()
    assert set(np.unique(families)) == set(range(len(FAMILIES)))
    # grasp families differ: a fist curls more than an open hand (right-hand index MCP flexion ~ |rotation|)
    index_mcp = np.linalg.norm(poses[:, 45:48], axis=1)
    assert index_mcp[families[:, 1] == FAMILIES.index("fist")].mean() > index_mcp[families[:, 1] == FAMILIES.index("open")].mean() + 0.5


def test_corruptions_leave_the_data_and_auroc_is_a_rank_statistic():
    poses, _ = make_hand_poses(200, seed=1)
    rng = np.random.default_rng(0)
    for kind in CORRUPTIONS:
        bad = corrupt(poses, kind, rng)
        assert bad.shape == poses.shape and not np.allclose(bad, poses), kind
    assert not inside_limits(corrupt(poses, "joint_limits", rng)).all(1).any()
    assert auroc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 1.0
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 0.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5


def test_importer_reads_every_key_variant(tmp_path):
    src = tmp_path / "npz"
    src.mkdir()
    poses, _ = make_hand_poses(60, seed=2)
    np.savez(src / "a.npz", lhand=poses[:20, :45], rhand=poses[:20, 45:])
    np.savez(src / "b.npz", left_hand_pose=poses[20:40, :45].reshape(20, 15, 3), right_hand_pose=poses[20:40, 45:].reshape(20, 15, 3))
    np.savez(src / "c.npz", poses=poses[40:])
    summary = import_hands_npz(src, tmp_path / "shards", val_fraction=0.1)
    assert summary.converted == 3 and summary.num_files == 3 and not summary.skipped  # files; poses are in splits
    assert sum(summary.splits.values()) == 60
    total = sum(len(load_split(tmp_path / "shards", s, ["pose"])["pose"]) for s in ("train", "val", "test"))
    assert total == 60
    assert np.allclose(np.sort(read_hands_npz(src / "b.npz"), axis=0), np.sort(poses[20:40], axis=0))


def test_bad_files_are_skipped_with_a_reason_and_none_readable_is_an_error(tmp_path):
    src = tmp_path / "npz"
    src.mkdir()
    poses, _ = make_hand_poses(10, seed=3)
    np.savez(src / "good.npz", lhand=poses[:, :45], rhand=poses[:, 45:])
    np.savez(src / "wrong_shape.npz", lhand=np.zeros((10, 44)), rhand=np.zeros((10, 45)))
    (src / "broken.npz").write_bytes(b"not a zip")
    np.savez(src / "corrupt_member.npz", lhand=poses[:, :45], rhand=poses[:, 45:])  # a readable zip whose member is damaged
    raw = bytearray((src / "corrupt_member.npz").read_bytes())
    raw[raw.index(b"rhand.npy") + 200] ^= 0xFF  # inside rhand's data: zipfile's CRC check fails on reading it
    (src / "corrupt_member.npz").write_bytes(bytes(raw))
    summary = import_hands_npz(src, tmp_path / "shards", split="frame")  # one readable file: no split by set
    reasons = dict(summary.skipped)
    assert summary.converted == 1 and summary.num_files == 4 and sum(summary.splits.values()) == 10
    assert set(reasons) == {"wrong_shape.npz", "broken.npz", "corrupt_member.npz"}
    assert "expected (N, 45)" in reasons["wrong_shape.npz"] and "not a readable npz" in reasons["broken.npz"]
    assert "not a readable npz" in reasons["corrupt_member.npz"]
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    np.savez(only_bad / "x.npz", something=np.zeros((3, 7)))
    with pytest.raises(DataSourceError, match="none of 1 .npz files holds hand poses"):
        import_hands_npz(only_bad, tmp_path / "shards2")
