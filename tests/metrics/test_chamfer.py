import numpy as np
import pytest
import torch

from genflow.errors import GenflowError
from genflow.metrics.chamfer import chamfer_distance, pairwise_chamfer
from genflow.metrics.point_sets import coverage_mmd_1nna


def brute_force_chamfer(x: torch.Tensor, y: torch.Tensor, squared: bool) -> np.ndarray:
    """Float64 numpy reference straight from the definition."""
    x, y = x.double().numpy(), y.double().numpy()
    sq = ((x[:, :, None, :] - y[:, None, :, :]) ** 2).sum(-1)
    dist = sq if squared else np.sqrt(sq)
    return dist.min(axis=2).mean(axis=1) + dist.min(axis=1).mean(axis=1)


def random_sets(b=6, n=50, m=40, d=2, seed=0, offset=0.0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(b, n, d, generator=generator) * 2 - 1
    y = torch.rand(b, m, d, generator=generator) * 2 - 1
    return x * scale + offset, y * scale + offset


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("d", [2, 3])
def test_matches_brute_force_reference(squared, d):
    x, y = random_sets(d=d)
    expected = brute_force_chamfer(x, y, squared)
    np.testing.assert_allclose(chamfer_distance(x, y, squared=squared).numpy(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("squared", [False, True])
def test_stays_accurate_for_nearly_coincident_and_off_centre_sets(squared):
    x, _ = random_sets(seed=1)
    nearly_x = x + 1e-4 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    expected = brute_force_chamfer(x, nearly_x, squared)
    np.testing.assert_allclose(chamfer_distance(x, nearly_x, squared=squared).numpy(), expected, rtol=1e-3, atol=0)
    # pixel-like coordinates far from the origin: naive expansion would cancel catastrophically
    far_x, far_y = random_sets(seed=3, offset=300.0, scale=10.0)
    expected = brute_force_chamfer(far_x, far_y, squared)
    np.testing.assert_allclose(chamfer_distance(far_x, far_y, squared=squared).numpy(), expected, rtol=1e-4)


@pytest.mark.parametrize("squared", [False, True])
def test_identical_sets_have_zero_distance(squared):
    x, _ = random_sets()
    shuffled = x[:, torch.randperm(x.shape[1])]
    assert chamfer_distance(x, shuffled, squared=squared).abs().max().item() == 0.0


def test_is_symmetric():
    x, y = random_sets(seed=4)
    torch.testing.assert_close(chamfer_distance(x, y), chamfer_distance(y, x))


def test_chunked_equals_unchunked():
    x, y = random_sets(b=7, seed=5)
    whole = chamfer_distance(x, y, chunk_size=7)
    torch.testing.assert_close(chamfer_distance(x, y, chunk_size=1), whole)
    torch.testing.assert_close(chamfer_distance(x, y, chunk_size=3), whole)


def test_sets_larger_than_the_memory_budget_are_split_along_points(monkeypatch):
    import genflow.metrics.chamfer as chamfer_module

    x, y = random_sets(b=3, n=64, m=48, seed=6)
    whole = chamfer_distance(x, y)
    monkeypatch.setattr(chamfer_module, "DEFAULT_BLOCK_ENTRIES", 100)  # forces row blocks of 1-2 points
    torch.testing.assert_close(chamfer_distance(x, y), whole)
    differentiable = chamfer_distance(x.clone().requires_grad_(True), y)  # the index-tracking path
    torch.testing.assert_close(differentiable.detach(), whole)


@pytest.mark.parametrize("squared", [False, True])
def test_gradients_match_autograd_through_the_definition(squared):
    x, y = random_sets(b=3, n=30, m=20, seed=9)
    x, y = x.double().requires_grad_(True), y.double().requires_grad_(True)
    chamfer_distance(x, y, squared=squared, chunk_size=2).sum().backward()
    ours = x.grad.clone(), y.grad.clone()
    x.grad = y.grad = None

    sq = (x[:, :, None] - y[:, None]).square().sum(-1)
    dist = sq if squared else sq.sqrt()
    (dist.amin(2).mean(1) + dist.amin(1).mean(1)).sum().backward()
    torch.testing.assert_close(ours[0], x.grad)
    torch.testing.assert_close(ours[1], y.grad)


def test_differentiable_and_metric_paths_agree():
    x, y = random_sets(seed=10)
    with_grad = chamfer_distance(x.clone().requires_grad_(True), y)
    torch.testing.assert_close(with_grad.detach(), chamfer_distance(x, y), atol=1e-6, rtol=1e-5)


def test_gradients_are_finite_even_for_coincident_points():
    x, _ = random_sets(b=2, n=20, m=20)
    x = x.clone().requires_grad_(True)
    y = torch.cat([x.detach()[:, :10], torch.rand(2, 10, 2)], dim=1)
    chamfer_distance(x, y).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_pairwise_diagonal_equals_chamfer_distance():
    x, y = random_sets(b=5, seed=7)
    matrix = pairwise_chamfer(x, y, chunk_size=4)
    assert matrix.shape == (5, 5)
    torch.testing.assert_close(matrix.diagonal(), chamfer_distance(x, y))
    torch.testing.assert_close(matrix[1, 3], chamfer_distance(x[1:2], y[3:4])[0])


def test_pairwise_of_a_set_with_itself_is_symmetric_with_zero_diagonal():
    x, _ = random_sets(b=5, seed=8)
    matrix = pairwise_chamfer(x)
    torch.testing.assert_close(matrix, pairwise_chamfer(x, x))
    assert (matrix.diagonal() == 0).all()
    assert pairwise_chamfer(x[:1]).shape == (1, 1)


def test_bad_shapes_raise_genflow_errors():
    with pytest.raises(GenflowError, match=r"\(B, N, D\)"):
        chamfer_distance(torch.zeros(4, 2), torch.zeros(4, 2))
    with pytest.raises(GenflowError, match="batch size"):
        chamfer_distance(torch.zeros(2, 5, 2), torch.zeros(3, 5, 2))


def blob_clouds(count: int, seed: int, shift: float = 0.0, points: int = 32) -> torch.Tensor:
    """Gaussian blobs whose centres vary across clouds: a distribution over point clouds."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(count, 1, 2, generator=generator) * 2 - 1
    return centres + 0.1 * torch.randn(count, points, 2, generator=generator) + shift


def test_1nna_is_near_half_for_samples_from_the_reference_distribution():
    metrics = coverage_mmd_1nna(blob_clouds(60, seed=0), blob_clouds(60, seed=1))
    assert abs(metrics["1nna_cd"] - 0.5) < 0.15
    assert metrics["cov_cd"] > 0.4


def test_shifted_samples_are_separable_uncovered_and_far():
    refs = blob_clouds(30, seed=1)
    good = coverage_mmd_1nna(blob_clouds(30, seed=0), refs)
    shifted = coverage_mmd_1nna(blob_clouds(30, seed=0, shift=5.0), refs)
    assert shifted["1nna_cd"] == 1.0
    assert shifted["mmd_cd"] > 10 * good["mmd_cd"]
    assert shifted["cov_cd"] < good["cov_cd"]


def test_mode_collapse_shows_as_low_coverage():
    refs = blob_clouds(20, seed=1)
    collapsed = refs[:1].repeat(20, 1, 1)  # every sample copies the same reference
    metrics = coverage_mmd_1nna(collapsed, refs, squared=True)
    assert metrics["cov_cd"] == pytest.approx(1 / 20)
    assert set(metrics) == {"mmd_cd", "cov_cd", "1nna_cd"}
