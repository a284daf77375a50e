"""Distribution metrics for generated point clouds: MMD, COV and 1-NNA under the Chamfer distance.

Definitions follow PointFlow (Yang et al. 2019), with ``CD`` the Chamfer distance of
:mod:`genflow.metrics.chamfer` (``chamfer_sq`` when ``squared=True``, as in PointFlow):

- ``mmd_cd`` (minimum matching distance, lower is better): for each reference, the CD to its nearest
  sample, averaged over references.
- ``cov_cd`` (coverage, higher is better): match every sample to its nearest reference; the fraction
  of references matched by at least one sample.
- ``1nna_cd`` (1-nearest-neighbour accuracy, 0.5 is ideal): pool samples and references, classify each
  set by the label of its nearest neighbour in the pool (itself excluded), and report the accuracy.
  Near 1.0 means the two sets are easy to tell apart; well below 0.5 means samples copy references.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genflow.metrics.chamfer import pairwise_chamfer

__all__ = ["coverage_mmd_1nna", "one_nn_accuracy"]


def one_nn_accuracy(samples_to_samples: Tensor, samples_to_refs: Tensor, refs_to_refs: Tensor) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy from precomputed distance matrices.

    Args:
        samples_to_samples: Distances, shape ``(S, S)``.
        samples_to_refs: Distances, shape ``(S, R)``.
        refs_to_refs: Distances, shape ``(R, R)``.

    Returns:
        Fraction of the ``S + R`` sets whose nearest other set has the same label.
    """
    num_samples, num_refs = samples_to_refs.shape
    distances = torch.cat(
        [
            torch.cat([samples_to_samples, samples_to_refs], dim=1),
            torch.cat([samples_to_refs.T, refs_to_refs], dim=1),
        ]
    ).clone()
    distances.fill_diagonal_(float("inf"))  # leave-one-out: a set is not its own neighbour
    is_sample = torch.cat([torch.ones(num_samples, dtype=torch.bool), torch.zeros(num_refs, dtype=torch.bool)])
    is_sample = is_sample.to(distances.device)
    predicted = is_sample[distances.argmin(dim=1)]
    return (predicted == is_sample).float().mean().item()


@torch.no_grad()
def coverage_mmd_1nna(
    samples: Tensor, refs: Tensor, *, squared: bool = False, chunk_size: int | None = None
) -> dict[str, float]:
    """MMD, COV and 1-NNA of generated point clouds against reference clouds (definitions above).

    Args:
        samples: Generated clouds, shape ``(S, N, D)``.
        refs: Reference clouds, shape ``(R, M, D)``.
        squared: Use ``chamfer_sq`` (PointFlow) instead of ``chamfer_l2``.
        chunk_size: Passed to :func:`pairwise_chamfer` to bound memory.

    Returns:
        ``{"mmd_cd": float, "cov_cd": float, "1nna_cd": float}``.
    """
    samples_to_refs = pairwise_chamfer(samples, refs, squared=squared, chunk_size=chunk_size)  # (S, R)
    samples_to_samples = pairwise_chamfer(samples, squared=squared, chunk_size=chunk_size)
    refs_to_refs = pairwise_chamfer(refs, squared=squared, chunk_size=chunk_size)

    mmd = samples_to_refs.amin(dim=0).mean().item()
    matched_refs = samples_to_refs.argmin(dim=1).unique()
    coverage = matched_refs.numel() / refs.shape[0]
    accuracy = one_nn_accuracy(samples_to_samples, samples_to_refs, refs_to_refs)
    return {"mmd_cd": mmd, "cov_cd": coverage, "1nna_cd": accuracy}
