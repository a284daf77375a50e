"""Tests for genflow_recipes.mmnist_wm.model: sizes, output shape, temporal masks and action conditioning."""

import pytest
import torch

from genflow.errors import ConfigError
from genflow_recipes.mmnist_wm.model import SimpleVideoTransformer, temporal_attention_mask

FRAMES, SIDE, LEVELS = 4, 8, 16


def tiny_model(**kwargs) -> SimpleVideoTransformer:
    torch.manual_seed(0)
    sizes = {"num_frames": FRAMES, "height": SIDE, "width": SIDE, "embed_dim": 16, "num_layers": 1, "num_heads": 2}
    return SimpleVideoTransformer(**{**sizes, **kwargs}).eval()


def random_inputs(batch: int = 2, frames: int = FRAMES, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, LEVELS + 1, (batch, frames, SIDE, SIDE), generator=g)  # levels and mask ids
    actions = torch.rand(batch, frames, 2, generator=g) * 2 - 1
    return tokens, actions


def with_frame_changed(tokens: torch.Tensor, frame: int) -> torch.Tensor:
    changed = tokens.clone()
    changed[:, frame] = (changed[:, frame] + 1) % (LEVELS + 1)
    return changed


def num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_default_model_at_patch_1_has_667664_parameters():
    assert num_parameters(SimpleVideoTransformer()) == 667_664


def test_full_model_d384_6_layers_has_about_14_6m_parameters():
    count = num_parameters(SimpleVideoTransformer(embed_dim=384, num_layers=6, num_heads=6))
    assert abs(count - 14.6e6) / 14.6e6 < 0.02, count


@pytest.mark.parametrize("frames", [FRAMES, 2])
def test_logits_have_shape_batch_frames_height_width_levels(frames):
    tokens, actions = random_inputs(batch=3, frames=frames)
    logits = tiny_model(num_layers=2)(tokens, actions)
    assert logits.shape == (3, frames, SIDE, SIDE, LEVELS) and logits.dtype == torch.float32


@torch.no_grad()
@pytest.mark.parametrize("num_layers,patch_size,attention", [(1, 1, "factorized"), (2, 1, "factorized"), (2, 4, "factorized"),
                                                             (2, 2, "joint")])
def test_causal_mask_keeps_past_logits_independent_of_future_frames(num_layers, patch_size, attention):
    model = tiny_model(num_layers=num_layers, patch_size=patch_size, attention=attention)
    tokens, actions = random_inputs()
    before = model(tokens, actions, "causal")
    after = model(with_frame_changed(tokens, 2), actions, "causal")
    torch.testing.assert_close(after[:, :2], before[:, :2], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(after[:, 2], before[:, 2])
    assert not torch.allclose(after[:, 3], before[:, 3])  # a later frame sees the change


@torch.no_grad()
@pytest.mark.parametrize("attention", ["factorized", "joint"])
def test_identity_mask_makes_each_frame_ignore_all_others(attention):
    model = tiny_model(num_layers=2, patch_size=2, attention=attention)
    tokens, actions = random_inputs()
    before = model(tokens, actions, "identity")
    after = model(with_frame_changed(tokens, 1), actions, "identity")
    for frame in (0, 2, 3):
        torch.testing.assert_close(after[:, frame], before[:, frame], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(after[:, 1], before[:, 1])


@torch.no_grad()
def test_full_mask_lets_a_future_frame_change_past_logits():
    model = tiny_model()
    tokens, actions = random_inputs()
    before = model(tokens, actions, "full")
    after = model(with_frame_changed(tokens, FRAMES - 1), actions, "full")
    assert not torch.allclose(after[:, 0], before[:, 0])


@torch.no_grad()
def test_actions_condition_the_logits():
    """Changing frame 1's action changes frame 1 (and later frames), not frame 0, under the causal mask."""
    model = tiny_model()
    tokens, actions = random_inputs()
    other = actions.clone()
    other[:, 1] = -other[:, 1] + 0.5
    before, after = model(tokens, actions), model(tokens, other)
    torch.testing.assert_close(after[:, 0], before[:, 0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(after[:, 1], before[:, 1])
    assert not torch.allclose(after[:, 2], before[:, 2])


@pytest.mark.parametrize("shape", [(1, 2, SIDE, SIDE - 1), (1, 2, SIDE + 1, SIDE + 1), (1, FRAMES + 1, SIDE, SIDE)])
def test_wrong_frame_size_or_too_many_frames_raises_config_error(shape):
    model = tiny_model()
    with pytest.raises(ConfigError, match="model expects"):
        model(torch.zeros(shape, dtype=torch.long), torch.zeros(*shape[:2], 2))


def test_patch_model_predicts_every_token_with_16x_fewer_positions():
    model = tiny_model(patch_size=4)
    tokens, actions = random_inputs(batch=3)
    assert model(tokens, actions).shape == (3, FRAMES, SIDE, SIDE, LEVELS)
    assert model.spatial_position.shape[0] == (SIDE // 4) ** 2


@torch.no_grad()
def test_a_token_changes_only_its_own_patch_at_the_input_and_logits_keep_their_place():
    """The patch embedding sees every token of its patch (lossless), and logits come back in token order."""
    model = tiny_model(patch_size=2, num_layers=0)  # no attention: each patch's logits depend on that patch alone
    tokens, actions = random_inputs()
    before = model(tokens, actions, "identity")
    changed = tokens.clone()
    changed[:, 0, 3, 5] = (changed[:, 0, 3, 5] + 1) % (LEVELS + 1)
    after = model(changed, actions, "identity")
    moved = (after - before).abs().amax(dim=(0, 4)) > 1e-6  # (T, H, W)
    expected = torch.zeros(FRAMES, SIDE, SIDE, dtype=torch.bool)
    expected[0, 2:4, 4:6] = True  # the 2 x 2 patch holding (3, 5)
    assert torch.equal(moved, expected)


@pytest.mark.parametrize("patch_size", [0, 3])
def test_patch_size_must_divide_the_frame(patch_size):
    with pytest.raises(ConfigError, match="model.patch_size"):
        tiny_model(patch_size=patch_size)


def test_unknown_attention_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="model.attention"):
        tiny_model(attention="axial")


def test_embed_dim_not_divisible_by_heads_raises_config_error():
    with pytest.raises(ConfigError, match="divisible"):
        tiny_model(embed_dim=18, num_heads=4)


def test_unknown_temporal_mask_raises_config_error():
    with pytest.raises(ConfigError, match="temporal mask"):
        temporal_attention_mask("sideways", 3)


def test_temporal_mask_matrices():
    """True where row frame may attend to column frame: lower triangle, diagonal, or everything (None)."""
    assert torch.equal(temporal_attention_mask("causal", 3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    assert torch.equal(temporal_attention_mask("identity", 3), torch.eye(3, dtype=torch.bool))
    assert temporal_attention_mask("full", 3) is None


@pytest.mark.parametrize("patch_size,attention", [(1, "factorized"), (2, "factorized"), (2, "joint")])
def test_cached_past_frames_give_the_same_future_logits_as_the_full_causal_pass(patch_size, attention):
    torch.manual_seed(0)
    model = SimpleVideoTransformer(num_frames=6, height=8, width=8, embed_dim=16, num_layers=2, num_heads=2,
                                   patch_size=patch_size, attention=attention).eval()
    tokens, actions = torch.randint(0, 17, (2, 6, 8, 8)), torch.randn(2, 6, 2)
    with torch.no_grad():
        full = model(tokens, actions, "causal")
        past = model.encode_past(tokens[:, :4], actions[:, :4])
        cached = model(tokens[:, 4:], actions[:, 4:], "causal", past=past)
        alone = model(tokens[:, 4:], actions[:, 4:], "identity", first_frame=4)
    torch.testing.assert_close(cached, full[:, 4:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, model(tokens, actions, "identity")[:, 4:], atol=1e-5, rtol=1e-5)


# --- copilot4D's model: tied head, its vocabulary, fixed temporal sinusoids, dropout, init --------------
COPILOT4D = {"head": "tied", "temporal_position": "sinusoid", "dropout": 0.1, "init": "copilot4d"}


def test_copilot4d_fast_and_full_settings_have_the_source_parameter_counts():
    assert num_parameters(SimpleVideoTransformer(vocab_size=17, **COPILOT4D)) == 663_168
    assert num_parameters(SimpleVideoTransformer(embed_dim=384, num_layers=6, num_heads=6, **COPILOT4D)) == 14_601_216


@torch.no_grad()
def test_tied_head_scores_every_embedding_row_and_the_mask_id_reads_the_last_row():
    model = tiny_model(vocab_size=17, **COPILOT4D)
    assert model.token_embedding.weight.shape[0] == 18 and model.num_classes == 18
    tokens, actions = random_inputs()
    tokens[:, 2:] = LEVELS  # genflow's mask id
    logits = model(tokens, actions)
    assert logits.shape == (2, FRAMES, SIDE, SIDE, 18)
    # logits are the normalised features times the table: changing a row moves its class only
    model.token_embedding.weight[16] += 1.0  # the unused row: only class 16 (never an input here) changes
    changed = model(tokens, actions)
    torch.testing.assert_close(changed[..., :16], logits[..., :16])
    assert not torch.allclose(changed[..., 16], logits[..., 16])
    model.token_embedding.weight[17] += 1.0  # the mask row: masked inputs change every class
    assert not torch.allclose(model(tokens, actions)[:, 2:, ..., :16], logits[:, 2:, ..., :16])


def test_sinusoid_temporal_positions_are_fixed_sines_then_cosines():
    model = tiny_model(**COPILOT4D)
    assert "temporal_position" not in dict(model.named_parameters()) and "temporal_position" not in model.state_dict()
    table = model.temporal_position
    half = table.shape[1] // 2
    torch.testing.assert_close(table[0], torch.cat([torch.zeros(half), torch.ones(half)]))
    torch.testing.assert_close(table[3, 0], torch.sin(torch.tensor(3.0)))  # frequency 1 first
    torch.testing.assert_close(table[3, half - 1], torch.sin(torch.tensor(3e-4)))  # 10000^-1 last


def test_dropout_acts_in_training_only():
    model = tiny_model(dropout=0.5)
    tokens, actions = random_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, actions), model(tokens, actions))
        model.train()
        assert not torch.allclose(model(tokens, actions), model(tokens, actions))


def test_copilot4d_init_starts_spatial_positions_small_and_biases_at_zero():
    model = SimpleVideoTransformer(init="copilot4d")
    assert abs(model.spatial_position.std().item() - 0.02) < 0.002
    assert all(float(m.bias.detach().abs().max()) == 0 for m in model.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None)


@pytest.mark.parametrize("bad", [{"head": "tied", "patch_size": 2}, {"vocab_size": 17, "patch_size": 2}, {"head": "shared"},
                                 {"temporal_position": "rotary"}, {"vocab_size": 8}])
def test_invalid_copilot4d_options_are_clear_errors(bad):
    with pytest.raises(ConfigError, match="model."):
        tiny_model(**bad)


# --- the autoregressive patch head --------------------------------------------------------------------
@torch.no_grad()
def test_autoregressive_patch_head_reads_only_the_earlier_cells_of_each_patch():
    model = tiny_model(patch_size=4, patch_head="autoregressive")
    torch.nn.init.normal_(model.cell_decoder.out.weight)  # the output starts at zero: make the correction visible
    tokens, actions = random_inputs()
    targets = torch.randint(0, LEVELS, tokens.shape, generator=torch.Generator().manual_seed(1))
    before = model(tokens, actions, targets=targets)
    changed = targets.clone()
    changed[:, :, 0, 1] = (changed[:, :, 0, 1] + 1) % LEVELS  # cell 1 of patch (0, 0)
    after = model(tokens, actions, targets=changed)
    moved = (after - before).abs().amax(dim=(0, 1, 4)) > 0  # (H, W)
    expected = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    expected[:4, :4] = True
    expected[0, :2] = False  # cells 0 and 1 read only cells before them
    assert torch.equal(moved, expected)


def test_autoregressive_patch_head_needs_targets_and_patches():
    model = tiny_model(patch_size=4, patch_head="autoregressive")
    tokens, actions = random_inputs()
    with pytest.raises(ConfigError, match="target tokens"):
        model(tokens, actions)
    with pytest.raises(ConfigError, match="patch_head"):
        tiny_model(patch_head="autoregressive")


def test_patch_maskgit_fills_every_masked_patch_and_keeps_the_given_ones():
    from genflow_recipes.mmnist_wm.patch_head import maskgit_decode_patches

    patches = torch.full((2, 6, 4), 16)
    patches[:, :2] = 3  # given
    masked = torch.ones(2, 6, dtype=torch.bool)
    masked[:, :2] = False
    calls = []

    def sample_fn(current, still):
        calls.append(int(still.sum()))
        drawn = torch.arange(6).repeat(2, 1)[..., None].expand(2, 6, 4) + 5
        return drawn, -torch.arange(6, dtype=torch.float32).repeat(2, 1)

    out = maskgit_decode_patches(sample_fn, patches, masked, steps=3, confidence_noise=0.0, generator=None)
    assert (out[:, :2] == 3).all() and torch.equal(out[:, 2:, 0], torch.tensor([[7, 8, 9, 10]] * 2))
    assert calls[0] == 8 and calls == sorted(calls, reverse=True) and len(calls) <= 3
