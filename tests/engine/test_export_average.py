"""Checkpoint averaging (`genflow export --average best:K | last:K`) and the model card export writes."""

import hashlib

import pytest
import torch
import yaml

from genflow.cli import main
from genflow.engine.checkpoint import (atomic_torch_save, average_checkpoints, checkpoints_to_average, load_checkpoint,
                                       write_averaged_checkpoint)
from genflow.engine.run_dir import load_run
from genflow.errors import CheckpointError, ConfigError
from support import TINY_MODEL


def save(path, model, ema=None, epoch=1):
    return atomic_torch_save({"model": model, "ema": ema, "progress": {"epoch": epoch, "step": 10 * epoch}}, path)


def test_averaging_two_checkpoints_gives_the_mean_weights(tmp_path):
    a = {"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([0.5], dtype=torch.float16), "count": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 6.0]), "h": torch.tensor([1.5], dtype=torch.float16), "count": torch.tensor(7)}
    mean = average_checkpoints([save(tmp_path / "a.pt", a), save(tmp_path / "b.pt", b)])
    assert torch.equal(mean["w"], torch.tensor([2.0, 4.0])) and mean["h"].dtype == torch.float16 and float(mean["h"]) == 1.0
    assert int(mean["count"]) == 7  # integer buffers: the newest (last) checkpoint's
    ema_a, ema_b = {k: v * 10 for k, v in a.items()}, {k: v * 10 for k, v in b.items()}
    mean = average_checkpoints([save(tmp_path / "ea.pt", a, ema_a), save(tmp_path / "eb.pt", b, ema_b)])
    assert torch.equal(mean["w"], torch.tensor([20.0, 40.0]))  # the EMA weights where the run kept them


def test_checkpoints_of_different_models_are_a_clear_error(tmp_path):
    a = save(tmp_path / "a.pt", {"w": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"b.pt: its weights are not those of a.pt \(missing w; extra v\)"):
        average_checkpoints([a, save(tmp_path / "b.pt", {"v": torch.zeros(2)})])
    with pytest.raises(CheckpointError, match=r"c.pt: w has shape \(3,\), a.pt has \(2,\)"):
        average_checkpoints([a, save(tmp_path / "c.pt", {"w": torch.zeros(3)})])
    with pytest.raises(CheckpointError, match="d.pt: holds EMA weights but a.pt does not"):
        average_checkpoints([a, save(tmp_path / "d.pt", {"w": torch.zeros(2)}, {"w": torch.zeros(2)})])


def test_best_k_and_last_k_pick_their_checkpoints_and_say_what_exists(tmp_path):
    top = [{"epoch": 5, "value": 0.1, "file": "top_epoch_0005.pt"}, {"epoch": 2, "value": 0.2, "file": "top_epoch_0002.pt"},
           {"epoch": 7, "value": 0.3, "file": "top_epoch_0007.pt"}]
    atomic_torch_save({"model": {}, "ema": None, "best": {"metric": "val_loss", "top": top}}, tmp_path / "last.pt")
    for entry in top:
        save(tmp_path / entry["file"], {"w": torch.zeros(1)}, epoch=entry["epoch"])
    for epoch in (10, 20, 30):
        save(tmp_path / f"epoch_{epoch:04d}.pt", {"w": torch.zeros(1)}, epoch=epoch)
    kind, k, paths = checkpoints_to_average(tmp_path, "best:2")
    assert (kind, k, [p.name for p in paths]) == ("best", 2, ["top_epoch_0002.pt", "top_epoch_0005.pt"])  # oldest first
    assert [p.name for p in checkpoints_to_average(tmp_path, "last:2")[2]] == ["epoch_0020.pt", "epoch_0030.pt"]
    with pytest.raises(CheckpointError, match=r"best:4: .* keeps 3 top checkpoint\(s\) \(top_epoch_0005.pt, top_epoch_0002.pt, "
                                              r"top_epoch_0007.pt\); train with train.keep_top_k=4"):
        checkpoints_to_average(tmp_path, "best:4")
    with pytest.raises(CheckpointError, match=r"last:4: .* 3 periodic checkpoint\(s\) \(epoch_0010, epoch_0020, epoch_0030\)"):
        checkpoints_to_average(tmp_path, "last:4")
    with pytest.raises(CheckpointError, match="keeps 0 top checkpoint"):
        checkpoints_to_average(tmp_path / "none", "best:1")
    for bad in ("top:2", "best:0", "best:x", "best"):
        with pytest.raises(ConfigError, match="expected best:K or last:K"):
            checkpoints_to_average(tmp_path, bad)


@pytest.fixture(scope="module")
def top_k_run(tmp_path_factory, digit4_dir):
    runs = tmp_path_factory.mktemp("runs")
    assert main(["train", "digit4", "--runs-dir", str(runs), "--name", "topk", "--no-progress", f"data.path={digit4_dir}",
                 "train.epochs=2", "train.eval_every=1", "train.keep_top_k=2", "train.log_with=none", *TINY_MODEL]) == 0
    return runs / "digit4" / "topk"


def front_matter(readme):
    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1]), text


def test_export_average_best_2_writes_the_mean_weights_and_a_model_card(top_k_run, digit4_dir, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    out = tmp_path / "export"
    assert main(["export", str(top_k_run), "--average", "best:2", "--out", str(out)]) == 0
    top = load_checkpoint(top_k_run / "checkpoints" / "last.pt")["best"]["top"]
    kept = [load_checkpoint(top_k_run / "checkpoints" / entry["file"])["model"] for entry in top]
    exported = load_file(out / "model.safetensors")
    assert not torch.equal(kept[0][next(iter(exported))], kept[1][next(iter(exported))])
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, (kept[0][name] + kept[1][name]) / 2 if tensor.is_floating_point() else kept[1][name])
    averaged = load_run(top_k_run, "average_best_2", need_data=False).model.state_dict()  # eval / sample take it by name
    assert all(torch.equal(averaged[k], exported[k]) for k in exported)

    card, text = front_matter(out / "README.md")
    epochs = sorted(entry["epoch"] for entry in top)
    assert card["recipe"] == "digit4" and card["checkpoint"] == "average_best_2.pt" and card["checkpoint_epochs"] == epochs
    assert [entry["file"] for entry in card["averaged_from"]] == [f"top_epoch_{e:04d}.pt" for e in epochs]
    assert card["data_manifest_sha256"] == hashlib.sha256((digit4_dir / "manifest.json").read_bytes()).hexdigest()
    assert card["best_val"]["epoch"] == top[0]["epoch"] and card["best_val"]["value"] == pytest.approx(top[0]["value"])
    assert [r["epoch"] for r in card["val_metrics"]] == epochs and all("val_loss" in r for r in card["val_metrics"])
    assert card["parameters"] > 0 and card["torch_version"] and card["trained_on"]["device"] == "cpu"
    assert (out / "samples.png").is_file() and "![samples](samples.png)" in text and "| epoch | step |" in text

    code = text.split("```python\n")[1].split("```")[0]  # the card's loading example runs as written
    monkeypatch.chdir(out)
    scope: dict = {}
    exec(code, scope)
    assert all(torch.equal(scope["model"].state_dict()[k], exported[k]) for k in exported)

    assert main(["export", str(top_k_run), "--average", "best:3", "--out", str(out)]) == 2
    assert "keeps 2 top checkpoint(s)" in capsys.readouterr().err
    assert main(["export", str(top_k_run), "--average", "best:2", "--checkpoint", "last"]) == 2
    assert "pass one" in capsys.readouterr().err


def test_the_model_card_of_a_plain_export_names_its_checkpoint(top_k_run, tmp_path):
    assert main(["export", str(top_k_run), "--checkpoint", "last", "--out", str(tmp_path)]) == 0
    card, _ = front_matter(tmp_path / "README.md")
    assert card["checkpoint"] == "last.pt" and card["checkpoint_epochs"] == [2] and "averaged_from" not in card
    assert card["files"] == ["config.yaml", "model.safetensors", "samples.png"] and card["format"] == "safetensors"
    assert card["eval"] == []
    assert main(["eval", "chamfer", str(top_k_run), "--checkpoint", "last", "steps=2", "--json"]) == 0  # saved in RUN/eval/
    assert main(["export", str(top_k_run), "--checkpoint", "last", "--out", str(tmp_path)]) == 0
    card, _ = front_matter(tmp_path / "README.md")
    assert [(e["evaluation"], e["split"], e["steps"]) for e in card["eval"]] == [("chamfer", "test", 2)]
    assert card["eval"][0]["chamfer_l2"] > 0
