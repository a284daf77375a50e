"""NAMO scene .npz files -> HDF5 shards: the namo importer on the library's shared driver (genflow.data.npz_import)."""

import numpy as np
import pytest
import torch

from genflow.data.npz_import import NpzFileError
from genflow.data.registry import DataJob, get_data_command
from genflow.data.shards import load_split, read_manifest, verify_shards
from genflow.errors import DataSourceError, GenflowError
from genflow_recipes.namo.importer import area_resize_masks, import_namo_npz, read_namo_npz

NEW_KEYS = ["robot_image", "goal_image", "movable_objects_image", "static_objects_image", "target_object", "target_goal"]
LEGACY_KEYS = ["robot", "goal", "movable", "static", "target_object", "target_goal"]


def cell_grids(rng: np.random.Generator) -> np.ndarray:
    """Six (32, 32) bool masks of a scene, each a few random rectangles of cells; target_goal is never empty."""
    grids = np.zeros((6, 32, 32), bool)
    for channel in range(6):
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, 30, size=2)
            h, w = rng.integers(1, 6, size=2)
            grids[channel, r : r + h, c : c + w] = True
    return grids


def upsample(grids: np.ndarray, factor: int) -> np.ndarray:
    """(C, 32, 32) -> (C, 32 factor, 32 factor): each cell becomes a factor x factor block."""
    return grids.repeat(factor, axis=-2).repeat(factor, axis=-1)


def write_scene(path, grids, keys=NEW_KEYS, dtype=np.uint8, **extra):
    """Saves a scene of 224 px masks (7-px cells); uint8 masks are 0/255."""
    masks = upsample(grids, 7)
    if dtype == np.uint8:
        masks = masks.astype(np.uint8) * 255
    else:
        masks = masks.astype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **dict(zip(keys, masks, strict=True)), **extra)


def make_source(tmp_path, n, keys=NEW_KEYS, seed=0, name="src"):
    """n scenes under tmp_path/name; returns the dir and the scenes' (6, 32, 32) grids in file order."""
    rng = np.random.default_rng(seed)
    src = tmp_path / name
    grids = [cell_grids(rng) for _ in range(n)]
    for i, g in enumerate(grids):
        write_scene(src / f"scene_{i:03d}.npz", g, keys=keys)
    return src, grids


def all_samples(out) -> dict[str, np.ndarray]:
    """All splits concatenated and put in file_index order."""
    splits = [load_split(out, split) for split in ("train", "val", "test")]
    merged = {k: np.concatenate([s[k] for s in splits]) for k in splits[0]}
    order = np.argsort(merged["file_index"])
    return {k: v[order] for k, v in merged.items()}


# -- the per-file conversion ---------------------------------------------------------------------


def test_cell_aligned_masks_resize_exactly_from_224_to_64():
    grids = cell_grids(np.random.default_rng(3))
    resized = area_resize_masks(upsample(grids, 7), 64)
    np.testing.assert_array_equal(resized, upsample(grids, 2).astype(np.uint8))


def test_area_resize_matches_torch_area_interpolation_thresholded_at_half():
    masks = np.random.default_rng(0).random((3, 50, 37)) > 0.6
    expected = torch.nn.functional.interpolate(torch.from_numpy(masks).float()[None], size=(16, 16), mode="area")[0]
    np.testing.assert_array_equal(area_resize_masks(masks, 16), (expected >= 0.5).numpy().astype(np.uint8))


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.float32, np.int64])
def test_mask_dtypes_all_binarise_to_the_same_sample(tmp_path, dtype):
    grids = cell_grids(np.random.default_rng(1))
    write_scene(tmp_path / "a.npz", grids, dtype=dtype)  # uint8 masks are 0/255, the others 0/1
    sample = read_namo_npz(tmp_path / "a.npz", 64)
    np.testing.assert_array_equal(sample["context"], upsample(grids[:5], 2))
    np.testing.assert_array_equal(sample["target_goal"], upsample(grids[5:], 2))
    assert sample["context"].dtype == np.uint8 and sample["target_goal"].shape == (1, 64, 64)


def antialiased_overshoot(masks):
    """[0, 1] float masks as a renderer leaves them: on pixels peak at 1.0000002, edges are partial."""
    out = masks.astype(np.float32) * np.float32(1.0000002)
    out[:, 1::7, :] = np.where(masks[:, 1::7, :], 0.7, 0.3)  # one partial row per cell: on stays > 0.5
    return out


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(antialiased_overshoot, id="float-0-1-overshoot"),
        pytest.param(lambda m: m.astype(np.float32), id="float-0-1"),
        pytest.param(lambda m: m.astype(np.uint8), id="uint8-0-1"),
        pytest.param(lambda m: m.astype(np.uint8) * 255, id="uint8-0-255"),
        pytest.param(lambda m: m.astype(np.float64) * 255, id="float-0-255"),
    ],
)
def test_each_mask_encoding_binarises_on_its_own_scale(tmp_path, encode):
    grids = cell_grids(np.random.default_rng(2))
    masks = encode(upsample(grids, 7))
    np.savez(tmp_path / "a.npz", **dict(zip(NEW_KEYS, masks, strict=True)))
    sample = read_namo_npz(tmp_path / "a.npz", 64)
    np.testing.assert_array_equal(sample["context"], upsample(grids[:5], 2))
    np.testing.assert_array_equal(sample["target_goal"], upsample(grids[5:], 2))


@pytest.mark.parametrize(
    ("scale", "dtype", "found"),
    [
        (1.2, np.float32, r"\[0, 1.2\]"),  # above a [0, 1] mask's overshoot, too faint for 0-255
        (1000.0, np.float32, r"\[0, 1000\]"),
        (300, np.int64, r"\[0, 300\]"),
    ],
)
def test_a_mask_on_neither_scale_is_a_one_line_error_naming_file_key_and_range(tmp_path, scale, dtype, found):
    grids = cell_grids(np.random.default_rng(2))
    masks = upsample(grids, 7).astype(dtype)
    masks[5] = masks[5] * dtype(scale)
    np.savez(tmp_path / "a.npz", **dict(zip(NEW_KEYS, masks, strict=True)))
    with pytest.raises(NpzFileError, match=f"a.npz: 'target_goal' .*has values in {found}, expected a mask in") as info:
        read_namo_npz(tmp_path / "a.npz", 64)
    assert "\n" not in str(info.value)


def test_a_float_mask_already_in_minus_one_to_one_is_an_error(tmp_path):
    grids = cell_grids(np.random.default_rng(2))
    masks = upsample(grids, 7).astype(np.float32) * 2 - 1
    np.savez(tmp_path / "a.npz", **dict(zip(NEW_KEYS, masks, strict=True)))
    with pytest.raises(NpzFileError, match=r"'robot_image' \(float32\) has values in \[-1, 1\]"):
        read_namo_npz(tmp_path / "a.npz", 64)


# -- import_namo_npz -----------------------------------------------------------------------------


def test_new_and_legacy_keys_import_to_identical_shards(tmp_path):
    new_src, grids = make_source(tmp_path, 6, NEW_KEYS, name="new")
    legacy_src, _ = make_source(tmp_path, 6, LEGACY_KEYS, name="legacy")
    import_namo_npz(new_src, tmp_path / "a")
    import_namo_npz(legacy_src, tmp_path / "b")
    a, b = all_samples(tmp_path / "a"), all_samples(tmp_path / "b")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(a["context"], upsample(np.stack(grids)[:, :5], 2))


def test_shards_have_the_contracted_fields_and_verify(tmp_path):
    src, _ = make_source(tmp_path, 4)
    import_namo_npz(src, tmp_path / "out", image_size=32)
    fields = read_manifest(tmp_path / "out")["fields"]
    assert fields == {
        "context": {"shape": [5, 32, 32], "dtype": "uint8"},
        "target_goal": {"shape": [1, 32, 32], "dtype": "uint8"},
        "num_modes": {"shape": [], "dtype": "int16"},
        "mode_map": {"shape": [32, 32], "dtype": "uint8"},
        "file_index": {"shape": [], "dtype": "int32"},
    }
    assert verify_shards(tmp_path / "out") == []  # files.txt and skipped.txt beside the shards are fine


def test_file_index_is_the_line_of_files_txt(tmp_path):
    src, grids = make_source(tmp_path, 3)
    write_scene(src / "sub" / "deep.npz", grids[0])
    import_namo_npz(src, tmp_path / "out")
    names = (tmp_path / "out" / "files.txt").read_text().splitlines()
    assert names == ["scene_000.npz", "scene_001.npz", "scene_002.npz", "sub/deep.npz"]
    samples = all_samples(tmp_path / "out")
    assert samples["file_index"].tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(samples["context"][3], samples["context"][0])  # deep.npz is scene 0 again


def test_mode_fields_are_carried_through_when_present(tmp_path):
    grids = cell_grids(np.random.default_rng(0))
    mode_map = np.zeros((32, 32), np.int64)
    mode_map[3, 4], mode_map[10, 20] = 1, 2
    write_scene(tmp_path / "src" / "a.npz", grids, num_modes=np.int64(2), mode_map=mode_map)
    import_namo_npz(tmp_path / "src", tmp_path / "out")
    sample = all_samples(tmp_path / "out")
    assert sample["num_modes"].tolist() == [2] and sample["num_modes"].dtype == np.int16
    np.testing.assert_array_equal(sample["mode_map"][0], mode_map)


def test_mode_fields_default_to_minus_one_and_zeros_when_absent(tmp_path):
    src, _ = make_source(tmp_path, 2)
    import_namo_npz(src, tmp_path / "out")
    sample = all_samples(tmp_path / "out")
    assert sample["num_modes"].tolist() == [-1, -1]
    assert not sample["mode_map"].any() and sample["mode_map"].shape == (2, 32, 32)


def _corrupt(path, grids):
    path.write_bytes(np.random.default_rng(0).bytes(500))


def _missing_target_goal(path, grids):
    np.savez(path, **dict(zip(NEW_KEYS[:5], upsample(grids[:5], 7), strict=True)))


def _mismatched_shapes(path, grids):
    masks = dict(zip(NEW_KEYS, upsample(grids, 7), strict=True))
    masks["goal_image"] = masks["goal_image"][:200]
    np.savez(path, **masks)


def _empty_target_goal(path, grids):
    grids = grids.copy()
    grids[5] = False
    write_scene(path, grids)


def _non_finite(path, grids):
    masks = upsample(grids, 7).astype(np.float32)
    masks[2, 5, 5] = np.nan
    np.savez(path, **dict(zip(NEW_KEYS, masks, strict=True)))


def _not_2d(path, grids):
    masks = dict(zip(NEW_KEYS, upsample(grids, 7), strict=True))
    masks["robot_image"] = masks["robot_image"][None]
    np.savez(path, **masks)


def _bad_mode_map(path, grids):
    write_scene(path, grids, num_modes=np.int64(1), mode_map=np.zeros((16, 16), np.int64))


@pytest.mark.parametrize(
    ("make_bad", "reason"),
    [
        (_corrupt, "not an npz archive"),
        (_missing_target_goal, "missing key 'target_goal'"),
        (_mismatched_shapes, "different shapes"),
        (_empty_target_goal, "'target_goal' is empty"),
        (_non_finite, "non-finite"),
        (_not_2d, "expected a 2-D mask"),
        (_bad_mode_map, "expected integers of shape (32, 32)"),
    ],
)
def test_bad_file_is_skipped_with_its_reason_and_the_rest_converted(tmp_path, make_bad, reason):
    src, grids = make_source(tmp_path, 4)
    make_bad(src / "bad.npz", grids[0])
    summary = import_namo_npz(src, tmp_path / "out")
    assert summary.converted == 4 and sum(summary.splits.values()) == 4
    assert [name for name, _ in summary.skipped] == ["bad.npz"]
    assert reason in summary.skipped[0][1]
    assert summary.skipped_report == tmp_path / "out" / "skipped.txt"
    assert summary.skipped_report.read_text() == f"bad.npz\t{summary.skipped[0][1]}\n"


def test_skipped_test_file_is_replaced_so_test_is_not_empty(tmp_path):
    src, grids = make_source(tmp_path, 6)
    for i in range(4):
        _corrupt(src / f"bad_{i}.npz", grids[0])
    summary = import_namo_npz(src, tmp_path / "out", test_fraction=0.3, val_fraction=0.2)  # 10 files: 3 test, 2 val, 6 convert
    assert summary.splits == {"train": 1, "val": 2, "test": 3} and len(summary.skipped) == 4


def test_no_convertible_file_raises_with_reasons_and_leaves_no_dataset(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _corrupt(src / "a.npz", None)
    with pytest.raises(DataSourceError, match=r"none of the 1 .npz files.*a.npz: not an npz archive"):
        import_namo_npz(src, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_empty_directory_raises_a_one_line_error(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(DataSourceError, match="no .npz files found") as info:
        import_namo_npz(tmp_path / "src", tmp_path / "out")
    assert "\n" not in str(info.value)


def test_missing_directory_raises(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist"):
        import_namo_npz(tmp_path / "nowhere", tmp_path / "out")


def test_split_counts_add_up_and_the_same_seed_gives_the_same_split(tmp_path):
    src, _ = make_source(tmp_path, 20)
    a = import_namo_npz(src, tmp_path / "a", val_fraction=0.2, test_fraction=0.25, seed=7)
    b = import_namo_npz(src, tmp_path / "b", val_fraction=0.2, test_fraction=0.25, seed=7)
    c = import_namo_npz(src, tmp_path / "c", val_fraction=0.2, test_fraction=0.25, seed=8)
    assert a.splits == {"train": 11, "val": 4, "test": 5} and a.converted == 20
    files = {(out, split): set(load_split(tmp_path / out, split)["file_index"].tolist()) for out in "abc" for split in ("train", "val", "test")}
    assert files["a", "test"] == files["b", "test"] != files["c", "test"]
    assert files["a", "val"] == files["b", "val"] and not files["a", "val"] & (files["a", "train"] | files["a", "test"])


def test_two_files_give_one_test_sample_and_keep_one_for_train(tmp_path):
    src, _ = make_source(tmp_path, 2)
    assert import_namo_npz(src, tmp_path / "out", test_fraction=0.01).splits == {"train": 1, "val": 0, "test": 1}


def test_limit_keeps_a_seeded_subset_and_reports_progress(tmp_path):
    src, _ = make_source(tmp_path, 8)
    calls = []
    summary = import_namo_npz(src, tmp_path / "out", limit=3, progress=lambda done, total: calls.append((done, total)))
    assert summary.num_files == 3 and summary.converted == 3
    assert calls[-1] == (3, 3)


def test_existing_dataset_is_refused_without_overwrite(tmp_path):
    src, _ = make_source(tmp_path, 2)
    import_namo_npz(src, tmp_path / "out")
    with pytest.raises(GenflowError, match="overwrite"):
        import_namo_npz(src, tmp_path / "out")
    assert import_namo_npz(src, tmp_path / "out", overwrite=True).converted == 2


def test_worker_processes_write_the_same_shards(tmp_path):
    src, _ = make_source(tmp_path, 5)
    _corrupt(src / "bad.npz", None)
    a = import_namo_npz(src, tmp_path / "a")
    b = import_namo_npz(src, tmp_path / "b", workers=1)
    assert a.skipped == b.skipped and a.splits == b.splits
    for split in ("train", "val", "test"):
        sa, sb = load_split(tmp_path / "a", split), load_split(tmp_path / "b", split)
        for key in sa:
            np.testing.assert_array_equal(sa[key], sb[key])


# -- the registry --------------------------------------------------------------------------------


def test_an_unknown_import_kind_names_the_known_kinds():
    with pytest.raises(GenflowError, match="unknown data import kind 'faces'.*hands, moving-mnist, namo"):
        get_data_command("import", "faces")


def test_the_registered_namo_importer_passes_its_options_on(tmp_path):
    src, _ = make_source(tmp_path, 2)
    command = get_data_command("import", "namo")
    options = command.options(out=str(tmp_path / "out"), image_size=16)
    result = command.run(options, DataJob(command="test", progress=lambda done, total: None, source=src))
    assert result["converted"].startswith("2 of 2 files")
    assert read_manifest(tmp_path / "out")["attrs"]["image_size"] == 16
