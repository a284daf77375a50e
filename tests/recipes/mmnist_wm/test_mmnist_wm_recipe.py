"""mmnist-wm end to end on a few generated sequences with a tiny video transformer."""

import json

import numpy as np
import pytest
import torch

from genflow.cli import main
from genflow.config import load_config
from genflow.engine.metrics_log import read_metrics
from genflow.engine.recipe import StepContext, get_recipe
from genflow.engine.run_dir import load_run
from genflow_recipes.mmnist_wm.recipe import ablated_actions

FRAMES, PAST = 6, 3
TINY = [f"model.num_frames={FRAMES}", f"data.num_past={PAST}", "model.embed_dim=32", "model.num_layers=1", "model.num_heads=2",
        "train.batch_size=4", "train.lr=0.003", "train.log_every=1", "sampling.steps=3", "eval.num_sequences=4",
        "data.val_sequences=8"]


@pytest.fixture(scope="module")
def mmnist_data(tmp_path_factory, tiny_mnist_npz):
    out = tmp_path_factory.mktemp("mmnist") / "data"
    assert main(["data", "make-moving-mnist", "--sequences", "24", "--val-sequences", "8", "--test-sequences", "8", "--frames", str(FRAMES),
                 "--out", str(out), "--source", str(tiny_mnist_npz)]) == 0
    return out


def _train(runs, data, name, *extra, recipe="mmnist-wm"):
    code = main(["train", recipe, "--runs-dir", str(runs), "--name", name, "--no-progress", f"data.data_dir={data}", *TINY, *extra])
    assert code == 0
    return runs / "mmnist-wm" / name


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory, mmnist_data):
    return _train(tmp_path_factory.mktemp("runs"), mmnist_data, "fast", "train.epochs=4")


def test_training_validates_on_val_and_never_reads_the_test_split(tmp_path, mmnist_data, opened_splits):
    _train(tmp_path, mmnist_data, "spy", "train.epochs=1")
    assert "val" in opened_splits and "test" not in opened_splits


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, mmnist_data):
    tasks = ["objective.tasks.future=0.5", "objective.tasks.joint=0.4", "objective.tasks.individual=0.1"]
    return _train(tmp_path_factory.mktemp("runs"), mmnist_data, "full", "train.epochs=1", *tasks)


def test_loss_goes_down_on_a_fixed_batch(mmnist_data):
    cls = get_recipe("mmnist-wm")
    recipe = cls(load_config(cls.config_class, cls.default_config, [f"data.data_dir={mmnist_data}", *TINY]))
    train, _ = recipe.build_datasets()
    batch = {k: torch.stack([train[i][k] for i in range(4)]) for k in ("tokens", "actions")}
    torch.manual_seed(0)
    model = recipe.build_model()
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    losses = []
    for step in range(30):
        ctx = StepContext(step=step, micro_step=step, epoch=0, device=torch.device("cpu"), generator=torch.Generator().manual_seed(step))
        loss, _ = recipe.compute_loss(model, batch, ctx)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_training_logs_validation_and_quick_video_metrics(fast_run):
    val = [r for r in read_metrics(fast_run) if r["kind"] == "val"]
    assert len(val) == 4 and all({"val_loss", "val_mse", "val_ssim", "val_expected_mse", "val_action_shift_mse", "val_future_ce",
                                  "val_ink_recall", "val_ink_precision"} <= set(r) for r in val)
    assert val[-1]["val_loss"] < val[0]["val_loss"]
    assert (fast_run / "samples.png").is_file() and (fast_run / "checkpoints" / "best.pt").is_file()


def test_source_argument_names_work(mmnist_data):
    cls = get_recipe("train_mnist_fast")
    config = load_config(cls.config_class, cls.default_config, ["learning_rate=0.001", "batch_size=8", "epochs=3",
                                                                "num_past_frames=5", "num_sequences=100"])
    assert (config.train.lr, config.train.batch_size, config.train.epochs) == (0.001, 8, 3)
    assert (config.data.num_past, config.data.train_sequences) == (5, 100)


@pytest.mark.parametrize("name,parameters,classes", [("mmnist_wm_fast", 663_168, 18), ("mmnist_wm_full", 14_601_216, 17)])
def test_source_configs_build_copilot4d_models_with_its_parameter_counts(name, parameters, classes):
    cls = get_recipe("mmnist-wm")
    config = load_config(cls.config_class, cls.default_config.with_name(f"{name}.yaml"))
    model = cls(config).build_model()
    assert sum(p.numel() for p in model.parameters()) == parameters and model.num_classes == classes
    assert config.data.preprocessing == "copilot4d"


def test_full_config_is_copilot4d_full_mode():
    cls = get_recipe("mmnist-wm")
    config = load_config(cls.config_class, cls.default_config.with_name("mmnist_wm_full.yaml"))
    o, t = config.objective, config.train
    assert (o.tasks.future, o.tasks.joint, o.tasks.individual) == (0.5, 0.4, 0.1)
    assert (o.mask_schedule, o.ratio_per, o.mask_count, o.random_tokens, o.joint_frames, o.joint_attention, o.loss_on,
            o.label_smoothing) == ("cosine", "batch", "exact", 0.05, "all", "full", "all", 0.1)
    assert (t.lr, tuple(t.betas), t.batch_size, t.grad_accum_steps, t.lr_schedule, t.ema_decay) == (1e-4, (0.9, 0.95), 1, 4, "constant", 0.9999)


@pytest.fixture(scope="module")
def copilot4d_data(tmp_path_factory, tiny_mnist_npz):
    out = tmp_path_factory.mktemp("mmnist-c4d") / "data"
    assert main(["data", "make-moving-mnist", "--sequences", "8", "--val-sequences", "4", "--test-sequences", "4", "--frames", str(FRAMES),
                 "--out", str(out), "--source", str(tiny_mnist_npz), "--preprocessing", "copilot4d"]) == 0
    return out


def test_source_full_config_trains_on_copilot4d_tokens_and_logs_its_validation_loss(cli, capsys, tmp_path, copilot4d_data):
    run = _train(tmp_path, copilot4d_data, "c4d-full", "--config", "mmnist_wm_full", "train.epochs=1", "train.batch_size=2",
                 "train.grad_accum_steps=2", "data.val_sequences=4", "train.precision=fp32")
    val = [r for r in read_metrics(run) if r["kind"] == "val"]
    assert val and 0 < val[-1]["val_future_ce"] < 10 and 0 <= val[-1]["val_ink_recall"] <= 1
    capsys.readouterr()  # the training's output
    code, out, _ = cli("eval", "video", run, "--json", "--limit", "4", "--steps", "2")
    assert code == 0 and json.loads(out)["model_ink_recall"] >= 0


def test_a_config_refuses_shards_made_with_other_preprocessing(cli, tmp_path, mmnist_data):
    code, _, err = cli("train", "mmnist-wm", "--config", "mmnist_wm_fast", "--runs-dir", tmp_path, "--no-progress",
                       f"data.data_dir={mmnist_data}", *TINY)
    assert code != 0 and "preprocessing=area" in err and "Traceback" not in err


def test_sample_writes_strips_and_gif_and_keeps_the_past(cli, fast_run, mmnist_data, tmp_path):
    out = tmp_path / "strip.png"
    code, stdout, _ = cli("sample", fast_run, "--n", "2", "--past", PAST, "--future", FRAMES - PAST, "--steps", "2",
                          "--temperature", "0.5", "--out", out)
    assert code == 0 and out.is_file() and out.with_suffix(".gif").is_file()
    arrays = np.load(out.with_suffix(".npz"))
    assert arrays["tokens"].shape == (2, FRAMES, 32, 32) and arrays["tokens"].max() < 16
    np.testing.assert_array_equal(arrays["tokens"][:, :PAST], arrays["true_tokens"][:, :PAST])


def test_unconditional_sampling_generates_whole_sequences(cli, full_run, tmp_path):
    out = tmp_path / "uncond.png"
    code, _, _ = cli("sample", full_run, "--n", "2", "--unconditional", "--steps", "2", "--out", out)
    assert code == 0
    tokens = np.load(out.with_suffix(".npz"))["tokens"]
    assert tokens.shape == (2, FRAMES, 32, 32) and tokens.max() < 16


def test_eval_video_reports_every_horizon_and_the_baselines(cli, fast_run):
    code, out, _ = cli("eval", "video", fast_run, "--json", "--limit", "4", "--steps", "2")
    assert code == 0
    result = json.loads(out)
    for name in ("model", "copy_last", "constant_velocity", "action_shift", "all_black"):
        for metric in ("mse_32", "psnr_32", "ssim_32", "mse_64", "psnr_64", "ssim_64", "pixel_mse_32", "global_ssim_32",
                       "ink_recall", "ink_precision"):
            assert len(result["per_horizon"][name][metric]) == FRAMES - PAST
    assert result["all_black_mse_32"] > 0 and isinstance(result["beats_constant_velocity"], bool)
    assert result["all_black_pixel_mse_32"] == pytest.approx(result["all_black_mse_32"] / 32**2)
    assert result["all_black_ink_recall"] == 0 and result["copy_last_ink_recall"] > 0  # black inks nothing
    assert isinstance(result["beats_all_black_global_ssim"], bool)
    assert (fast_run / "eval" / "video-k2.png").is_file() and (fast_run / "eval" / "video-k2.md").is_file()


def test_eval_video_reports_expected_intensity_decoding_next_to_maskgit(cli, fast_run):
    code, out, _ = cli("eval", "video", fast_run, "--json", "--limit", "4", "--steps", "1", "--temperature", "0")
    result = json.loads(out)
    assert code == 0 and len(result["per_horizon"]["model_expected"]["mse_32"]) == FRAMES - PAST
    assert isinstance(result["expected_beats_all_black"], bool)
    assert result["model_expected_mse_32"] != result["model_mse_32"]  # a blur, not the decoded levels


def test_expected_intensity_is_the_probability_weighted_level_of_one_pass(fast_run, mmnist_data):
    run = load_run(fast_run)
    recipe, model = run.recipe, run.model
    data = recipe._test_sequences("val", 2)
    tokens, actions = torch.from_numpy(data["tokens"]), torch.from_numpy(data["actions"])
    expected = recipe.predict(model, tokens, actions, num_past=PAST, steps=1, order="joint").expected
    masked = tokens.long().clone()
    masked[:, PAST:] = 16
    with torch.no_grad():
        probs = model(masked, actions, "causal").softmax(-1)[:, PAST:]
    torch.testing.assert_close(expected, (probs * torch.arange(16) / 15).sum(-1), rtol=1e-4, atol=1e-5)


def test_autoregressive_decoding_generates_frame_by_frame_from_the_past_only(fast_run):
    run = load_run(fast_run)
    recipe, model = run.recipe, run.model
    data = recipe._test_sequences("val", 2)
    tokens, actions = torch.from_numpy(data["tokens"]), torch.from_numpy(data["actions"])
    scrambled = tokens.clone()
    scrambled[:, PAST:] = torch.randint(0, 16, scrambled[:, PAST:].shape)  # the true future must not matter
    first = recipe.predict(model, tokens, actions, num_past=PAST, steps=2, order="autoregressive")
    second = recipe.predict(model, scrambled, actions, num_past=PAST, steps=2, order="autoregressive")
    torch.testing.assert_close(first.tokens, second.tokens)
    assert torch.equal(first.tokens[:, :PAST], tokens[:, :PAST]) and first.tokens.max() < 16
    joint = recipe.predict(model, tokens, actions, num_past=PAST, steps=2, order="joint")
    # the first future frame sees only the true past in both orders
    torch.testing.assert_close(first.expected[:, 0], joint.expected[:, 0], rtol=1e-4, atol=1e-5)
    assert first.expected.shape == (2, FRAMES - PAST, 32, 32)


def test_unknown_decoding_order_is_a_clear_error(cli, fast_run):
    code, _, err = cli("eval", "video", fast_run, "--limit", "2", "sampling.order=backwards")
    assert code == 2 and "sampling.order" in err and "autoregressive" in err


@pytest.mark.parametrize("kind", ["shuffled", "zero"])
def test_action_ablation_changes_what_the_model_gets_and_baselines_keep_the_true_actions(cli, fast_run, kind):
    results = []
    for actions in ("true", kind):
        code, out, _ = cli("eval", "video", fast_run, "--json", "--limit", "8", "--steps", "1", "--temperature", "0",
                           "--actions", actions)
        assert code == 0
        results.append(json.loads(out))
    true, ablated = results
    assert ablated["actions"] == kind and true["action_shift_mse_32"] == ablated["action_shift_mse_32"]
    assert true["model_expected_mse_32"] != ablated["model_expected_mse_32"]


def test_shuffled_actions_give_no_sequence_its_own():
    actions = np.arange(7 * 3 * 2, dtype=np.float32).reshape(7, 3, 2)
    for seed in range(5):
        shuffled = ablated_actions(actions, "shuffled", seed)
        assert sorted(map(tuple, shuffled[:, 0])) == sorted(map(tuple, actions[:, 0]))  # a permutation
        assert not np.any(np.all(shuffled == actions, axis=(1, 2)))  # nobody keeps their own


def test_unknown_action_ablation_is_a_clear_error(cli, fast_run):
    code, _, err = cli("eval", "video", fast_run, "--limit", "2", "--actions", "random")
    assert code == 2 and "'actions'" in err and "shuffled" in err and "Traceback" not in err


def test_guidance_needs_the_unconditional_task(cli, fast_run, full_run, tmp_path):
    code, _, err = cli("sample", fast_run, "--guidance", "2", "--out", tmp_path / "g.png")
    assert code == 2 and "objective.tasks.individual" in err and "Traceback" not in err
    code, _, _ = cli("sample", full_run, "--guidance", "2", "--steps", "2", "--n", "1", "--out", tmp_path / "g.png")
    assert code == 0


def test_frame_size_mismatch_is_a_clear_error(cli, tmp_path, mmnist_data):
    code, _, err = cli("train", "mmnist-wm", f"data.data_dir={mmnist_data}", *TINY, "model.frame_size=16", "--runs-dir", tmp_path)
    assert code == 2 and "model.frame_size" in err


def test_missing_dataset_is_a_clear_error(cli, tmp_path):
    code, _, err = cli("train", "mmnist-wm", f"data.data_dir={tmp_path / 'nowhere'}", "--runs-dir", tmp_path)
    assert code == 2 and "nowhere" in err


def test_resume_continues_from_the_last_checkpoint(cli, tmp_path, mmnist_data):
    run_dir = _train(tmp_path, mmnist_data, "r", "train.epochs=1")
    code, _, _ = cli("train", "mmnist-wm", "train.epochs=2", "--resume", run_dir, "--runs-dir", tmp_path, "--no-progress")
    assert code == 0
    assert [r["epoch"] for r in read_metrics(run_dir) if r["kind"] == "val"] == [1, 2]


def test_export_safetensors_and_onnx(cli, fast_run, tmp_path):
    pytest.importorskip("onnxruntime")
    code, out, _ = cli("export", fast_run, "--format", "onnx", "--out", tmp_path)
    assert code == 0 and (tmp_path / "video_transformer.onnx").is_file() and "max |onnx - torch|" in out
    code, _, _ = cli("export", fast_run, "--out", tmp_path / "st")
    assert code == 0 and any((tmp_path / "st").glob("*.safetensors"))
    assert load_run(fast_run).config.model.embed_dim == 32


# --- a copilot4D checkpoint as a genflow run --------------------------------------------------------
@pytest.fixture(scope="module")
def copilot4d_data20(tmp_path_factory, tiny_mnist_npz):
    out = tmp_path_factory.mktemp("mmnist-c4d20") / "data"
    assert main(["data", "make-moving-mnist", "--sequences", "4", "--val-sequences", "2", "--test-sequences", "2", "--frames", "20",
                 "--out", str(out), "--source", str(tiny_mnist_npz), "--preprocessing", "copilot4d"]) == 0
    return out


def _copilot4d_checkpoint(path, *, action_dim: int = 2):
    """A file in the layout copilot4D's fast script saves (its tensor names, tied head, no settings), written
    from a genflow model with the source's options: the test needs no copy of the source."""
    import argparse

    from genflow_recipes.mmnist_wm.copilot4d_import import copilot4d_parameter_name
    from genflow_recipes.mmnist_wm.model import SimpleVideoTransformer

    torch.manual_seed(3)
    model = SimpleVideoTransformer(embed_dim=16, num_layers=1, num_heads=2, action_dim=action_dim, vocab_size=17, head="tied",
                                   temporal_position="sinusoid", dropout=0.1, init="copilot4d").eval()
    tensors = {copilot4d_parameter_name(k): v.clone() for k, v in model.state_dict().items()}
    tensors["spatial_pos"] = tensors["spatial_pos"].reshape(1, 1, 32 * 32, 16)
    tensors["output_proj.weight"] = tensors["token_embed.weight"]
    torch.save({"epoch": 11, "model_state_dict": tensors, "optimizer_state_dict": {"state": {}, "param_groups": []},
                "val_loss": 0.4118, "args": argparse.Namespace(lr=3e-4)}, path)
    return model


def test_copilot4d_checkpoint_becomes_a_run_that_computes_the_same_logits_samples_and_evaluates(cli, tmp_path, copilot4d_data20):
    original = _copilot4d_checkpoint(tmp_path / "best_model.pt")
    code, out, err = cli("runs", "import", "copilot4d", tmp_path / "best_model.pt", f"runs_dir={tmp_path / 'runs'}",
                         f"data_dir={copilot4d_data20}", "num_heads=2", "name=c4d")
    assert code == 0, err
    run_dir = tmp_path / "runs" / "mmnist-wm" / "c4d"
    run = load_run(run_dir)
    assert run.config.model.vocab_size == 17 and run.config.data.preprocessing == "copilot4d"
    tokens = torch.randint(0, 17, (1, 20, 32, 32))
    actions = torch.randn(1, 20, 2) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(run.model.eval()(tokens, actions), original(tokens, actions))
    code, _, err = cli("sample", run_dir, "--n", "2", "--steps", "2", "--out", tmp_path / "s.png")
    assert code == 0, err
    assert np.load(tmp_path / "s.npz")["tokens"].max() < 16  # levels only, never the extra embedding rows
    code, out, err = cli("eval", "video", run_dir, "--json", "--limit", "2", "--steps", "2")
    assert code == 0 and "model_global_ssim_32" in json.loads(out), err


def test_copilot4d_checkpoint_with_one_hot_actions_is_a_clear_error(cli, tmp_path):
    _copilot4d_checkpoint(tmp_path / "best_model.pt", action_dim=4)
    code, _, err = cli("runs", "import", "copilot4d", tmp_path / "best_model.pt", f"runs_dir={tmp_path}", "num_heads=2")
    assert code != 0 and "use_ego_centric" in err and "Traceback" not in err
    torch.save({"epoch": 1}, tmp_path / "other.pt")
    code, _, err = cli("runs", "import", "copilot4d", tmp_path / "other.pt", f"runs_dir={tmp_path}")
    assert code != 0 and "model_state_dict" in err


def test_autoregressive_patch_head_trains_samples_and_evaluates(cli, capsys, tmp_path, mmnist_data):
    run = _train(tmp_path, mmnist_data, "ar", "train.epochs=1", "model.patch_head=autoregressive")
    capsys.readouterr()
    code, out, err = cli("eval", "video", run, "--json", "--limit", "3", "--steps", "2")
    assert code == 0, err
    result = json.loads(out)
    assert len(result["per_horizon"]["model"]["ink_recall"]) == FRAMES - PAST and 0 <= result["model_expected_mse_32"]
    code, _, err = cli("sample", run, "--n", "2", "--steps", "2", "--out", tmp_path / "ar.png")
    assert code == 0, err
    arrays = np.load(tmp_path / "ar.npz")
    np.testing.assert_array_equal(arrays["tokens"][:, :PAST], arrays["true_tokens"][:, :PAST])
    assert arrays["tokens"].max() < 16
