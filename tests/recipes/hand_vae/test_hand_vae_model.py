"""Hand pose VAE: KL warm-up, free bits, and an energy that ranks real poses below corrupted ones."""

import numpy as np
import pytest
import torch

from genflow_recipes.hand_vae.skeleton import make_hand_poses
from genflow_recipes.hand_vae.metrics import auroc, corrupt
from genflow_recipes.hand_vae.model import HandPoseVAE, gaussian_kl, kl_weight, kl_with_free_bits


def test_kl_warmup_schedule():
    assert kl_weight(0, 10, 1.0) == 0.0
    assert kl_weight(5, 10, 1.0) == 0.5
    assert kl_weight(2.5, 10, 2.0) == 0.5
    assert kl_weight(10, 10, 1.5) == kl_weight(50, 10, 1.5) == 1.5  # flat after the warm-up
    assert kl_weight(0, 0, 0.7) == 0.7


def test_free_bits_clamp_stops_the_gradient_of_small_dimensions():
    mu = torch.tensor([[0.01, 2.0], [0.02, 2.5]], requires_grad=True)
    logvar = torch.zeros(2, 2)
    kl = gaussian_kl(mu, logvar)
    total = kl_with_free_bits(kl, free_bits=0.5)
    # dimension 0 has KL ~ 1e-4 < 0.5: it counts as 0.5 and gets no gradient; dimension 1 is above
    assert float(total.detach()) == pytest.approx(0.5 + float(kl[:, 1].mean()))
    total.backward()
    assert torch.all(mu.grad[:, 0] == 0) and torch.all(mu.grad[:, 1] != 0)
    assert float(kl_with_free_bits(kl, 0.0)) == pytest.approx(float(kl.mean(0).sum()))


@pytest.mark.parametrize("model_type", ["standard", "so3"])
def test_energy_ranks_clean_poses_below_corrupted_ones_after_training(model_type):
    torch.manual_seed(0)
    poses, _ = make_hand_poses(3000, seed=1)
    x = torch.from_numpy(poses)
    model = HandPoseVAE(model_type, z_dim=8, hidden=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    first = None
    for step in range(300):
        batch = x[torch.randint(0, 2500, (256,), generator=g)]
        terms = model(batch, torch.randn(256, 8, generator=g), beta=min(1.0, step / 50))
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        first = first if first is not None else float(terms["recon_nll"])
    assert float(terms["recon_nll"]) < first  # it learned
    held_out = poses[2500:]
    clean = model.energy(torch.from_numpy(held_out)).numpy()
    rng = np.random.default_rng(0)
    for kind in ("random_joint", "noise_0.2"):
        bad = model.energy(torch.from_numpy(corrupt(held_out, kind, rng)).float()).numpy()
        assert auroc(clean, bad) > 0.85, kind  # chance: 0.5
    one = torch.from_numpy(held_out[:1])
    worse = torch.from_numpy(corrupt(held_out[:1], "random_joint", rng)).float()
    assert float(model.energy(one)) < float(model.energy(worse))
    iwae = model.energy(torch.from_numpy(held_out[:50]), samples=8, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(iwae).all()


def test_unknown_model_type_is_a_clear_error():
    from genflow.errors import ConfigError

    with pytest.raises(ConfigError, match="model_type"):
        HandPoseVAE("quaternion")
