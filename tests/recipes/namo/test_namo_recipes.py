"""namo-fm / namo-diffusion end to end on a few procedural scenes with a tiny DiT."""

import json

import numpy as np
import pytest
import torch

from genflow.cli import main
from genflow.config import load_config
from genflow.engine.metrics_log import read_metrics
from genflow.engine.recipe import get_recipe
from genflow.engine.run_dir import load_run
from genflow.errors import ConfigError

TINY = ["model.network.hidden_size=32", "model.network.depth=1", "model.network.num_heads=2", "model.network.patch_size=8",
        "train.batch_size=8", "train.lr=0.003", "train.log_every=1", "train.warmup_steps=0", "eval.num_scenes=2", "eval.samples_per_scene=1"]


def _train(runs, recipe, data, name, *extra):
    code = main(["train", recipe, "--runs-dir", str(runs), "--name", name, "--no-progress", f"data.data_dir={data}",
                 *TINY, *extra])
    assert code == 0
    return runs / get_recipe(recipe).name / name


@pytest.fixture(scope="module")
def fm_run(tmp_path_factory, namo_data):
    return _train(tmp_path_factory.mktemp("runs"), "namo-fm", namo_data, "fm", "train.epochs=3", "train.eval_every=1")


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory, namo_data):
    return _train(tmp_path_factory.mktemp("runs"), "namo-diffusion", namo_data, "ddpm", "train.epochs=4",
                  "train.eval_every=1", "sampling_steps=4")


@pytest.mark.parametrize("recipe", ["namo-fm", "namo-diffusion"])
def test_training_validates_on_val_and_never_reads_the_test_split(tmp_path, namo_data, opened_splits, recipe):
    _train(tmp_path, recipe, namo_data, "spy", "train.epochs=1", "train.eval_every=1")
    assert "val" in opened_splits and "test" not in opened_splits


def test_import_skips_a_corrupt_file_and_converts_the_rest(namo_data):
    skipped = (namo_data / "skipped.txt").read_text()
    assert "broken.npz" in skipped
    info = json.loads((namo_data / "manifest.json").read_text())
    assert sum(s["count"] for s in info["splits"].values()) == 20


def test_source_config_names_and_overrides_work(tmp_path, namo_data):
    run_dir = _train(tmp_path, "train_fb_flow_matching", namo_data, "alias", "batch_size=8", "base_lr=0.002", "max_epochs=1",
                     "model.path.scheduler=cosine", "model.sampler.method=euler", "sampling_steps=3")
    assert run_dir.parent.name == "namo-fm"
    config = load_run(run_dir).config
    assert (config.train.lr, config.train.epochs, config.model.path.scheduler) == (0.002, 1, "cosine")
    assert (config.model.sampler.method, config.model.sampler.steps) == ("euler", 3)


def test_diffusion_source_overrides(tmp_path):
    cls = get_recipe("train_hf_diffusion")
    config = load_config(cls.config_class, cls.default_config, ["model.sampler.sampler_type=ddpm", "model.path.beta_schedule=linear",
                                                                 "model.path.prediction_type=v_prediction", "sampling_steps=20"])
    assert (config.model.sampler.sampler_type, config.model.path.beta_schedule) == ("ddpm", "linear")
    assert (config.model.path.prediction_type, config.model.sampler.steps) == ("v_prediction", 20)


def test_validation_loss_goes_down(fm_run, diffusion_run):
    for run_dir in (fm_run, diffusion_run):  # validation noise is fixed, so the curve is comparable across epochs
        losses = [r["val_loss"] for r in read_metrics(run_dir) if r["kind"] == "val"]
        assert losses[-1] < 0.99 * losses[0] and losses == sorted(losses, reverse=True), (run_dir, losses)


def test_run_dir_has_the_source_checkpoints_and_tensorboard_names(fm_run):
    names = {p.name for p in (fm_run / "checkpoints").glob("*.pt")}
    assert {"last.pt", "best.pt"} <= names
    named = [n for n in names if n.startswith("epoch") and "-val_loss" in n]
    assert len(named) == 1, names  # only the current best keeps its descriptive name
    val = [r for r in read_metrics(fm_run) if r["kind"] == "val"]
    assert all("val_loss_best" in r and r["val_loss_best"] <= r["val_loss"] + 1e-12 for r in val)
    assert named[0] == f"epoch{int(min(val, key=lambda r: r['val_loss'])['epoch']):03d}-val_loss{min(r['val_loss'] for r in val):.4f}.pt"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(fm_run / "tb"))
    events.Reload()
    assert {"train_loss", "val_loss", "val_loss_best", "lr-AdamW"} <= set(events.Tags()["scalars"])
    assert "Validation_Samples" in events.Tags()["images"]


# clean-mask prediction: the last of the steps is one jump to the data estimate
@pytest.mark.parametrize("solver, steps, nfe", [("euler", 3, 3), ("midpoint", 3, 5), ("rk4", 2, 5), ("dopri5", 4, None)])
@pytest.mark.parametrize("scheduler", ["condot", "cosine", "vp", "linear_vp", "polynomial"])
def test_flow_sampling_shapes_for_every_path_and_solver(fm_run, namo_data, scheduler, solver, steps, nfe):
    run = load_run(fm_run)
    recipe = get_recipe("namo-fm")(load_config(get_recipe("namo-fm").config_class, None,
                                               [f"data.data_dir={namo_data}", f"model.path.scheduler={scheduler}", *TINY]))
    context = torch.from_numpy(recipe._test_scenes(limit=2)["context"])
    samples, used = recipe.generate(run.model, context, samples_per_scene=3, solver=solver, steps=steps)
    assert samples.shape == (2, 3, 64, 64) and samples.dtype == bool
    assert used == nfe if nfe else used >= 6


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_diffusion_sampling_shapes_for_every_sampler(diffusion_run, namo_data, sampler, prediction):
    cls = get_recipe("namo-diffusion")
    recipe = cls(load_config(cls.config_class, None, [f"data.data_dir={namo_data}", f"model.path.prediction_type={prediction}", *TINY]))
    context = torch.from_numpy(recipe._test_scenes(limit=2)["context"])
    samples, used = recipe.generate(load_run(diffusion_run).model, context, samples_per_scene=2, solver=sampler, steps=5)
    assert samples.shape == (2, 2, 64, 64) and used == 5


def test_eval_namo_reports_metrics_and_baselines(cli, fm_run):
    code, out, _ = cli("eval", "namo", fm_run, "--json", "--limit", 3, "--samples-per-scene", 2, "--steps", 2)
    assert code == 0
    result = json.loads(out)
    for key in ("iou", "dice", "best_of_k_iou", "validity", "mode_coverage", "mode_coverage_multimodal", "stay_validity",
                "random_train_goal_validity"):
        assert key in result
    # midpoint x 2 with the clean-mask prediction: one midpoint step (2 evaluations), then the jump to the data
    assert result["scenes"] == 3 and result["nfe"] == 3 and result["stay_validity"] == 0.0
    assert (fm_run / "eval" / "namo-midpoint-2.png").is_file()


def test_eval_compare_writes_table_and_plot(cli, fm_run, diffusion_run, tmp_path):
    code, out, _ = cli("eval", "compare", fm_run, diffusion_run, "--limit", 2, "--samples-per-scene", 1, "--out", tmp_path)
    assert code == 0
    rows = json.loads((tmp_path / "compare.json").read_text())
    assert {r["recipe"] for r in rows} == {"namo-fm", "namo-diffusion"}
    assert {r["sampler"] for r in rows} >= {"midpoint", "ddim", "ddpm"}
    header = (tmp_path / "compare.md").read_text().splitlines()[0]
    assert (tmp_path / "compare.png").is_file() and "| nfe |" in header and "| push_validity |" in header


def test_ckpt_path_resumes_training(cli, tmp_path, namo_data):
    run_dir = _train(tmp_path, "namo-fm", namo_data, "resumed", "max_epochs=1")
    code, _, err = cli("train", "namo-fm", f"ckpt_path={run_dir}/checkpoints/last.pt", "max_epochs=2", "--no-progress",
                       "--runs-dir", tmp_path)
    assert code == 0, err
    assert load_run(run_dir, "last").state["progress"]["epoch"] == 2


def test_sample_writes_picture(cli, diffusion_run, tmp_path):
    code, out, _ = cli("sample", diffusion_run, "--n", 2, "--samples-per-scene", 2, "--solver", "ddpm", "--steps", 3,
                       "--out", tmp_path / "s.png")
    assert code == 0 and (tmp_path / "s.png").is_file()
    assert np.load(tmp_path / "s.npz")["samples"].shape == (2, 2, 64, 64)


def test_wrong_image_size_and_channels_are_config_errors(cli, tmp_path, namo_data):
    code, _, err = cli("train", "namo-fm", f"data.data_dir={namo_data}", "data.image_size=32", "--runs-dir", tmp_path)
    assert code == 2 and "data.image_size=32" in err and "64 x 64" in err
    with pytest.raises(ConfigError, match="in_ch"):
        load_config(get_recipe("namo-fm").config_class, None, ["model.network.in_ch=3"])


def test_diffusion_recipe_refuses_an_ode_solver(cli, diffusion_run):
    code, _, err = cli("sample", diffusion_run, "--solver", "midpoint")
    assert code == 2 and "ddim or ddpm" in err


def test_export_safetensors_and_onnx_match_torch(cli, fm_run, tmp_path):
    pytest.importorskip("onnxruntime")
    code, out, _ = cli("export", fm_run, "--format", "onnx", "--out", tmp_path)
    assert code == 0 and (tmp_path / "goal_net.onnx").is_file() and "max |onnx - torch|" in out
    code, _, _ = cli("export", fm_run, "--out", tmp_path / "st")
    assert code == 0 and any((tmp_path / "st").glob("*.safetensors"))


def test_source_trainer_choice_sets_processes(cli, tmp_path, namo_data):
    code, _, err = cli("train", "namo-fm", f"data.data_dir={namo_data}", "trainer=four_gpus", "--runs-dir", tmp_path)
    assert code == 2 and "single_gpu or multi_gpu" in err
    if not torch.cuda.is_available():
        code, _, err = cli("train", "namo-fm", f"data.data_dir={namo_data}", "trainer=multi_gpu", "--runs-dir", tmp_path)
        assert code == 2 and "--gpus N" in err


@pytest.mark.parametrize("recipe", ["namo-fm", "namo-diffusion"])
def test_training_on_fresh_valid_placements_with_target_conditioning(tmp_path, namo_data, recipe, monkeypatch):
    from genflow.data import load_split
    from genflow_recipes.namo.scenes import check_placement, scene_from_masks

    # the goal masks the training steps fit, by scene
    drawn: dict[bytes, list[np.ndarray]] = {}
    cls = get_recipe(recipe)
    objective_loss = cls.objective_loss

    def spy(self, model, x1, context, **draws):
        if model.training:  # not the validation loss
            for scene, goal in zip(context.numpy(), (x1[:, 0] > 0).numpy()):
                drawn.setdefault(scene.tobytes(), []).append(goal)
        return objective_loss(self, model, x1, context, **draws)

    monkeypatch.setattr(cls, "objective_loss", spy)
    run_dir = _train(tmp_path, recipe, namo_data, "levers", "train.epochs=3", "data.resample_goals=true",
                     "model.network.condition_on_target=true", "model.time_sampling=logit_normal", "sampling_steps=4")
    train_split = load_split(namo_data, "train", ["context", "target_goal"])
    stored = {scene.tobytes(): goal[0] > 0 for scene, goal in zip(train_split["context"], train_split["target_goal"])}
    assert sum(map(len, drawn.values())) == 3 * (len(stored) // 8 * 8) and set(drawn) <= set(stored)
    for scene, goals in drawn.items():  # each one a valid placement of that scene's target
        planner = scene_from_masks(np.frombuffer(scene, train_split["context"].dtype).reshape(5, 64, 64))
        assert all(check_placement(planner, goal).valid for goal in goals)
    seen_twice = [goals for goals in drawn.values() if len(goals) > 1]
    redrawn = sum(any(not np.array_equal(goals[0], g) for g in goals[1:]) for goals in seen_twice)
    assert seen_twice and redrawn >= len(seen_twice) / 2, f"{redrawn} of {len(seen_twice)} scenes seen again got a new placement"
    assert any(not np.array_equal(goal, stored[scene]) for scene, goals in drawn.items() for goal in goals)

    run = load_run(run_dir)
    context = torch.from_numpy(run.recipe._test_scenes(limit=2)["context"])
    samples, _ = run.recipe.generate(run.model, context, samples_per_scene=2, steps=2)
    assert samples.shape == (2, 2, 64, 64)
    # the target's box reaches the network: two targets, two conditions, two outputs for the same network input
    conditions = []
    run.model.dit.register_forward_pre_hook(lambda module, args: conditions.append(args[2]))
    x_t, t = torch.zeros(2, 1, 64, 64), torch.full((2,), 0.5)
    with torch.no_grad():
        run.model(x_t, t, context)
        condition = conditions[0]
        assert condition is not None and not torch.allclose(condition[0], condition[1]), "two targets, one condition"
        network_input = torch.zeros(1, 8, 64, 64)
        outputs = run.model.dit(network_input.expand(2, -1, -1, -1), t, condition)
    assert not torch.equal(outputs[0], outputs[1]), "the network's output ignores the target's condition"


def test_target_box_features_locate_the_target():
    from genflow_recipes.namo.recipe import TARGET_FREQUENCIES, target_box_features

    target = torch.zeros(2, 64, 64)
    target[0, 0:4, 0:6] = 1  # top-left, 4 x 6 px
    target[1, 60:64, 58:64] = 1  # bottom-right, same size
    features = target_box_features(target)
    f = TARGET_FREQUENCIES
    row_centre = torch.atan2(features[:, 0], features[:, f]) / torch.pi  # lowest frequency: angle pi * centre
    assert row_centre[0] == pytest.approx(2 / 64 * 2 - 1, abs=1e-5) and row_centre[1] == pytest.approx(62 / 64 * 2 - 1, abs=1e-5)
    assert features[:, 2 * f].tolist() == pytest.approx([4 / 64, 4 / 64])  # height
    assert features[:, -1].tolist() == pytest.approx([6 / 64, 6 / 64])  # width
