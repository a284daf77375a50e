"""dtm end to end on tiny synthetic digits (eager sampler, few sweeps); iterator training; dtm-lunar."""

import json

import numpy as np
import pytest
import torch

from genflow.cli import main
from genflow.engine.checkpoint import load_checkpoint
from genflow.engine.metrics_log import read_metrics
from genflow_recipes.dtm.lunar import train_from_iterator

TINY = ["model.compile=false", "model.num_steps=2", "model.num_label_spots=2", "sampling.steps_warmup=3",
        "sampling.n_samples=2", "sampling.steps_per_sample=1", "generation.sweeps=4", "eval.num_images=40",
        "eval.classifier_epochs=1", "data.val_images=8", "correlation_penalty.samples=6", "correlation_penalty.chains=4",
        "correlation_penalty.images=1", "train.batch_size=16", "train.epochs=1", "train.log_every=1"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory, tiny_mnist_npz):
    out = tmp_path_factory.mktemp("digits") / "images"
    assert main(["data", "make-mnist-images", "--source", str(tiny_mnist_npz), "--out", str(out)]) == 0
    return out


def _train(runs, data, name, *extra):
    assert main(["train", "dtm", "--runs-dir", str(runs), "--name", name, "--no-progress", f"data.data_dir={data}", *TINY, *extra]) == 0
    return runs / "dtm" / name


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    return _train(tmp_path_factory.mktemp("runs"), digits, "tiny", "correlation_penalty.adaptive=true", "train.epochs=2",
                  "correlation_penalty.beta=generation")


def test_training_logs_mixing_diagnostics_fd_and_samples(trained):
    val = [r for r in read_metrics(trained) if r["kind"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2]
    for key in ("val_loss", "val_fd", "autocorr_step0", "autocorr_step1", "cp_step0"):
        assert all(np.isfinite(r[key]) for r in val), key
    # adaptive penalty: after the second measurement the controller has set it (at least the minimum, or off)
    assert val[1]["cp_step0"] == 0 or val[1]["cp_step0"] >= 0.001
    assert (trained / "samples.png").is_file()
    assert list((trained / "checkpoints").glob("epoch*-val_fd*.pt"))
    state = load_checkpoint(trained / "checkpoints" / "last.pt")["model"]
    assert "steps.0.input_coupling" in state and "correlation_penalty" in state


def test_the_penalty_adapts_from_the_first_measurement_as_the_reference_does():
    from types import SimpleNamespace

    from genflow_recipes.dtm.recipe import DtmConfig, DtmRecipe

    config = DtmConfig()
    config.correlation_penalty.adaptive = True
    recipe = DtmRecipe(config)
    model = SimpleNamespace(correlation_penalty=torch.zeros(3), autocorrelation=torch.full((3,), float("nan")))
    # no measurement yet: compared with the untrained model's 0, so a step mixing slowly gets a penalty at once
    recipe.adapt_penalty(model, [0.05, 0.02, 0.001])
    assert model.correlation_penalty.tolist() == pytest.approx([0.0015, 0.0012, 0.0])
    recipe.adapt_penalty(model, [0.04, 0.03, 0.001])  # step 0 improved (x 0.95), step 1 got worse (x 1.5)
    assert model.correlation_penalty.tolist() == pytest.approx([0.0015 * 0.95, 0.0012 * 1.5, 0.0])


def test_training_validates_on_val_and_never_reads_the_test_split(tmp_path, digits, opened_splits):
    _train(tmp_path, digits, "spy")  # FD classifier, autocorrelation, val loss and best.pt included
    assert "val" in opened_splits and "test" not in opened_splits


def test_input_couplings_stay_fixed_under_weight_decay(tmp_path, digits):
    run_dir = _train(tmp_path, digits, "wd", "train.weight_decay=0.5", "optim.bias_decay=0.5")
    from genflow.ising.dtm import input_coupling, time_grid

    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    t = time_grid(2, "log")
    image_nodes = 784
    torch.testing.assert_close(state["steps.0.input_coupling"][:image_nodes],
                               torch.full((image_nodes,), input_coupling(0.9, t[1] - t[0])))  # untouched by decay
    torch.testing.assert_close(state["steps.0.input_coupling"][image_nodes:],
                               torch.full((20,), input_coupling(0.2, t[1] - t[0])))  # label nodes: the label rate
    assert state["steps.0.weight"].abs().max() > 0  # the decayed couplings did train


def test_eval_reports_fd_against_floor_and_ceiling(cli, trained):
    code, out, _ = cli("eval", "dtm", trained, "--json", "--limit", "40")
    assert code == 0
    result = json.loads(out)
    for key in ("fd_free", "fd_clamped", "fd_floor", "fd_noise_ceiling", "clamped_label_accuracy", "autocorr_step0",
                "clamped_accuracy_worst_class"):
        assert np.isfinite(result[key]), key
    per_class = result["clamped_accuracy_per_class"]
    assert len(per_class) == 10 and result["clamped_accuracy_worst_class"] == min(per_class)
    assert result["clamped_label_accuracy"] == pytest.approx(np.mean(per_class), abs=1e-3)  # 4 images per class
    assert result["fd_floor"] < result["fd_noise_ceiling"]
    assert result["split"] == "test" and 0 <= result["classifier_test_accuracy"] <= 1
    code, out, _ = cli("eval", "dtm", trained, "--json", "--limit", "40", "--split", "val")
    assert code == 0 and json.loads(out)["split"] == "val" and json.loads(out)["fd_floor"] != result["fd_floor"]


def test_sample_writes_a_grid_and_images(cli, trained, tmp_path):
    code, _, _ = cli("sample", trained, "--n", "6", "--out", tmp_path)
    assert code == 0
    data = np.load(tmp_path / "samples.npz")
    assert data["images"].shape == (6, 28, 28) and set(np.unique(data["images"])) <= {0.0, 1.0}
    assert data["labels"].tolist() == [0, 1, 2, 3, 4, 5]
    assert (tmp_path / "grid.png").is_file()


def test_reference_option_names_work(cli, tmp_path, digits):
    code, _, err = cli("train", "dtm", f"data.data_dir={digits}", *TINY, "graph_preset_architecture=4412",
                       "steps_warmup=2", "n_samples=1", "target_classes=[4,7]", "train.max_steps=1", "--runs-dir", tmp_path,
                       "--no-progress")
    assert code == 0, err
    config = (tmp_path / "dtm").glob("*/config.yaml").__next__().read_text()
    assert "graph: '44_12'" in config and "steps_warmup: 2" in config


def test_too_small_graph_is_a_clear_error(cli, tmp_path, digits):
    code, _, err = cli("train", "dtm", f"data.data_dir={digits}", *TINY, "model.graph=20_8", "--runs-dir", tmp_path)
    assert code == 2
    assert "graph 20_8 is too small for 804 visible nodes" in err and "44_12" in err and "Traceback" not in err


def test_unknown_placement_is_a_clear_error(cli, tmp_path, digits):
    code, _, err = cli("train", "dtm", f"data.data_dir={digits}", *TINY, "model.placement=grid", "--runs-dir", tmp_path)
    assert code == 2 and "model.placement" in err and "image" in err and "Traceback" not in err


def test_ema_is_refused(cli, tmp_path, digits):
    code, _, err = cli("train", "dtm", f"data.data_dir={digits}", *TINY, "train.ema_decay=0.99", "--runs-dir", tmp_path)
    assert code == 2 and "ema_decay" in err


def test_resume_is_exact(cli, tmp_path, digits):
    extra = ["data.train_images=32", "eval.fd_every_eval=false"]
    straight = _train(tmp_path / "a", digits, "straight", *extra, "train.epochs=2")
    resumed = _train(tmp_path / "b", digits, "resumed", *extra, "train.epochs=2", "train.max_steps=2")  # stops after epoch 1
    code, _, _ = cli("train", "dtm", "train.max_steps=null", "--resume", resumed, "--runs-dir", tmp_path / "b", "--no-progress")
    assert code == 0
    a = load_checkpoint(straight / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_from_a_finite_iterator(tmp_path):
    """Any iterable of images; the epoch ends when it runs out, memory holds one batch."""
    made = []

    def frames():
        rng = np.random.default_rng(len(made))
        made.append(1)
        for _ in range(10):  # 10 images: 2 full batches of 4 per epoch (the last partial batch is dropped)
            yield (rng.random((8, 8)) * 255).astype(np.uint8)

    result = train_from_iterator(frames, tmp_path / "it", overrides=[
        "model.graph=20_8", "model.compile=false", "train.batch_size=4", "train.batches_per_epoch=100", "train.epochs=2",
        "train.num_workers=0", "sampling.steps_warmup=2", "sampling.n_samples=1", "generation.sweeps=2",
        "correlation_penalty.samples=4", "correlation_penalty.chains=2"])
    assert result.steps == 4 and result.epochs_done == 2
    assert (tmp_path / "it" / "checkpoints" / "last.pt").is_file()
    from genflow.engine.run_dir import load_run
    loaded = load_run(tmp_path / "it")
    recipe, model = loaded.recipe, loaded.model
    assert model.num_pixels == 64 and recipe.image_shape() == (8, 8)


def test_streamed_training_needs_an_epoch_length(tmp_path):
    from genflow.errors import ConfigError

    with pytest.raises(ConfigError, match="batches_per_epoch"):
        train_from_iterator(lambda: iter([np.zeros((8, 8), np.uint8)] * 8), tmp_path / "x",
                            overrides=["model.graph=20_8", "model.compile=false", "train.batches_per_epoch=null"])


def test_lunar_lander_frames_stream_from_a_background_worker(tmp_path):
    pytest.importorskip("gymnasium")
    pytest.importorskip("Box2D")
    from genflow_recipes.dtm.lunar import LunarLanderFrames

    frames = list(LunarLanderFrames(resolution=32, seed=0, max_frames=6))
    assert len(frames) == 6 and frames[0]["image"].shape == (32, 32, 3) and frames[0]["image"].dtype == torch.uint8
    assert not all(torch.equal(frames[0]["image"], f["image"]) for f in frames[1:])  # the lander moves
    loader = torch.utils.data.DataLoader(LunarLanderFrames(seed=1, max_frames=8), batch_size=4, num_workers=1)
    assert [b["image"].shape for b in loader] == [(4, 32, 32, 3)] * 2
