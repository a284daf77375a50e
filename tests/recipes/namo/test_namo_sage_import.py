"""`genflow runs import sage-learning RUN`: a run directory in sage_learning's layout (Hydra config, Lightning
checkpoints, the source's parameter names, written here without the source's code) becomes a genflow run that
samples, evaluates and exports, and loading it runs none of the checkpoint's code."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
import yaml

from genflow.cli import main
from genflow.engine import load_run

PATCH, WIDTH, DEPTH, HEADS, IMAGE = 8, 32, 2, 2, 64
EXECUTED: list[str] = []


def _record(what: str) -> str:  # what a malicious checkpoint entry would call on loading
    EXECUTED.append(what)
    return what


class _LoopState:
    """Stands for a Lightning loop's state: a class genflow must not import or call."""

    def __reduce__(self):
        return (_record, ("a checkpoint entry ran code",))


def source_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """The source's DiT parameters (names and shapes as its Lightning module saves them) with random values."""
    g = torch.Generator().manual_seed(seed)
    d, tokens = WIDTH, (IMAGE // PATCH) ** 2
    shapes = {"network.patch_embed.proj.weight": (d, 8, PATCH, PATCH), "network.patch_embed.proj.bias": (d,),
              "network.pos_emb": (1, tokens, d),
              "network.time_mlp.net.0.weight": (4 * d, d), "network.time_mlp.net.0.bias": (4 * d,),
              "network.time_mlp.net.2.weight": (d, 4 * d), "network.time_mlp.net.2.bias": (d,),
              "network.norm.weight": (d,), "network.norm.bias": (d,),
              "network.unpatch.weight": (d, 1, PATCH, PATCH), "network.unpatch.bias": (1,)}
    for i in range(DEPTH):
        shapes.update({f"network.blocks.{i}.attn.in_proj_weight": (3 * d, d), f"network.blocks.{i}.attn.in_proj_bias": (3 * d,),
                       f"network.blocks.{i}.attn.out_proj.weight": (d, d), f"network.blocks.{i}.attn.out_proj.bias": (d,),
                       f"network.blocks.{i}.mlp.0.weight": (4 * d, d), f"network.blocks.{i}.mlp.0.bias": (4 * d,),
                       f"network.blocks.{i}.mlp.2.weight": (d, 4 * d), f"network.blocks.{i}.mlp.2.bias": (d,),
                       f"network.ada_proj.{i}.weight": (4 * d, d), f"network.ada_proj.{i}.bias": (4 * d,)})
    return {name: torch.randn(shape, generator=g) * 0.05 for name, shape in shapes.items()}


HYDRA_CONFIG = """\
name: {name}
seed: 7
num_workers: 4
batch_size: 16
max_epochs: 50
base_lr: 0.0002
image_size: {image}
sampling_steps: 20
data:
  _target_: src.data.mask_diffusion_data.MaskDiffusionDataModule
  data_dir: /somewhere/nov22/train/1_push
  batch_size: ${{batch_size}}
  image_size: ${{image_size}}
  use_coord_grid: true
model:
  _target_: src.model.generative_module.GenerativeModule
  network:
    _target_: src.model.dit.dit.DiT
    img_size: ${{image_size}}
    patch: {patch}
    in_ch: {in_ch}
    out_ch: 1
    dim: {dim}
    depth: {depth}
    heads: {heads}
{path}
  optimizer:
    _target_: torch.optim.AdamW
    _partial_: true
    lr: ${{base_lr}}
    weight_decay: 0.01
  aux_loss_weight: 0.005
  context_channels: 5
  target_channels: 1
trainer:
  _target_: lightning.pytorch.trainer.Trainer
  precision: 16-mixed
  gradient_clip_val: 1.0
  max_epochs: ${{max_epochs}}
paths:
  output_dir: ${{hydra:runtime.output_dir}}
"""
PATHS = {
    "fm": """  path:
    _target_: src.model.paths.fb_flow_matching_path.FBFlowMatchingPath
    scheduler: condot
  sampler:
    _target_: src.model.samplers.fb_ode_sampler.FBODESampler
    method: midpoint""",
    "diffusion": """  path:
    _target_: src.model.paths.hf_diffusion_path.HFDiffusionPath
    num_train_timesteps: 1000
    beta_schedule: squaredcos_cap_v2
    prediction_type: epsilon
  sampler:
    _target_: src.model.samplers.hf_diffusion_sampler.HFDiffusionSampler
    sampler_type: ddim
    eta: 0.0""",
}


def write_sage_run(root, kind: str, *, in_ch: int = 8):
    """A run directory as sage_learning's training leaves it: .hydra/config.yaml and three Lightning checkpoints."""
    run = root / "outputs" / kind / "2025-11-02" / "10-31-00"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(HYDRA_CONFIG.format(name=kind, image=IMAGE, patch=PATCH, in_ch=in_ch, dim=WIDTH,
                                                                    depth=DEPTH, heads=HEADS, path=PATHS[kind]))
    module = types.ModuleType("lightning_loops_standin")  # pickled by reference, then removed: the loader must not need it
    module._LoopState, _LoopState.__module__ = _LoopState, module.__name__
    sys.modules[module.__name__] = module
    (run / "checkpoints").mkdir()
    try:
        for file, epoch, seed in (("epoch012-val_loss0.9000.ckpt", 12, 1), ("epoch031-val_loss0.4000.ckpt", 31, 2),
                                  ("last.ckpt", 49, 3)):
            torch.save({"epoch": epoch, "global_step": 100 * epoch, "pytorch-lightning_version": "2.6.6",
                        "state_dict": source_state_dict(seed), "loops": {"fit_loop": _LoopState()},
                        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 2e-4}]}],
                        "hyper_parameters": {"aux_loss_weight": 0.005}}, run / "checkpoints" / file)
    finally:
        del sys.modules[module.__name__]
        _LoopState.__module__ = __name__
    return run


@pytest.mark.parametrize("kind, recipe", [("fm", "namo-fm"), ("diffusion", "namo-diffusion")])
def test_a_sage_learning_run_samples_evaluates_and_exports(tmp_path, namo_data, capsys, kind, recipe):
    source = write_sage_run(tmp_path, kind)
    runs = tmp_path / "runs"
    EXECUTED.clear()
    assert main(["runs", "import", "sage-learning", str(source), f"runs_dir={runs}", f"data_dir={namo_data}"]) == 0
    assert not EXECUTED, "loading the checkpoint ran code it named"
    run_dir = runs / recipe / "sage-2025-11-02-10-31-00"
    doc = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert doc["recipe"] == recipe and doc["imported_from"]["checkpoint"].endswith("epoch031-val_loss0.4000.ckpt")
    network = doc["config"]["model"]["network"]
    assert (network["architecture"], network["patch_size"], network["hidden_size"], network["depth"]) == (
        "sage_learning", PATCH, WIDTH, DEPTH)
    assert doc["config"]["train"]["lr"] == 0.0002 and doc["config"]["train"]["seed"] == 7  # ${base_lr}, resolved

    run = load_run(run_dir)
    expected = source_state_dict(2)  # the lowest val_loss
    assert torch.equal(run.model.dit.position_embedding, expected["network.pos_emb"])
    assert torch.equal(run.model.dit.blocks[1].qkv.weight, expected["network.blocks.1.attn.in_proj_weight"])
    assert torch.equal(run.model.dit.head_weight, expected["network.unpatch.weight"])

    capsys.readouterr()
    assert main(["sample", str(run_dir), "n=2", "samples_per_scene=2", "poses=true", "steps=2"]) == 0
    assert main(["eval", "namo", str(run_dir), "limit=2", "samples_per_scene=2", "steps=2", "figure=false", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["scenes"] == 2 and "proposals_acceptance_rate" in result
    assert main(["export", str(run_dir), "--format", "safetensors", "--out", str(tmp_path / "export")]) == 0


def test_a_chosen_checkpoint_is_taken_and_an_imported_run_is_not_resumed(tmp_path, namo_data, capsys):
    source = write_sage_run(tmp_path, "fm")
    runs = tmp_path / "runs"
    assert main(["runs", "import", "sage-learning", str(source), f"runs_dir={runs}", "name=last", "checkpoint=last.ckpt",
                 f"data_dir={namo_data}"]) == 0
    run = load_run(runs / "namo-fm" / "last")
    assert torch.equal(run.model.dit.position_embedding, source_state_dict(3)["network.pos_emb"])
    capsys.readouterr()
    assert main(["train", "namo-fm", "--resume", str(runs / "namo-fm" / "last"), "--no-progress"]) == 2
    assert "no optimiser state" in capsys.readouterr().err


def test_a_run_without_coordinate_channels_is_one_clear_line(tmp_path, capsys):
    source = write_sage_run(tmp_path, "fm", in_ch=6)
    assert main(["runs", "import", "sage-learning", str(source), f"runs_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "in_ch=6" in err and "use_coord_grid" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_a_directory_that_is_no_sage_run_is_one_clear_line(tmp_path, capsys):
    assert main(["runs", "import", "sage-learning", str(tmp_path)]) == 2
    assert ".hydra/config.yaml" in capsys.readouterr().err


def test_a_checkpoint_of_another_width_is_one_line_naming_the_tensor(tmp_path, capsys):
    source = write_sage_run(tmp_path, "fm")
    config = source / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace(f"dim: {WIDTH}", f"dim: {2 * WIDTH}"))  # the weights stay 32 wide
    assert main(["runs", "import", "sage-learning", str(source), f"runs_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "epoch031-val_loss0.4000.ckpt" in err and "shapes differ" in err and len(err.splitlines()) == 1
