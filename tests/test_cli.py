"""Every CLI command's happy path and a bad-input path (one clear line, non-zero exit, no traceback)."""

import hashlib
import json
import subprocess
import sys

import pytest
import torch

from genflow.cli import main
from support import TINY_MODEL
from genflow.engine.checkpoint import load_checkpoint



def assert_user_error(code, err, *fragments):
    assert code == 2
    assert "Traceback" not in err and err.strip().startswith("error:")
    for fragment in fragments:
        assert fragment in err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, digit4_dir):
    runs = tmp_path_factory.mktemp("runs")
    code = main(["train", "digit4", "--runs-dir", str(runs), "--name", "tiny", "--no-progress", f"data.path={digit4_dir}",
                 "train.epochs=2", "train.eval_every=1", *TINY_MODEL])
    assert code == 0
    return runs / "digit4" / "tiny"


def test_recipes_lists_digit4(cli):
    code, out, _ = cli("recipes")
    assert code == 0 and "digit4" in out and "digit4.yaml" in out


def test_recipes_configs_lists_every_config_with_its_hardware_and_one_copies_out(cli, tmp_path):
    code, out, _ = cli("recipes", "--configs")
    rows = {tuple(line.split()[:2]): line for line in out.splitlines()[1:]}
    assert code == 0 and ("digit4", "digit4") in rows and ("mmnist-wm", "mmnist_wm_full") in rows
    assert " gpu " in rows[("mmnist-wm", "mmnist_wm_full")] and " cpu " in rows[("digit4", "digit4_source")]
    code, out, _ = cli("config", "digit4", "--config", "digit4_source")
    assert code == 0 and out.startswith("# hardware: cpu\n# purpose: FlowMix")
    (tmp_path / "mine.yaml").write_text(out)
    code, copied, _ = cli("config", "digit4", "--config", tmp_path / "mine.yaml")
    code, original, _ = cli("config", "digit4", "--config", "digit4_source")
    assert copied.split("data:", 1)[1] == original.split("data:", 1)[1]  # the copy trains the same config


def test_version_and_the_config_a_recipe_resolves(cli, tmp_path):
    from genflow import __version__
    from genflow.config import config_keys
    from genflow_recipes.digit4.recipe import Digit4Config

    code, out, _ = cli("--version")
    assert code == 0 and __version__ in out
    code, out, _ = cli("config", "digit4", "--keys")
    listed = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:]}
    assert code == 0 and listed == {key: type_name.split()[0] for key, type_name, _, _ in config_keys(Digit4Config)}
    assert "train.lr" in listed and listed["model.field_hidden"] == "int"
    code, out, _ = cli("config", "digit4", "train.lr=0.02")  # YAML a user can edit and train from
    (tmp_path / "mine.yaml").write_text(out)
    code, again, _ = cli("train", "digit4", "--config", tmp_path / "mine.yaml", "--print-config", "--runs-dir", tmp_path)
    assert code == 0 and "lr: 0.02" in again and not (tmp_path / "digit4").exists()  # printed, nothing written
    code, _, err = cli("config", "digit4", "train.lr=fast")
    assert_user_error(code, err, "train.lr")


def test_data_commands_list_and_explain_their_options(cli):
    code, out, _ = cli("data", "list")
    assert code == 0 and "genflow data make digit4" in out and "genflow data import namo SOURCE" in out
    code, out, _ = cli("data", "make", "digit4", "--help")
    assert code == 0 and "points" in out and "Points per cloud".lower() in out.lower()
    code, _, err = cli("data", "make", "digit5")
    assert_user_error(code, err, "unknown data make kind 'digit5'", "did you mean 'digit4'?")


def test_sample_and_eval_help_list_the_recipe_s_options(cli, trained_run):
    code, out, _ = cli("sample", trained_run, "--help")
    assert code == 0 and "digit4 sample options" in out and "unconditional" in out
    code, out, _ = cli("eval", "chamfer", "digit4", "--help")
    assert code == 0 and "eval chamfer (digit4) options" in out and "split" in out
    code, _, err = cli("eval", "namo", trained_run, "--help")
    assert_user_error(code, err, "no 'namo' evaluation", "chamfer")


def test_data_info_and_verify(cli, digit4_dir):
    code, out, _ = cli("data", "info", digit4_dir)
    assert code == 0 and "train" in out and "points" in out and "(64, 2)" in out
    code, out, _ = cli("data", "verify", digit4_dir)
    assert code == 0 and "all shards match" in out


def test_verify_reports_a_corrupt_shard(cli, digit4_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(digit4_dir, copy)
    shard = next(copy.glob("train-*.h5"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    code, _, err = cli("data", "verify", copy)
    assert_user_error(code, err.splitlines()[-1], "problem")
    assert shard.name in err


def test_make_mnist_points_rejects_bad_digits(cli):
    code, _, err = cli("data", "make-mnist-points", "--digits", "4,x")
    assert_user_error(code, err, "'digits'", "4,x")


def test_data_info_on_missing_dir(cli, tmp_path):
    code, _, err = cli("data", "info", tmp_path / "nope")
    assert_user_error(code, err, "nope")


def test_train_writes_a_complete_run_dir(trained_run):
    assert {"config.yaml", "metrics.jsonl", "samples.png", "loss_trajectory.png", "checkpoints", "tb"} <= {p.name for p in trained_run.iterdir()}
    state = load_checkpoint(trained_run / "checkpoints" / "last.pt")
    assert state["progress"]["epoch"] == 2


@pytest.mark.parametrize("args, fragment", [
    (["train", "digit5"], "unknown recipe 'digit5'"),
    (["train", "digit4", "train.epoch=3"], "did you mean train.epochs"),
    (["train", "digit4", "model.use_vae=maybe"], "model.use_vae"),
    (["train", "digit4", "--precision", "fp8"], "train.precision"),
    (["train", "digit4", "train.batch_size=0"], "train.batch_size': expected a value >= 1, got 0"),
    (["train", "digit4", "eval.num_clouds=0"], "eval.num_clouds"),
    (["train", "digit4", "--resume", "/nonexistent/run"], "no checkpoints/last.pt"),
])
def test_train_bad_input(cli, tmp_path, args, fragment):
    code, _, err = cli(*args, "--runs-dir", tmp_path)
    assert_user_error(code, err, fragment)


def test_train_on_missing_dataset_names_it_and_leaves_no_run_dir(cli, tmp_path):
    code, _, err = cli("train", "digit4", "--runs-dir", tmp_path, "--name", "r", f"data.path={tmp_path / 'no-data'}", "--no-progress")
    assert_user_error(code, err, "no-data")
    assert not (tmp_path / "digit4" / "r").exists()


@pytest.mark.parametrize("override, fragment", [
    ("train.betas=[1.5,0.9]", "train.betas': expected a value in [0, 1) (each), got [1.5, 0.9]"),
    ("model.field_hidden=-3", "model.field_hidden': expected a value >= 1, got -3"),
    ("train.lr=.nan", "train.lr': expected a finite value > 0, got nan"),
])
def test_a_value_outside_its_declared_range_stops_before_anything_is_written(cli, tmp_path, digit4_dir, override, fragment):
    code, _, err = cli("train", "digit4", "--runs-dir", tmp_path, "--name", "r", f"data.path={digit4_dir}", override)
    assert_user_error(code, err, fragment)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["../../escaped", "{tmp}/absolute", "a/b", "..", "a\\b"])
def test_a_run_name_is_a_name_not_a_path(cli, tmp_path, digit4_dir, name):
    inner = tmp_path / "in" / "deep"  # ../../escaped from its runs/digit4 lands in tmp_path/in; {tmp}/absolute in tmp_path
    code, _, err = cli("train", "digit4", "--runs-dir", inner / "runs", "--name", name.format(tmp=tmp_path),
                       f"data.path={digit4_dir}")
    assert_user_error(code, err, "a run name is one directory name")
    assert list(tmp_path.iterdir()) == []  # nothing written inside or outside the runs dir


def test_paths_print_as_typed_not_as_markup(cli, tmp_path):
    odd = tmp_path / "[bold]data[/bold]" / "x[" / "y]\\"
    code, _, err = cli("data", "info", odd)
    assert_user_error(code, err, str(odd))


def test_a_runs_dir_that_is_a_file_is_one_line_naming_it(cli, tmp_path, digit4_dir):
    (tmp_path / "file").write_text("not a directory")
    code, _, err = cli("train", "digit4", "--runs-dir", tmp_path / "file", "--name", "r", f"data.path={digit4_dir}")
    assert_user_error(code, err, str(tmp_path / "file"), "Not a directory")


def test_cli_resume_matches_uninterrupted(cli, tmp_path, digit4_dir):
    common = ["--runs-dir", tmp_path, "--no-progress", f"data.path={digit4_dir}", *TINY_MODEL]
    assert cli("train", "digit4", "--name", "straight", "train.max_steps=9", *common)[0] == 0
    assert cli("train", "digit4", "--name", "split", "train.max_steps=4", *common)[0] == 0
    assert cli("train", "digit4", "--resume", tmp_path / "digit4" / "split", "train.max_steps=9", "--runs-dir", tmp_path, "--no-progress")[0] == 0
    a = load_checkpoint(tmp_path / "digit4" / "straight" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "digit4" / "split" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sample_writes_picture_and_arrays(cli, trained_run, tmp_path):
    out = tmp_path / "s.png"
    code, stdout, _ = cli("sample", trained_run, "--n", 4, "--steps", 3, "--solver", "midpoint", "--out", out)
    assert code == 0 and out.stat().st_size > 0
    import numpy as np

    arrays = np.load(tmp_path / "s.npz")
    assert arrays["generated"].shape == (4, 64, 2) and np.isfinite(arrays["generated"]).all()


def test_sample_unconditional_needs_a_prior_flow(cli, trained_run):
    code, _, err = cli("sample", trained_run, "--unconditional")
    assert_user_error(code, err, "use_prior_flow")


@pytest.mark.parametrize("args, fragment", [(["sample", "{run}", "--n", "0"], "'n': expected a value >= 1"),
                                            (["eval", "chamfer", "{run}", "limit=0"], "'limit': expected a value >= 1"),
                                            (["sample", "{run}", "n=many"], "'n': expected int"),
                                            (["train", "digit4", "--gpus", "0"], "Invalid value")])
def test_out_of_range_options_are_usage_errors(cli, trained_run, args, fragment):
    code, _, err = cli(*[a.format(run=trained_run) for a in args])
    assert code == 2 and "Traceback" not in err and fragment in err


def test_sample_bad_solver_and_missing_run(cli, trained_run, tmp_path):
    code, _, err = cli("sample", trained_run, "--solver", "leapfrog")
    assert_user_error(code, err, "leapfrog")
    code, _, err = cli("sample", tmp_path / "no-run")
    assert_user_error(code, err, "not a genflow run directory")


def test_eval_chamfer_json(cli, trained_run):
    code, out, _ = cli("eval", "chamfer", trained_run, "--json", "--steps", 3)
    assert code == 0
    result = json.loads(out)
    assert result["clouds"] > 0 and 0 < result["noise_floor_l2"] < result["chamfer_l2"]
    assert result["ratio_to_floor_l2"] == pytest.approx(result["chamfer_l2"] / result["noise_floor_l2"])
    saved = json.loads((trained_run / "eval" / "chamfer-test-best.json").read_text())  # for runs ls and the model card
    assert saved["chamfer_l2"] == result["chamfer_l2"] and saved["options"]["steps"] == 3


def test_eval_unknown_metric(cli, trained_run):
    code, _, err = cli("eval", "fid", trained_run)
    assert_user_error(code, err, "no 'fid' evaluation", "chamfer")


def test_eval_compare_needs_a_recipe_with_samplers_to_compare(cli, trained_run, tmp_path):
    code, _, err = cli("eval", "compare", trained_run, "--out", tmp_path)
    assert_user_error(code, err, "recipe 'digit4' has no sampler comparison")


def test_export_safetensors_and_onnx(cli, trained_run, tmp_path):
    from safetensors.torch import load_file

    code, _, _ = cli("export", trained_run, "--format", "safetensors", "--out", tmp_path)
    assert code == 0
    weights = load_file(tmp_path / "model.safetensors")
    state = load_checkpoint(trained_run / "checkpoints" / "best.pt")["model"]
    assert weights.keys() == state.keys() and all(torch.equal(weights[k], state[k]) for k in state)
    pytest.importorskip("onnxruntime")
    code, out, _ = cli("export", trained_run, "--format", "onnx", "--out", tmp_path)
    assert code == 0 and (tmp_path / "encoder.onnx").exists() and (tmp_path / "velocity_field.onnx").exists()
    # parity on shapes other than the export's example inputs (dynamic batch and point axes)
    import onnxruntime

    from genflow.engine.run_dir import load_run

    model = load_run(trained_run).model
    points, x, t = torch.randn(3, 77, 2), torch.randn(3, 41, 2), torch.rand(3)
    encoder = onnxruntime.InferenceSession(str(tmp_path / "encoder.onnx"))
    field = onnxruntime.InferenceSession(str(tmp_path / "velocity_field.onnx"))
    with torch.no_grad():
        context = model.encode(points)["context"]
        velocity = model.field(x, t, context)
    onnx_context = encoder.run(None, {"points": points.numpy()})[0]
    onnx_velocity = field.run(None, {"x": x.numpy(), "t": t.numpy(), "context": context.numpy()})[0]
    assert abs(onnx_context - context.numpy()).max() < 1e-4
    assert abs(onnx_velocity - velocity.numpy()).max() < 1e-4
    code, _, err = cli("export", trained_run, "--format", "tflite")
    assert_user_error(code, err, "safetensors or onnx")


def test_debug_shows_the_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "genflow.cli", "--debug", "data", "info", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "genflow.cli", "data", "info", str(tmp_path / "nope")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_resume_auto_with_a_name_starts_that_run_or_continues_it(cli, tmp_path, digit4_dir):
    common = ["--runs-dir", tmp_path, "--no-progress", f"data.path={digit4_dir}", *TINY_MODEL]
    assert cli("train", "digit4", "--name", "job", "--resume", "auto", "train.epochs=1", *common)[0] == 0  # first start
    assert cli("train", "digit4", "--name", "job", "--resume", "auto", "train.epochs=2", *common)[0] == 0  # requeued
    assert load_checkpoint(tmp_path / "digit4" / "job" / "checkpoints" / "last.pt")["progress"]["epoch"] == 2
    assert [p.name for p in (tmp_path / "digit4").iterdir()] == ["job"]


def test_resume_auto_continues_the_latest_run(cli, tmp_path, digit4_dir):
    common = ["--runs-dir", tmp_path, "--no-progress", f"data.path={digit4_dir}", *TINY_MODEL]
    assert cli("train", "digit4", "--name", "a", "train.epochs=1", *common)[0] == 0
    code, out, _ = cli("train", "digit4", "--resume", "auto", "train.epochs=2", "--runs-dir", tmp_path, "--no-progress")
    assert code == 0 and str(tmp_path / "digit4" / "a") in out
    assert load_checkpoint(tmp_path / "digit4" / "a" / "checkpoints" / "last.pt")["progress"]["epoch"] == 2


def test_vae_with_prior_flow_samples_unconditionally(cli, tmp_path, digit4_dir):
    code = main(["train", "digit4", "--runs-dir", str(tmp_path), "--name", "prior", "--no-progress", f"data.path={digit4_dir}",
                 "train.epochs=1", "model.use_vae=true", "model.use_prior_flow=true", "model.prior_hidden=32",
                 "model.prior_depth=2", *TINY_MODEL])
    assert code == 0
    run_dir = tmp_path / "digit4" / "prior"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"kl", "prior_loss", "flow_loss"} <= set(metrics[0])
    code, _, _ = cli("sample", run_dir, "--unconditional", "--n", 3, "--steps", 3, "--out", tmp_path / "u.png")
    assert code == 0 and (tmp_path / "u.png").exists()
    code, out, _ = cli("eval", "chamfer", run_dir, "--json", "--steps", 3)
    result = json.loads(out)
    assert code == 0 and 0 <= result["cov_cd"] <= 1 and 0 <= result["1nna_cd"] <= 1 and result["mmd_cd"] > 0


def test_an_option_the_recipe_does_not_take_is_a_clear_error(cli, trained_run, tmp_path):
    code, _, err = cli("sample", trained_run, "--energy", tmp_path / "poses.npz")
    assert_user_error(code, err, "unknown digit4 sample option 'energy'", "valid options: n, seed")
    code, _, err = cli("eval", "chamfer", trained_run, "temprature=0.5")
    assert_user_error(code, err, "unknown digit4 eval chamfer option 'temprature'")
    code, _, err = cli("eval", "chamfer", trained_run, "stpes=3")
    assert_user_error(code, err, "did you mean steps?")


# --- honest numbers: val for choosing, test for reporting; precision; logs; runs that travel ----------------
def test_best_is_chosen_on_val_never_test_and_eval_reports_test(cli, tmp_path, digit4_dir, opened_splits):
    code, _, err = cli("train", "digit4", "--runs-dir", tmp_path, "--name", "v", "--no-progress", f"data.path={digit4_dir}",
                       "train.epochs=3", "train.eval_every=1", *TINY_MODEL)
    assert code == 0, err
    assert "val" in opened_splits and "test" not in opened_splits  # training never reads the test split
    run = tmp_path / "digit4" / "v"
    val_records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in line]
    best = load_checkpoint(run / "checkpoints" / "best.pt")["best"]
    assert best["value"] == min(r["chamfer_l2"] for r in val_records)
    opened_splits.clear()
    code, out, _ = cli("eval", "chamfer", run, "--json", "--steps", 3)
    assert code == 0 and json.loads(out)["split"] == "test" and opened_splits[-1] == "test"
    code, out, _ = cli("eval", "chamfer", run, "--json", "--steps", 3, "--split", "val")
    assert code == 0 and json.loads(out)["split"] == "val"
    code, _, err = cli("eval", "chamfer", run, "--split", "tset")
    assert_user_error(code, err, "'split'", "'tset'", "'test' | 'val'")


def test_a_dataset_without_val_names_the_command_that_rebuilds_it(cli, tmp_path, digit4_dir):
    import shutil

    old = tmp_path / "old-digit4"
    shutil.copytree(digit4_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["splits"]["val"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = cli("train", "digit4", "--runs-dir", tmp_path, f"data.path={old}", *TINY_MODEL)
    assert_user_error(code, err, "no 'val' split", "genflow data make digit4")


@pytest.mark.parametrize("precision", ["no", "32", "fp32", "auto"])
def test_precision_spellings_train_from_the_cli(cli, tmp_path, digit4_dir, precision):
    import yaml

    code, out, err = cli("train", "digit4", "--runs-dir", tmp_path, "--name", "p", "--no-progress", f"data.path={digit4_dir}",
                         "train.max_steps=2", "--precision", precision, *TINY_MODEL)
    assert code == 0, err
    doc = yaml.safe_load((tmp_path / "digit4" / "p" / "config.yaml").read_text())
    if precision != "auto":
        assert doc["runtime"]["precision"] == "no" and "precision" in out and "fp32" in out
    assert doc["config"]["train"]["precision"] == ("auto" if precision == "auto" else "no")


def test_a_log_file_gets_progress_lines_with_throughput_and_eta_before_the_first_epoch_ends(tmp_path, digit4_dir):
    log = tmp_path / "train.log"
    with log.open("w") as handle:  # stdout is a file, as under SLURM or nohup
        proc = subprocess.run([sys.executable, "-m", "genflow.cli", "train", "digit4", "--runs-dir", str(tmp_path),
                               f"data.path={digit4_dir}", "train.epochs=2", "train.eval_every=1", *TINY_MODEL, "train.log_every=1"],
                              stdout=handle, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = log.read_text().splitlines()
    first_eval = next(i for i, line in enumerate(lines) if line.startswith("epoch 1/2 eval:"))
    progress = [line for line in lines[:first_eval] if line.startswith("epoch 1/2  step ")]
    assert len(progress) >= 2  # several lines inside epoch 1, before its evaluation
    assert all("samples/s" in line and " eta " in line for line in progress)


def test_a_run_is_evaluated_from_any_directory_and_follows_moved_data(cli, tmp_path, digit4_dir, monkeypatch):
    import shutil

    home = tmp_path / "project"
    shutil.copytree(digit4_dir, home / "datasets" / "digit4")
    monkeypatch.chdir(home)  # relative paths, as a user types them
    code, _, err = cli("train", "digit4", "--runs-dir", "runs", "--name", "r", "--no-progress", "data.path=datasets/digit4",
                       "train.max_steps=2", *TINY_MODEL)
    assert code == 0, err
    run = home / "runs" / "digit4" / "r"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = cli("eval", "chamfer", run, "--json", "--steps", 2)
    assert code == 0, err
    shutil.move(str(home / "datasets"), str(tmp_path / "moved"))
    code, _, err = cli("eval", "chamfer", run, "--steps", 2)
    assert_user_error(code, err, "is not there", "data.path=DIR")
    code, out, err = cli("eval", "chamfer", run, f"data.path={tmp_path / 'moved' / 'digit4'}", "--json", "--steps", 2)
    assert code == 0 and json.loads(out)["clouds"] > 0, err
    code, _, err = cli("eval", "chamfer", run, "model.field_hidden=8")
    assert_user_error(code, err, "model and training config are fixed")
    import yaml

    doc = yaml.safe_load((run / "config.yaml").read_text())
    digest = hashlib.sha256((tmp_path / "moved" / "digit4" / "manifest.json").read_bytes()).hexdigest()  # moved above
    assert doc["data_path"] == {"key": "data.path", "given": "datasets/digit4", "absolute": str(home / "datasets" / "digit4"),
                                "manifest_sha256": digest}  # which data the run trained on
    cores = doc["runtime"]["cpu_cores"]
    assert 1 <= cores["usable"] <= cores["machine"] and doc["runtime"]["cuda"] is None
