"""`genflow runs import copilot4d best_model.pt`: a Moving MNIST world model trained by copilot4D, as a genflow run.

copilot4D's Moving MNIST scripts (`tests/mnist_diffusion/train_mnist_fast.py`, `train_mnist_full.py`)
save `best_model.pt` and `checkpoint_epoch{N}.pt`: a dict with `model_state_dict`,
`optimizer_state_dict`, `epoch`, `val_loss` (and, from the full script, `ema`) but no settings. The
sizes are read from the tensors: the width and vocabulary from `token_embed.weight`, the frame side
from `spatial_pos`, the depth from the `layers.N.` names, the action size from `action_proj.weight`.
An 18-row embedding is the fast script's model (vocab_size 17, `mmnist_wm_fast.yaml`), a 17-row one
the full script's (`mmnist_wm_full.yaml`). The number of attention heads is not in the tensors:
`num_heads=` gives it (default: 4 at width 128, the fast script's, and 6 at width 384, the full run's).

The file is read without the source's code (`load_foreign_checkpoint`: tensors load, any other
object becomes an inert placeholder). The weights are ported by name (:func:`copilot4d_parameter_name`)
into the recipe's `SimpleVideoTransformer` with the source's options (tied head, fixed temporal
sinusoids); `benchmarks/parity/mmnist_wm.py` checks that the two compute the same logits and loss.
The run's data must be made with the source's tokens: `genflow data make moving-mnist
preprocessing=copilot4d` (or `import moving-mnist FILE preprocessing=copilot4d`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genflow.engine import RunImporter
from genflow.errors import CheckpointError, ConfigError

__all__ = ["IMPORT_COPILOT4D_RUN", "Copilot4dRunOptions", "copilot4d_parameter_name", "copilot4d_sizes", "import_copilot4d_run"]

_BLOCK_PARTS = {"spatial_norm": "norm1", "temporal_norm": "norm2", "mlp_norm": "norm3", "spatial_attention.qkv": "spatial_attn.qkv",
                "spatial_attention.out": "spatial_attn.proj", "temporal_attention.qkv": "temporal_attn.qkv",
                "temporal_attention.out": "temporal_attn.proj", "mlp.0": "mlp.0", "mlp.2": "mlp.3"}
_TOP = {"spatial_position": "spatial_pos", "token_embedding.weight": "token_embed.weight", "action_projection.weight": "action_proj.weight",
        "action_projection.bias": "action_proj.bias", "head_norm.weight": "norm.weight", "head_norm.bias": "norm.bias"}
_HEADS_BY_WIDTH = {128: 4, 384: 6}  # the fast script's default; the full run's (FIXES_SUMMARY.md)


def copilot4d_parameter_name(name: str) -> str:
    """The copilot4D `SimpleVideoTransformer` tensor that genflow's parameter `name` holds."""
    if name in _TOP:
        return _TOP[name]
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", name)
    if match and match.group(2) in _BLOCK_PARTS:
        return f"layers.{match.group(1)}.{_BLOCK_PARTS[match.group(2)]}.{match.group(3)}"
    raise KeyError(f"{name}: no copilot4D counterpart (is the model built with the source's options?)")


def copilot4d_sizes(tensors: dict[str, Any], path: Path) -> dict[str, int]:
    """Model sizes of a copilot4D state dict: embed_dim, vocab_size, frame_size, num_layers, action_dim, mlp_ratio."""
    needed = ("token_embed.weight", "spatial_pos", "action_proj.weight", "layers.0.mlp.0.weight")
    absent = [key for key in needed if key not in tensors]
    if absent:
        raise CheckpointError(f"{path}: model_state_dict lacks {', '.join(absent)} (not a copilot4D SimpleVideoTransformer?)")
    rows, width = tensors["token_embed.weight"].shape
    positions = tensors["spatial_pos"].shape[-2]
    side = round(positions ** 0.5)
    if side * side != positions:
        raise CheckpointError(f"{path}: spatial_pos holds {positions} positions, not a square frame")
    layers = 1 + max(int(m.group(1)) for key in tensors if (m := re.match(r"layers\.(\d+)\.", key)))
    action_dim = tensors["action_proj.weight"].shape[1]
    if action_dim != 2:
        raise CheckpointError(f"{path}: actions of size {action_dim} (the source's one-hot directions); genflow's data holds "
                              "ego-centric [dx, dy] actions: import a run trained with --use_ego_centric")
    return {"embed_dim": width, "vocab_size": rows - 1, "frame_size": side, "num_layers": layers,
            "mlp_ratio": tensors["layers.0.mlp.0.weight"].shape[0] / width}


@dataclass
class Copilot4dRunOptions:
    name: str | None = None  # run name under runs_dir/mmnist-wm/ (default: copilot4d-<the checkpoint's folder>-<file stem>)
    runs_dir: str = "runs"  # root of run directories
    data_dir: str = "datasets/mmnist-copilot4d"  # shards made with preprocessing=copilot4d (the tokens the model learned)
    num_heads: int | None = None  # attention heads (not in the file; default: 4 at width 128, 6 at width 384)
    ema: bool = False  # take the full script's EMA weights (`ema.ema_model`) instead of the trained ones


def import_copilot4d_run(source: str | Path, options: Copilot4dRunOptions) -> dict[str, Any]:
    """Write a genflow mmnist-wm run of copilot4D's checkpoint `source`; returns what to print."""
    from genflow.config import load_config
    from genflow.engine import get_recipe, load_foreign_checkpoint, ported_summary, write_imported_run

    path = Path(source)
    state, placeholders = load_foreign_checkpoint(path)
    tensors = state.get("model_state_dict")
    if options.ema:
        ema = state.get("ema")
        tensors = ema.get("ema_model") if isinstance(ema, dict) else None
        if not isinstance(tensors, dict):
            raise CheckpointError(f"{path}: no 'ema' entry with 'ema_model' weights (saved by the full script only); drop ema=true")
    if not isinstance(tensors, dict):
        raise CheckpointError(f"{path}: no 'model_state_dict' entry (expected copilot4D's best_model.pt / checkpoint_epochN.pt)")
    sizes = copilot4d_sizes(tensors, path)
    if sizes["mlp_ratio"] != 4:
        raise CheckpointError(f"{path}: an MLP {sizes['mlp_ratio']} times the width; copilot4D's is 4")
    if sizes["vocab_size"] not in (16, 17):
        raise CheckpointError(f"{path}: {sizes['vocab_size'] + 1} embedding rows; copilot4D's scripts make 18 (fast) or 17 (full)")
    heads = options.num_heads or _HEADS_BY_WIDTH.get(sizes["embed_dim"])
    if heads is None:
        raise ConfigError(f"{path}: width {sizes['embed_dim']}: the number of attention heads is not in the file; give num_heads=")
    base = "mmnist_wm_fast" if sizes["vocab_size"] == 17 else "mmnist_wm_full"
    overrides = [f"model.{key}={sizes[key]}" for key in ("embed_dim", "num_layers", "vocab_size", "frame_size")]
    overrides += [f"model.num_heads={heads}", f"data.data_dir={options.data_dir}"]
    recipe_cls = get_recipe("mmnist-wm")
    recipe = recipe_cls(load_config(recipe_cls.config_class, recipe_cls.config_file(base), overrides))
    wanted = {name: copilot4d_parameter_name(name) for name in recipe.build_model().state_dict()}
    absent = [theirs for theirs in wanted.values() if theirs not in tensors]
    if absent:
        raise CheckpointError(f"{path}: model_state_dict lacks {len(absent)} of the model's tensors (e.g. {', '.join(absent[:3])})")
    weights = {ours: tensors[theirs].float().reshape(-1, sizes["embed_dim"]) if ours == "spatial_position" else tensors[theirs].float()
               for ours, theirs in wanted.items()}
    ignored = sorted(set(tensors) - set(wanted.values()) - {"output_proj.weight"})  # the tied head is the embedding
    epoch = state.get("epoch") if isinstance(state.get("epoch"), int) else None
    val_loss = float(state["val_loss"]) if isinstance(state.get("val_loss"), (int, float)) else None
    name = options.name or f"copilot4d-{path.resolve().parent.name}-{path.stem}"
    imported_from = {"codebase": "copilot4D (tests/mnist_diffusion)", "checkpoint": str(path.resolve()), "epoch": epoch,
                     "val_loss": val_loss, "weights": "ema" if options.ema else "model", "config": base,
                     "config_overrides": overrides, "placeholders": placeholders, "ignored_tensors": ignored}
    run_dir = write_imported_run(recipe=recipe, weights=weights, runs_root=options.runs_dir, name=name,
                                 imported_from=imported_from, progress={"epoch": epoch or 0})
    return {"run": str(run_dir), "config": f"{base} (D {sizes['embed_dim']}, {sizes['num_layers']} layers, {heads} heads, "
                                            f"{sizes['vocab_size'] + 1} classes)",
            "checkpoint": f"{path} (epoch {epoch}, val_loss {val_loss})",
            **ported_summary(weights, ignored, placeholders),
            "next": f"genflow sample {run_dir}   |   genflow eval video {run_dir}"}


def _import_run(options: Copilot4dRunOptions, source: Path) -> dict[str, Any]:
    return import_copilot4d_run(source, options)


IMPORT_COPILOT4D_RUN = RunImporter("copilot4d", "a copilot4D Moving MNIST checkpoint (best_model.pt) -> an mmnist-wm run",
                                   Copilot4dRunOptions, _import_run,
                                   source="copilot4D's best_model.pt or checkpoint_epochN.pt (tests/mnist_diffusion scripts)")
