"""hand-vae with smplx-pose-priors' network (`architecture: source`, config `hand_vae_source`) and its checkpoints
(`genflow runs import smplx-pose-priors`), written here in the source's layout without the source's code."""

from __future__ import annotations

import json
import math

import pytest
import torch

from genflow.cli import main
from genflow.data import load_split
from genflow.engine import load_run
from genflow.engine.metrics_log import read_metrics
from genflow_recipes.hand_vae.model import SourceHandPoseVAE, kl_with_free_bits, source_parameter_names
from genflow_recipes.hand_vae.skeleton import make_hand_poses

EXECUTED: list[str] = []


def _record(what: str) -> str:
    EXECUTED.append(what)
    return what


class _LoopState:
    """Stands for a Lightning loop's state: loading the checkpoint must not call it."""

    def __reduce__(self):
        return (_record, ("a checkpoint entry ran code",))


@pytest.fixture(scope="module")
def hands(tmp_path_factory):
    out = tmp_path_factory.mktemp("hands") / "shards"
    assert main(["data", "make-hands", "--n", "2000", "--out", str(out), "generator=families"]) == 0
    return out


def poses(n: int = 64) -> torch.Tensor:
    return torch.from_numpy(make_hand_poses(n, 3)[0]).float()


def test_the_source_network_has_the_source_s_sizes_and_names():
    standard, so3 = SourceHandPoseVAE("standard"), SourceHandPoseVAE("so3")
    assert sum(p.numel() for p in standard.parameters()) == 352_484  # the source's HandVAEPrior() count
    names = set(source_parameter_names(standard).values())
    assert {"x_mean", "x_std", "encoder.6.weight", "ln_enc.weight", "ln_dec.bias", "dec_logvar.bias"} <= names
    assert {"encoder.0.weight", "encoder.7.bias", "dec_6d.weight", "log_sigma"} <= set(source_parameter_names(so3).values())
    assert "pose_mean" not in source_parameter_names(so3)  # the data module's standardisation has no tensor there
    assert standard.decoder.logvar.bias.eq(-1.5).all() and so3.log_sigma.item() == -1.5


@pytest.mark.parametrize("model_type", ["standard", "so3"])
def test_the_shipped_pipeline_computes_on_raw_poses_what_the_source_computed_on_standardised_ones(model_type):
    torch.manual_seed(0)
    x = poses()
    mean, std = x.mean(0), x.std(0)
    intended = SourceHandPoseVAE(model_type, z_dim=6, hidden=32).eval()
    intended.set_input_statistics(mean, std)
    shipped = SourceHandPoseVAE(model_type, z_dim=6, hidden=32).eval()
    shipped.load_state_dict({**intended.state_dict(), "pose_mean": mean, "pose_std": std})
    standardised = (x - mean) / std  # what the source's data module hands its model
    noise = torch.randn(len(x), 6)
    for a, b in zip(shipped.encode(x), intended.encode(standardised)):
        torch.testing.assert_close(a, b)
    raw = shipped.decoder(shipped.encode(x)[0])
    torch.testing.assert_close(shipped.recon_nll(x, raw), intended.recon_nll(standardised, raw))
    torch.testing.assert_close(shipped(x, noise, 0.5)["loss"], intended(standardised, noise, 0.5)["loss"])
    # decoded poses come back in radians: the shipped model's are the intended model's, un-standardised
    torch.testing.assert_close(shipped.poses_from_raw(raw), intended.poses_from_raw(raw) * std + mean, atol=1e-5, rtol=1e-5)


def test_so3_likelihood_is_a_one_dimensional_gaussian_of_each_joint_angle():
    model = SourceHandPoseVAE("so3", z_dim=6, hidden=32).eval()
    with torch.no_grad():
        model.log_sigma.fill_(math.log(0.2))
    x = poses(16)
    raw = model.decoder(model.encode(x)[0])
    theta = model.joint_errors(x, raw)
    normaliser = 0.5 * 30 * (2 * math.log(0.2) + math.log(2 * math.pi))  # 3-D would be 3 ln σ + 1.5 ln 2π per joint
    torch.testing.assert_close(model.recon_nll(x, raw), 0.5 * theta.pow(2).sum(-1) / 0.04 + normaliser, atol=1e-3, rtol=1e-4)


def test_source_free_bits_floor_each_sample_not_the_batch_mean():
    kl = torch.tensor([[0.0, 2.0], [2.0, 0.0]])
    assert SourceHandPoseVAE("so3").kl_penalty(kl, 0.5).item() == pytest.approx(2.5)  # each sample: 2 + 0.5
    assert kl_with_free_bits(kl, 0.5).item() == pytest.approx(2.0)  # genflow's: batch means 1 + 1, above the floor


def test_the_source_config_trains_standardised_with_the_training_statistics(tmp_path, hands):
    assert main(["train", "hand-vae", "--config", "hand_vae_source", "--runs-dir", str(tmp_path), "--name", "src",
                 "--no-progress", f"data.data_dir={hands}", "z_dim=6", "hidden=32", "batch_size=128", "max_epochs=2",
                 "kl_warmup_epochs=1", "eval.figure_poses=100", "eval.hypothesis_iwae_samples=0"]) == 0
    run = load_run(tmp_path / "hand-vae" / "src")
    model = run.model
    train = torch.from_numpy(load_split(hands, "train", ["pose"])["pose"])
    torch.testing.assert_close(model.input_mean, train.double().mean(0).float())
    val = [r["val_loss"] for r in read_metrics(tmp_path / "hand-vae" / "src") if r["kind"] == "val"]
    assert len(val) == 2 and val[-1] < val[0]
    lrs = {r["epoch"]: r["lr"] for r in read_metrics(tmp_path / "hand-vae" / "src") if r["kind"] == "train"}
    assert lrs[1] > lrs[2] >= 3e-6  # cosine over the epochs towards 1 % of lr


def _source_checkpoint(path, model_type: str, *, best: str | None = None) -> dict[str, torch.Tensor]:
    """A checkpoint as the source's Lightning module writes it: hyper-parameters, `model.`-prefixed tensors."""
    torch.manual_seed(1)
    model = SourceHandPoseVAE(model_type, z_dim=6, hidden=32, layers=2)
    model.set_input_statistics(torch.full((90,), 0.1), torch.full((90,), 0.3))
    state = model.state_dict()
    tensors = {f"model.{theirs}": state[ours] for ours, theirs in source_parameter_names(model).items()}
    callbacks = {"ModelCheckpoint{'monitor': 'val/loss', 'mode': 'min'}": {"best_model_path": f"/elsewhere/{best}"}} if best else {}
    torch.save({"state_dict": tensors, "epoch": 7, "global_step": 140, "pytorch-lightning_version": "2.6.6",
                "hyper_parameters": {"model_type": model_type, "x_dim": 90, "z_dim": 6, "hidden": 32, "n_layers": 2,
                                     "dropout": 0.1, "learning_rate": 3e-4, "weight_decay": 1e-4, "kl_warmup_epochs": 10,
                                     "beta_max": 1.0, "free_bits": 0.0, "grad_clip_val": 1.0},
                "callbacks": callbacks, "loops": {"fit_loop": _LoopState()}}, path)
    return tensors


@pytest.mark.parametrize("model_type", ["standard", "so3"])
def test_a_source_checkpoint_becomes_a_run_that_eval_takes(cli, tmp_path, hands, model_type):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    _source_checkpoint(folder / "hand_vae_epoch=03_val_loss=0.0000.ckpt", model_type)
    tensors = _source_checkpoint(folder / "hand_vae_epoch=07_val_loss=0.0000.ckpt", model_type)
    _source_checkpoint(folder / "last.ckpt", model_type, best="hand_vae_epoch=07_val_loss=0.0000.ckpt")
    EXECUTED.clear()
    code, out, err = cli("runs", "import", "smplx-pose-priors", folder, f"runs_dir={tmp_path / 'runs'}", "name=src",
                         f"data_dir={hands}")
    assert code == 0, err
    assert "hand_vae_epoch=07" in out and not EXECUTED
    run = load_run(tmp_path / "runs" / "hand-vae" / "src")
    model = run.model
    assert (model.model_type, model.z_dim, len(model.encoder)) == (model_type, 6, 6 + (model_type == "so3") + (model_type == "standard"))
    torch.testing.assert_close(model.mean_head.weight, tensors["model.enc_mu.weight"])
    torch.testing.assert_close(model.pose_std, torch.full((90,), 0.3))  # pipeline=shipped: the data module's statistics
    code, out, err = cli("eval", "hands", tmp_path / "runs" / "hand-vae" / "src", "--json", "limit=200")
    assert code == 0, err
    result = json.loads(out)
    assert 0 <= result["model_recon_deg"] < 180 and "hyp_est_model_top1" in result


def test_a_checkpoint_without_the_source_s_entries_is_one_clear_line(cli, tmp_path):
    torch.save({"state_dict": {"model.x_mean": torch.zeros(90)}}, tmp_path / "other.ckpt")
    code, out, err = cli("runs", "import", "smplx-pose-priors", tmp_path / "other.ckpt", f"runs_dir={tmp_path}")
    assert code != 0 and "other.ckpt" in err and "hyper_parameters" in err and "Traceback" not in err
