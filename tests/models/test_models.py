import pytest
import torch

from genflow.errors import GenflowError
from genflow.models import (
    AdaLNMLPVelocityField,
    PointNetEncoder,
    SinusoidalTimeEmbedding,
    TimestepMLP,
    VectorVelocityField,
)
from genflow.objectives import AffinePath, FlowMatchingObjective, make_scheduler


def small_field(**kwargs) -> AdaLNMLPVelocityField:
    sizes = {"point_dim": 2, "cond_dim": 16, "hidden": 32, "depth": 2, "time_dim": 16}
    return AdaLNMLPVelocityField(**{**sizes, **kwargs})


def small_encoder(**kwargs) -> PointNetEncoder:
    return PointNetEncoder(**{"in_dim": 2, "latent_dim": 16, "hidden": (16, 32), **kwargs})


def randomize_zero_init(module: torch.nn.Module) -> None:
    """Give zero-initialised layers random weights, so equivariance tests are not trivially true."""
    with torch.no_grad():
        for parameter in module.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.1)


def test_time_embeddings_have_the_requested_shape_and_separate_nearby_times():
    t = torch.tensor([0.0, 0.001, 0.5, 1.0])
    features = SinusoidalTimeEmbedding(9)(t)
    assert features.shape == (4, 9)
    assert (features[0] - features[1]).abs().max() > 0.1  # the x1000 scaling at work
    assert TimestepMLP(12, frequency_dim=8)(t).shape == (4, 12)


@pytest.mark.parametrize("num_points", [1, 7, 100])
def test_encoder_and_field_accept_any_number_of_points(num_points):
    encoder, field = small_encoder(), small_field()
    points = torch.randn(3, num_points, 2)
    code = encoder(points)
    assert code.shape == (3, 16)
    assert field(points, torch.rand(3), code).shape == (3, num_points, 2)


def test_variational_encoder_returns_mean_and_log_variance():
    mu, logvar = small_encoder(variational=True)(torch.randn(5, 10, 2))
    assert mu.shape == logvar.shape == (5, 16)


def test_encoder_is_invariant_to_point_order():
    encoder = small_encoder()
    points = torch.randn(2, 20, 2)
    torch.testing.assert_close(encoder(points), encoder(points[:, torch.randperm(20)]))


def test_velocity_field_is_equivariant_to_point_order():
    field = small_field()
    randomize_zero_init(field)
    points, t, code = torch.randn(2, 20, 2), torch.rand(2), torch.randn(2, 16)
    order = torch.randperm(20)
    torch.testing.assert_close(field(points[:, order], t, code), field(points, t, code)[:, order])


def test_fields_start_at_zero_velocity():
    points_out = small_field()(torch.randn(2, 5, 2), torch.rand(2), torch.randn(2, 16))
    vectors_out = VectorVelocityField(6, hidden=16, depth=2, time_dim=8)(torch.randn(3, 6), torch.rand(3))
    assert (points_out == 0).all() and (vectors_out == 0).all()


def test_vector_field_shapes_with_and_without_context():
    assert VectorVelocityField(6, hidden=16, depth=2)(torch.randn(3, 6), torch.rand(3)).shape == (3, 6)
    conditioned = VectorVelocityField(6, cond_dim=4, hidden=16, depth=2)
    assert conditioned(torch.randn(3, 6), torch.rand(3), torch.randn(3, 4)).shape == (3, 6)


def test_wrong_shapes_and_missing_context_raise_genflow_errors():
    with pytest.raises(GenflowError, match="point"):
        small_field()(torch.randn(2, 5, 3), torch.rand(2), torch.randn(2, 16))
    with pytest.raises(GenflowError, match="context"):
        small_field()(torch.randn(2, 5, 2), torch.rand(2))
    with pytest.raises(GenflowError, match=r"\(B, N, 2\)"):
        small_encoder()(torch.randn(5, 2))


def flow_matching_loss(encoder, field, objective, clouds, generator):
    x0 = torch.randn(clouds.shape, generator=generator)
    t = objective.sample_time(clouds.shape[0], generator=generator)
    sample = objective.path.sample(x0=x0, x1=clouds, t=t)
    return objective.loss(field(sample.x_t, t, encoder(clouds)), sample, x0=x0, x1=clouds)


def test_every_parameter_learns_despite_zero_init():
    torch.manual_seed(0)
    encoder, field = small_encoder(), small_field()
    objective = FlowMatchingObjective(AffinePath(make_scheduler("condot")))
    parameters = [*encoder.parameters(), *field.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=1e-2)
    clouds, generator = torch.randn(4, 16, 2), torch.Generator().manual_seed(0)

    losses = []
    # adaLN-Zero opens up in stages: output layer, then gates/modulation, then block MLPs and encoder
    for _ in range(4):
        optimizer.zero_grad()
        loss = flow_matching_loss(encoder, field, objective, clouds, generator)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[1] != losses[0]
    named = [*encoder.named_parameters(prefix="encoder"), *field.named_parameters(prefix="field")]
    no_gradient = [name for name, p in named if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_gradient == []


def test_encoder_and_field_overfit_four_point_clouds():
    torch.manual_seed(0)
    encoder, field = small_encoder(), small_field()
    objective = FlowMatchingObjective(AffinePath(make_scheduler("condot")))
    optimizer = torch.optim.Adam([*encoder.parameters(), *field.parameters()], lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    # small rings far apart: most of the loss is learnable only if the code tells the field which ring
    # (with overlapping clouds, the irreducible variance of the conditional velocity dominates)
    angles = torch.linspace(0, 2 * torch.pi, 17)[:16]
    ring = 0.3 * torch.stack([angles.cos(), angles.sin()], dim=-1)
    centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    clouds = ring + centres[:, None]

    def average_loss(batches: int) -> float:
        with torch.no_grad():
            losses = [flow_matching_loss(encoder, field, objective, clouds, generator) for _ in range(batches)]
        return torch.stack(losses).mean().item()

    initial = average_loss(20)
    for _ in range(200):
        optimizer.zero_grad()
        flow_matching_loss(encoder, field, objective, clouds, generator).backward()
        optimizer.step()
    final = average_loss(20)
    assert final < 0.3 * initial, (initial, final)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
def test_encoder_and_field_export_to_onnx_with_a_dynamic_point_axis(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")

    class EncodeThenVelocity(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder, self.field = small_encoder(), small_field()
            randomize_zero_init(self.field)

        def forward(self, cloud, x, t):
            return self.field(x, t, self.encoder(cloud))

    model = EncodeThenVelocity().eval()
    path = tmp_path / "model.onnx"
    example = (torch.randn(2, 10, 2), torch.randn(2, 7, 2), torch.rand(2))
    dynamic_axes = {"cloud": {0: "B", 1: "N"}, "x": {0: "B", 1: "M"}, "t": {0: "B"}}
    torch.onnx.export(model, example, str(path), input_names=list(dynamic_axes), dynamo=False, dynamic_axes=dynamic_axes)

    session = onnxruntime.InferenceSession(str(path))
    cloud, x, t = torch.randn(3, 50, 2), torch.randn(3, 13, 2), torch.rand(3)
    (exported,) = session.run(None, {"cloud": cloud.numpy(), "x": x.numpy(), "t": t.numpy()})
    torch.testing.assert_close(torch.from_numpy(exported), model(cloud, x, t).detach(), atol=1e-5, rtol=1e-4)


def test_plain_adaln_field_starts_at_zero_and_reads_time_and_context():
    from genflow.models import PlainAdaLNMLPVelocityField

    torch.manual_seed(0)
    field = PlainAdaLNMLPVelocityField(point_dim=2, cond_dim=8, widths=(16, 16, 16), time_dim=8, modulation_dim=32)
    x, t, c = torch.randn(2, 5, 2), torch.tensor([0.2, 0.7]), torch.randn(2, 8)
    assert field(x, t, c).abs().max() == 0  # only the output layer starts at zero
    randomize_zero_init(field)
    out = field(x, t, c)
    assert out.shape == (2, 5, 2)
    assert not torch.allclose(out, field(x, t.flip(0), c)) and not torch.allclose(out, field(x, t, c.flip(0)))
    perm = torch.randperm(5)
    assert torch.allclose(field(x[:, perm], t, c), out[:, perm], atol=1e-6)  # per-point: permutation-equivariant


def test_pointnet_source_options_add_layer_norms_and_a_linear_head():
    plain, source = small_encoder(), small_encoder(layer_norm=True, activation="silu", head="linear")
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in plain.modules())
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in source.modules()) == 2
    assert len(source.head) == 1 and source(torch.randn(3, 9, 2)).shape == (3, 16)
