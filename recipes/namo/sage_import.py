"""`genflow runs import sage-learning RUN_DIR`: a run trained by sage_learning, as a genflow run directory.

A sage_learning run directory (what its Hydra + Lightning training writes) holds `.hydra/config.yaml`,
the composed config with the network's, path's and sampler's settings (interpolations such as
`${image_size}` unresolved), and `checkpoints/*.ckpt`, Lightning checkpoints whose `state_dict` keeps
the DiT under `network.`. This reads both without the source's code: the YAML with a safe loader
(`${a.b}` references to keys of the same file are resolved; others, such as `${now:...}`, are left as
text and unused), the checkpoint with `load_foreign_checkpoint` (tensors load, every other object
becomes an inert placeholder). It builds namo-fm's or namo-diffusion's `source` config with the run's
sizes and settings, ports the weights by name (`sage_dit.sage_parameter_name`) and writes a run that
`genflow sample`, `eval` and `export` take.

Which checkpoint: `checkpoint=NAME` if given, else the lowest `val_loss` in the file names the
source's ModelCheckpoint writes (`epoch012-val_loss0.1234.ckpt`), else `last.ckpt`. (The source's own
`GoalInferenceModel` takes the first file whose name holds "epoch" in directory order, which can be
any of its top-3.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from genflow.engine import RunImporter
from genflow.errors import CheckpointError, ConfigError

__all__ = ["IMPORT_SAGE_RUN", "SageRunOptions", "read_hydra_config", "source_config_overrides", "import_sage_run"]

_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")  # ${a.b}; not ${resolver:...}


@dataclass
class SageRunOptions:
    name: str | None = None  # run name under runs_dir/<recipe>/ (default: sage-<the source run's date and time dirs>)
    runs_dir: str = "runs"  # root of run directories
    checkpoint: str | None = None  # a .ckpt in RUN_DIR/checkpoints (default: lowest val_loss in the names, else last.ckpt)
    data_dir: str = "datasets/namo"  # genflow shards the run samples and evaluates on (genflow data import namo ...)


def _lookup(root: dict[str, Any], dotted: str) -> Any:
    node: Any = root
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def _resolve(node: Any, root: dict[str, Any], depth: int = 0) -> Any:
    if isinstance(node, dict):
        return {k: _resolve(v, root, depth) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, root, depth) for v in node]
    if not isinstance(node, str) or depth > 10:
        return node
    whole = _REFERENCE.fullmatch(node)
    try:
        if whole:  # `${image_size}` keeps the referenced value's type
            return _resolve(_lookup(root, whole.group(1)), root, depth + 1)
        return _REFERENCE.sub(lambda m: str(_resolve(_lookup(root, m.group(1)), root, depth + 1)), node)
    except KeyError:
        return node


def read_hydra_config(path: str | Path) -> dict[str, Any]:
    """A Hydra run's `.hydra/config.yaml` as a dict, `${a.b}` references to its own keys resolved."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found (a sage_learning run directory holds .hydra/config.yaml)")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    return _resolve(doc, doc)


def _target(section: Any, key: str, path: Path) -> str:
    if not isinstance(section, dict) or not isinstance(section.get("_target_"), str):
        raise ConfigError(f"{path}: '{key}._target_' missing (not a sage_learning generative-module run?)")
    return section["_target_"]


def source_config_overrides(cfg: dict[str, Any], path: Path) -> tuple[str, list[str]]:
    """(recipe name, overrides of its `source` config) that compute what the source's config computes.

    Raises:
        ConfigError: a config genflow has no equivalent for, naming the key and what was expected.
    """
    model = cfg.get("model")
    if not _target(model, "model", path).endswith("GenerativeModule"):
        raise ConfigError(f"{path}: model._target_={model['_target_']!r}: only sage_learning's GenerativeModule runs "
                          "(config train_fb_flow_matching / train_hf_diffusion) can be imported")
    net = model.get("network")
    if not _target(net, "model.network", path).endswith("dit.DiT"):
        raise ConfigError(f"{path}: model.network._target_={net['_target_']!r}: expected the source's DiT")
    if net.get("in_ch", 6) != 8 or net.get("out_ch", 1) != 1:
        raise ConfigError(f"{path}: model.network.in_ch={net.get('in_ch', 6)}, out_ch={net.get('out_ch', 1)}: genflow's namo "
                          "networks take 5 context + 2 coordinate + 1 noisy channels (in_ch 8, data.use_coord_grid true) "
                          "and output 1")
    image_size = net.get("img_size", cfg.get("image_size", 32))
    overrides = [f"model.network.patch_size={net.get('patch', 4)}", f"model.network.hidden_size={net.get('dim', 256)}",
                 f"model.network.depth={net.get('depth', 8)}", f"model.network.num_heads={net.get('heads', 8)}",
                 f"data.image_size={image_size}", f"model.aux_loss_weight={model.get('aux_loss_weight', 0.0)}"]
    path_cfg, sampler = model.get("path"), model.get("sampler") or {}
    kind = _target(path_cfg, "model.path", path)
    if kind.endswith("FBFlowMatchingPath"):
        recipe = "namo-fm"
        overrides.append(f"model.path.scheduler={path_cfg.get('scheduler', 'condot')}")
        if sampler.get("method"):
            overrides.append(f"model.sampler.method={sampler['method']}")
    elif kind.endswith("HFDiffusionPath"):
        recipe = "namo-diffusion"
        overrides += [f"model.path.{key}={path_cfg[key]}" for key in ("num_train_timesteps", "beta_schedule", "prediction_type")
                      if key in path_cfg]
        overrides += [f"model.sampler.{key}={sampler[key]}" for key in ("sampler_type", "eta") if key in sampler]
    else:
        raise ConfigError(f"{path}: model.path._target_={kind!r}: expected FBFlowMatchingPath or HFDiffusionPath")
    optimizer = model.get("optimizer") or {}
    if str(optimizer.get("_target_", "torch.optim.AdamW")).rpartition(".")[2] != "AdamW":
        raise ConfigError(f"{path}: model.optimizer._target_={optimizer.get('_target_')!r}: expected torch.optim.AdamW")
    overrides += [f"train.lr={optimizer.get('lr', 1e-3)}", f"train.weight_decay={optimizer.get('weight_decay', 0.01)}"]
    trainer = cfg.get("trainer") or {}
    for ours, value in (("train.batch_size", cfg.get("batch_size")), ("train.epochs", cfg.get("max_epochs")),
                        ("train.seed", cfg.get("seed")), ("train.precision", trainer.get("precision")),
                        ("train.grad_clip", trainer.get("gradient_clip_val"))):
        if value is not None:
            overrides.append(f"{ours}={value}")
    return recipe, overrides


def _pick_checkpoint(run_dir: Path, chosen: str | None) -> Path:
    from genflow.engine import candidate_checkpoints

    folder = run_dir / "checkpoints"
    files = candidate_checkpoints(folder, chosen, what_writes_them="a sage_learning run keeps its checkpoints there")
    if chosen:
        return files[0]
    scored = [(float(m.group(1)), f) for f in files if (m := re.search(r"val_loss[=_]?(\d+(?:\.\d+)?)", f.name))]
    if scored:
        return min(scored)[1]
    return folder / "last.ckpt" if (folder / "last.ckpt").is_file() else files[-1]


def import_sage_run(source: str | Path, options: SageRunOptions) -> dict[str, Any]:
    """Write a genflow run of the sage_learning run directory `source`; returns what to print."""
    from genflow.config import load_config
    from genflow.engine import get_recipe, load_foreign_checkpoint, ported_summary, write_imported_run
    from genflow_recipes.namo.sage_dit import sage_checkpoint_key

    source = Path(source)
    if not source.is_dir():
        raise ConfigError(f"{source}: not a directory (expected a sage_learning run directory)")
    config_path = source / ".hydra" / "config.yaml"
    recipe_name, overrides = source_config_overrides(read_hydra_config(config_path), config_path)
    recipe_cls = get_recipe(recipe_name)
    base = "namo_fm_source" if recipe_name == "namo-fm" else "namo_diffusion_source"
    config = load_config(recipe_cls.config_class, recipe_cls.config_file(base), overrides + [f"data.data_dir={options.data_dir}"])
    recipe = recipe_cls(config)

    checkpoint = _pick_checkpoint(source, options.checkpoint)
    state, placeholders = load_foreign_checkpoint(checkpoint)
    tensors = state.get("state_dict")
    if not isinstance(tensors, dict):
        raise CheckpointError(f"{checkpoint}: no 'state_dict' entry (not a Lightning checkpoint?)")
    wanted = {name: sage_checkpoint_key(name) for name in recipe.build_model().state_dict()}
    absent = [theirs for theirs in wanted.values() if theirs not in tensors]
    if absent:
        raise CheckpointError(f"{checkpoint}: state_dict lacks {len(absent)} of the network's tensors "
                              f"(e.g. {', '.join(absent[:3])}); is it a run of the configured DiT?")
    weights = {ours: tensors[theirs].float() for ours, theirs in wanted.items()}
    ignored = sorted(set(tensors) - set(wanted.values()))
    # plain ints only: anything else the checkpoint holds there is a placeholder, not for config.yaml
    epoch, step = (value if isinstance(value, int) else None for value in (state.get("epoch"), state.get("global_step")))
    stamp = "-".join(source.resolve().parts[-2:])
    name = options.name or f"sage-{stamp}"
    imported_from = {"codebase": "sage_learning", "run_dir": str(source.resolve()), "checkpoint": str(checkpoint.resolve()),
                     "epoch": epoch, "global_step": step,
                     "lightning_version": str(state.get("pytorch-lightning_version")), "config_overrides": overrides,
                     "placeholders": placeholders, "ignored_tensors": ignored}
    run_dir = write_imported_run(recipe=recipe, weights=weights, runs_root=options.runs_dir, name=name,
                                 imported_from=imported_from,
                                 progress={"epoch": epoch or 0, "step": step or 0})
    return {"run": str(run_dir), "recipe": recipe_name, "checkpoint": str(checkpoint),
            "epoch / step": f"{epoch} / {step}",
            **ported_summary(weights, ignored, placeholders),
            "next": f"genflow sample {run_dir} poses=true   |   genflow eval namo {run_dir}"}


def _import_run(options: SageRunOptions, source: Path) -> dict[str, Any]:
    return import_sage_run(source, options)


IMPORT_SAGE_RUN = RunImporter("sage-learning", "a sage_learning run (Hydra config + Lightning checkpoint) -> a namo-fm / "
                              "namo-diffusion run", SageRunOptions, _import_run,
                              source="a sage_learning run directory (.hydra/config.yaml, checkpoints/*.ckpt)")
