"""Scene files written by `genflow data make namo` load as the source's loader reads them, and import back exactly."""

import numpy as np
import pytest
import torch

from genflow.data.shards import load_split
from genflow_recipes.namo.importer import import_namo_npz
from genflow_recipes.namo.scenes import NPZ_KEYS, make_namo_scenes


def source_transform(mask: np.ndarray) -> torch.Tensor:
    """The source's per-mask transform without its resize: ToTensor (uint8 / 255, floats as they are), then x * 2 - 1."""
    x = torch.from_numpy(mask)
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    return x * 2 - 1


@pytest.fixture(scope="module", params=["many", "one"])
def written(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("namo") / request.param
    make_namo_scenes(out, 2, seed=3, pushes=request.param)
    return out


def test_written_masks_span_minus_one_to_one_in_the_source_loader(written):
    for path in sorted(written.glob("*.npz")):
        with np.load(path) as scene:
            target = source_transform(scene["target_goal"])
            assert target.max().item() == 1.0 and target.min().item() == -1.0
            for key in NPZ_KEYS:
                assert set(source_transform(scene[key]).unique().tolist()) <= {-1.0, 1.0}, key


def test_written_scenes_import_to_their_cell_masks(written, tmp_path):
    import_namo_npz(written, tmp_path / "shards", image_size=32, val_fraction=0, test_fraction=0)
    shards = load_split(tmp_path / "shards", "train")
    for i, index in enumerate(shards["file_index"]):
        with np.load(written / f"scene_{index:06d}.npz") as scene:
            cells = scene["target_goal"][::7, ::7]  # 7-px cells of the 224-px masks
            np.testing.assert_array_equal(shards["target_goal"][i, 0], cells)
            assert shards["num_modes"][i] == scene["num_modes"]
