"""hand-vae end to end on a few thousand procedural poses: both model types, eval, energy CLI, source flags."""

import json

import numpy as np
import pytest

from genflow.cli import main
from genflow_recipes.hand_vae.skeleton import make_hand_poses
from genflow.engine.metrics_log import read_metrics
from genflow_recipes.hand_vae.metrics import HYPOTHESIS_KINDS, HYPOTHESIS_SETTINGS

TINY = ["z_dim=8", "hidden=64", "batch_size=256", "learning_rate=0.003", "kl_warmup_epochs=2", "train.eval_every=2",
        "train.log_every=2", "eval.poses=300", "eval.prior_samples=300", "eval.figure_poses=200",
        "eval.hypothesis_poses=100", "eval.hypothesis_iwae_samples=2"]


@pytest.fixture(scope="module")
def hands(tmp_path_factory):
    out = tmp_path_factory.mktemp("hands") / "shards"
    assert main(["data", "make-hands", "--n", "3000", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, hands):
    root = tmp_path_factory.mktemp("runs")
    for model_type in ("standard", "so3"):
        assert main(["train", "hand-vae", "--runs-dir", str(root), "--name", model_type, "--no-progress",
                     f"data.data_dir={hands}", *TINY, f"model_type={model_type}", "max_epochs=4"]) == 0
    return root / "hand-vae"


def test_training_validates_on_val_and_never_reads_the_test_split(tmp_path, hands, opened_splits):
    assert main(["train", "hand-vae", "--runs-dir", str(tmp_path), "--no-progress", f"data.data_dir={hands}", *TINY,
                 "max_epochs=1"]) == 0
    assert "val" in opened_splits and "test" not in opened_splits


@pytest.mark.parametrize("model_type", ["standard", "so3"])
def test_training_logs_the_source_metrics_figures_and_checkpoint_names(runs, model_type):
    run_dir = runs / model_type
    rows = read_metrics(run_dir)
    train = [r for r in rows if r["kind"] == "train"]
    assert {"loss", "recon_nll", "kl", "beta"} <= set(train[-1])
    assert train[0]["beta"] < train[-1]["beta"] == 1.0  # KL warm-up over kl_warmup_epochs
    val = [r for r in rows if r["kind"] == "val"]
    assert [r["epoch"] for r in val] == [2, 4] and all(np.isfinite(r["val_energy_mean"]) for r in val)
    assert val[-1]["val_loss"] < val[0]["val_loss"]
    for name in ("energy_hist", "latent_scatter", "loss_components", "beta_sensitivity"):
        assert (run_dir / "figures" / f"{name}.png").is_file()
    assert list((run_dir / "checkpoints").glob("hand_vae_epoch_*_val_loss_*.pt")) and (run_dir / "checkpoints" / "last.pt").is_file()
    assert list((run_dir / "tb").iterdir())


def test_eval_reports_model_and_gaussian_baseline(cli, runs):
    code, out, _ = cli("eval", "hands", runs / "standard", "--json")
    assert code == 0
    result = json.loads(out)
    for who in ("model", "gaussian"):
        assert 0 < result[f"{who}_recon_deg"] < 90
        assert 0 <= result[f"{who}_plausible"] <= 1
        for kind in ("joint_limits", "random_joint", "mixed_families", "noise_0.1"):
            assert 0 <= result[f"{who}_auroc_{kind}"] <= 1
    assert result["model_auroc_random_joint"] > 0.7 and result["data_plausible"] == 1.0
    assert (runs / "standard" / "eval" / "hand_samples.png").is_file()
    assert result["val_recon_deg_by_epoch"] and (runs / "standard" / "eval" / "recon_vs_epochs.png").is_file()
    assert result["split"] == "test"
    code, out, _ = cli("eval", "hands", runs / "standard", "--json", "--split", "val", "--limit", "200")
    assert code == 0 and json.loads(out)["split"] == "val"


@pytest.mark.parametrize("model_type", ["standard", "so3"])
def test_eval_reports_hypothesis_selection_for_every_prior(cli, runs, model_type):
    code, out, err = cli("eval", "hands", runs / model_type, "--json", "eval.hypothesis_poses=50", "eval.hypothesis_iwae_samples=4")
    assert code == 0, err
    result = json.loads(out)
    assert result["hyp_poses"] == 50 and result["hyp_hypotheses"] == len(HYPOTHESIS_KINDS)
    assert result["hyp_all_oracle_deg"] == result["hyp_local_oracle_deg"] < 0.01 < result["hyp_est_oracle_deg"]
    for who in ("model", "model_iwae", "gaussian", "uniform"):
        for setting in ("all", "local", "est"):
            assert 0 <= result[f"hyp_{setting}_{who}_top1"] <= 1
            assert result[f"hyp_{setting}_oracle_deg"] <= result[f"hyp_{setting}_{who}_picked_deg"] < 180
    assert result["hyp_all_uniform_top1"] == pytest.approx(1 / len(HYPOTHESIS_KINDS))
    local = [kind for kind in HYPOTHESIS_KINDS if kind in HYPOTHESIS_SETTINGS["local"]]  # 9: truth, errors, impossible
    assert result["hyp_local_uniform_top1"] == pytest.approx(1 / len(local))
    assert result["hyp_est_uniform_top1"] < 0.5  # about 2 of the 8 estimator hypotheses are the 5° ones
    for who in ("model", "gaussian"):
        shares = [result[f"hyp_all_{who}_pick_{kind}"] for kind in dict.fromkeys(HYPOTHESIS_KINDS)]
        assert all(0 <= share <= 1 for share in shares) and sum(shares) == pytest.approx(1)
    assert result["hyp_local_model_top1"] > result["hyp_local_uniform_top1"]  # even a tiny prior beats a random pick
    assert "model_auroc_noise_0.1" in result  # the earlier figures stay


def test_energy_of_a_users_npz_from_the_cli(cli, runs, tmp_path):
    poses, _ = make_hand_poses(20, seed=9)
    bad = poses.copy()
    bad[:, 45:48] = [2.5, -2.0, 1.0]  # a wild right index MCP
    np.savez(tmp_path / "hyp.npz", lhand=np.concatenate([poses, bad])[:, :45], rhand=np.concatenate([poses, bad])[:, 45:])
    code, out, _ = cli("sample", runs / "so3", "--energy", tmp_path / "hyp.npz")
    assert code == 0
    energy = np.load(tmp_path / "hyp_energy.npz")["energy"]
    assert energy.shape == (40,) and energy[:20].mean() < energy[20:].mean()


def test_sampling_writes_skeletons(cli, runs, tmp_path):
    code, out, _ = cli("sample", runs / "standard", "--n", "8", "--out", tmp_path / "s.png")
    assert code == 0 and (tmp_path / "s.png").is_file() and np.load(tmp_path / "s.npz")["pose"].shape == (8, 90)


def test_resume_from_checkpoint_flag(cli, hands, tmp_path):
    args = ["train", "hand-vae", "--runs-dir", tmp_path, "--no-progress", f"data.data_dir={hands}", *TINY]
    assert cli(*args, "--name", "r", "max_epochs=2")[0] == 0
    last = tmp_path / "hand-vae" / "r" / "checkpoints" / "last.pt"
    code, _, err = cli("train", "hand-vae", "--runs-dir", tmp_path, "--no-progress", f"resume_from_checkpoint={last}", "max_epochs=4")
    assert code == 0, err
    assert [r["epoch"] for r in read_metrics(tmp_path / "hand-vae" / "r") if r["kind"] == "val"] == [2, 4]


def test_bad_model_type_is_one_clear_line(cli, hands, tmp_path):
    code, _, err = cli("train", "hand-vae", f"data.data_dir={hands}", "model_type=quat", "--runs-dir", tmp_path)
    assert code == 2 and "model_type" in err and "Traceback" not in err
