import pytest
import torch

from genflow.errors import ConfigError
from genflow.models import DiT


def tiny_dit(**kwargs) -> DiT:
    sizes = {"in_channels": 3, "out_channels": 1, "image_size": 8, "patch_size": 2, "hidden_size": 32,
             "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}
    return DiT(**{**sizes, **kwargs})


@pytest.mark.parametrize(
    "sizes",
    [
        {},
        {"in_channels": 8, "out_channels": 2, "patch_size": 4},
        {"image_size": 12, "patch_size": 3, "hidden_size": 24, "num_heads": 3, "depth": 1},
        {"patch_size": 1, "out_channels": 3},
    ],
)
def test_output_has_input_size_and_out_channels(sizes):
    model = tiny_dit(**sizes)
    x = torch.randn(2, model.in_channels, model.image_size, model.image_size)
    out = model(x, torch.rand(2))
    assert out.shape == (2, model.out_channels, model.image_size, model.image_size)


def test_adaln_zero_init_outputs_exactly_zero():
    model = tiny_dit()
    out = model(torch.randn(3, 3, 8, 8), torch.rand(3))
    assert torch.equal(out, torch.zeros_like(out))


def test_unpatchify_inverts_patch_order():
    """Token k of the grid (row-major) with its p*p*C values lands back on the k-th image patch."""
    model = tiny_dit(out_channels=2)
    image = torch.randn(1, 2, 8, 8)
    patches = image.reshape(1, 2, 4, 2, 4, 2).permute(0, 2, 4, 3, 5, 1).reshape(1, 16, 8)
    assert torch.equal(model.unpatchify(patches), image)


def test_position_embedding_is_not_saved_and_reloads_identically():
    model = tiny_dit()
    with torch.no_grad():  # non-zero modulation and output layer, so the output depends on positions
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.1)
    assert "position_embedding" not in model.state_dict()
    reloaded = tiny_dit()
    reloaded.load_state_dict(model.state_dict())
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    assert model(x, t).abs().max() > 0
    torch.testing.assert_close(model(x, t), reloaded(x, t), rtol=0, atol=0)


def test_training_reduces_loss_and_reaches_every_parameter():
    """adaLN-Zero starts with only the last layer trainable; a few steps open the gates to all others."""
    torch.manual_seed(0)
    model = tiny_dit()
    x, t = torch.randn(4, 3, 8, 8), torch.rand(4)
    target = x[:, :1].roll(1, dims=-1) * (1 + t[:, None, None, None])  # depends on input and time
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        optimiser.zero_grad()
        loss = ((model(x, t) - target) ** 2).mean()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    no_gradient = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert no_gradient == []


@pytest.mark.parametrize(
    "sizes, option",
    [
        ({"patch_size": 3}, "model.network.patch_size=3 must divide image_size=8"),
        ({"num_heads": 3}, "model.network.num_heads=3 must divide hidden_size=32"),
        ({"hidden_size": 18, "num_heads": 2}, "model.network.hidden_size=18"),
        ({"depth": 0}, "model.network.depth=0"),
    ],
)
def test_sizes_that_do_not_fit_raise_config_error(sizes, option):
    with pytest.raises(ConfigError, match=option):
        tiny_dit(**sizes)


@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (2, 3, 16, 16), (3, 8, 8)])
def test_wrong_input_shape_names_expected_and_actual(shape):
    model = tiny_dit()
    got = ", ".join(map(str, shape))
    with pytest.raises(ValueError, match=rf"expected input of shape \(B, 3, 8, 8\), got \({got}\)"):
        model(torch.randn(shape), torch.rand(shape[0]))


def test_wrong_time_shape_is_rejected():
    with pytest.raises(ValueError, match=r"expected times of shape \(2,\)"):
        tiny_dit()(torch.randn(2, 3, 8, 8), torch.rand(2, 1))


def test_a_condition_vector_steers_the_output_once_trained():
    """Two samples with the same input and time but different conditions learn different targets."""
    torch.manual_seed(0)
    model = tiny_dit(condition_dim=2)
    x, t = torch.randn(1, 3, 8, 8).expand(2, -1, -1, -1), torch.full((2,), 0.5)
    condition = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    target = torch.stack([torch.ones(1, 8, 8), -torch.ones(1, 8, 8)])
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        optimiser.zero_grad()
        loss = ((model(x, t, condition) - target) ** 2).mean()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.1


def test_a_missing_or_unexpected_condition_is_rejected():
    with pytest.raises(ValueError, match=r"expected a condition of shape \(2, 2\), got None"):
        tiny_dit(condition_dim=2)(torch.randn(2, 3, 8, 8), torch.rand(2))
    with pytest.raises(ValueError, match="built without a condition"):
        tiny_dit()(torch.randn(2, 3, 8, 8), torch.rand(2), torch.randn(2, 2))
