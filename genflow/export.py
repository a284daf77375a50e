"""Exporting a trained run: safetensors weights + config, or ONNX graphs verified against torch, and a
model card (`README.md`) beside them that says what the weights are and how to load them."""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Iterable

import torch
import yaml

import genflow
from genflow.config import config_to_dict
from genflow.engine.metrics_log import read_metrics
from genflow.engine.run_dir import LoadedRun, read_run_config
from genflow.engine.run_table import saved_evaluations
from genflow.errors import GenflowError

__all__ = ["export_safetensors", "export_onnx", "write_model_card", "model_card_facts", "ONNX_TOLERANCE"]

ONNX_TOLERANCE = 1e-4  # max |onnxruntime - torch| accepted on the example inputs


def export_safetensors(run: LoadedRun, out_dir: Path) -> dict[Path, str]:
    """`model.safetensors` (weights; EMA weights when the run kept them) and `config.yaml` to rebuild it."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in run.model.state_dict().items()}
    metadata = {"recipe": run.recipe.name, "genflow_version": genflow.__version__, "checkpoint": str(run.checkpoint),
                "model": json.dumps(run.recipe.model_card())}
    weights_path = out_dir / "model.safetensors"
    save_file(weights, str(weights_path), metadata=metadata)
    config_path = out_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump({"recipe": run.recipe.name, "config": config_to_dict(run.config)}, sort_keys=False))
    params = sum(v.numel() for v in weights.values())
    return {weights_path: f"{len(weights)} tensors, {params:,} parameters", config_path: "recipe config"}


def export_onnx(run: LoadedRun, out_dir: Path, opset: int = 17) -> dict[Path, str]:
    """One `.onnx` file per graph the recipe declares, each checked with onnxruntime against torch."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise GenflowError("ONNX export needs the export extra: pip install -e '.[export]'") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[Path, str] = {}
    for name, (module, inputs, input_names, output_names, dynamic_axes) in run.recipe.export_graphs(run.model).items():
        module = module.eval()
        path = out_dir / f"{name}.onnx"
        with torch.no_grad():
            expected = module(*inputs)
            # The TorchScript-based exporter, deliberately: it handles `dynamic_axes` (any batch size and
            # number of points) for these graphs, where the torch.export-based one fails on them.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                # tracer notes about fixed-size unpacking (e.g. q, k, v): the graph is checked against torch below
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                torch.onnx.export(module, inputs, str(path), input_names=input_names, output_names=output_names,
                                  dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {n: t.detach().cpu().numpy() for n, t in zip(input_names, inputs)})[0]
        error = float((torch.from_numpy(got) - expected.cpu()).abs().max())
        if error > ONNX_TOLERANCE:
            raise GenflowError(f"{path}: ONNX output differs from torch by {error:.2e} (> {ONNX_TOLERANCE})")
        written[path] = f"inputs {input_names} -> {output_names}, max |onnx - torch| = {error:.1e}"
    return written


def model_card_facts(run: LoadedRun) -> dict[str, Any]:
    """What the model card's front matter records, from the run dir alone: recipe, the versions and
    machine that trained it, the checkpoint (or the checkpoints averaged into it), the data's manifest
    sha256, the best validation, the validation metrics of the exported epochs and the parameter count.

    The metrics are the validation records in `metrics.jsonl` (what training measured on val) and the
    results `genflow eval` saved for the exported checkpoint (`RUN/eval/NAME-SPLIT-CHECKPOINT.json`).
    """
    doc = read_run_config(run.run_dir)
    environment, runtime = doc.get("environment") or {}, doc.get("runtime") or {}
    averaged = run.state.get("averaged_from")
    positions = [(e.get("epoch"), e.get("step")) for e in averaged or [run.state.get("progress") or {}]]
    val = [r for r in read_metrics(run.run_dir) if r.get("kind") == "val"]
    facts: dict[str, Any] = {
        "recipe": run.recipe.name,
        "run": run.run_dir.name,
        "genflow_version": doc.get("genflow_version"),  # that trained the run
        "torch_version": environment.get("torch"),
        "trained_on": {key: runtime.get(key) for key in ("device", "cpu", "gpu", "world_size", "precision")},
        "checkpoint": run.checkpoint.name,
        "checkpoint_epochs": [epoch for epoch, _ in positions],
    }
    if averaged:
        facts["averaged_from"] = [dict(entry) for entry in averaged]
    facts["data_manifest_sha256"] = (doc.get("data_path") or {}).get("manifest_sha256")
    facts["best_val"] = _best_validation(run, val)
    running_best = f"{(facts['best_val'] or {}).get('metric')}_best"  # logged beside each validation; best_val has it
    facts["val_metrics"] = [{k: v for k, v in record.items() if k not in ("kind", running_best)}
                            for record in val if (record.get("epoch"), record.get("step")) in positions]  # not mid-epoch
    facts["eval"] = _saved_evaluations(run)
    facts["parameters"] = sum(p.numel() for p in run.model.parameters())
    facts["exported_with"] = {"genflow": genflow.__version__, "torch": str(torch.__version__),
                              "date": _dt.date.today().isoformat()}
    return facts


def _saved_evaluations(run: LoadedRun) -> list[dict[str, Any]]:
    """The numbers of each `genflow eval` result saved in the run for the exported checkpoint."""
    return [{"evaluation": saved["evaluation"], "split": saved["split"], **saved["numbers"]}
            for saved in saved_evaluations(run.run_dir)
            if saved["checkpoint"] == run.checkpoint.stem and saved["evaluation"] is not None]


def _best_validation(run: LoadedRun, val: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best of `train.best_metric` over the run's validations (metric, mode, value, epoch)."""
    train_cfg = getattr(run.config, "train", None)
    metric, mode = getattr(train_cfg, "best_metric", "val_loss"), getattr(train_cfg, "best_mode", "min")
    scored = [r for r in val if isinstance(r.get(metric), (int, float))]
    if not scored:
        best = run.state.get("best") or {}
        return {k: best.get(k) for k in ("metric", "mode", "value", "epoch")} if best.get("value") is not None else None
    pick = min if mode == "min" else max
    record = pick(scored, key=lambda r: r[metric])
    return {"metric": metric, "mode": mode, "value": float(record[metric]), "epoch": record["epoch"]}


def write_model_card(run: LoadedRun, out_dir: Path, *, files: Iterable[Path], weights_format: str) -> Path:
    """`out_dir/README.md`: YAML front matter (`model_card_facts`, and the exported `files`) and a short
    body: how to load the weights, the run's samples picture (copied beside it when the run has one) and
    the validation metrics of the exported epochs.

    `weights_format`: `safetensors` or `onnx` (which loading example the card shows).
    """
    import yaml

    out_dir = Path(out_dir)
    facts = model_card_facts(run)
    facts["format"] = weights_format
    facts["files"] = sorted({Path(f).name for f in files})
    picture = Path(run.run_dir) / "samples.png"
    if picture.is_file():
        shutil.copyfile(picture, out_dir / "samples.png")
        facts["files"] = sorted(set(facts["files"]) | {"samples.png"})
    source = (f"the average of {', '.join(e['file'] for e in facts['averaged_from'])}" if "averaged_from" in facts
              else f"checkpoint {facts['checkpoint']}")
    lines = [f"# {facts['recipe']}: {facts['run']}", "",
             f"Weights of the genflow recipe `{facts['recipe']}` exported by `genflow export` from {source}"
             + (f"; the run's best validation: {_describe_best(facts['best_val'])}." if facts["best_val"] else "."), "",
             "## Loading", "", "```python", *_loading_example(facts), "```", ""]
    if picture.is_file():
        lines += ["## Samples", "", "![samples](samples.png)", "",
                  "Drawn by the recipe at the run's last validation (`samples.png` of the run dir).", ""]
    averaged_note = (["Of each checkpoint averaged; the average itself was not validated.", ""]
                     if "averaged_from" in facts else [])
    lines += ["## Validation metrics", "", *averaged_note, *_metrics_table(facts["val_metrics"]), ""]
    for result in facts["eval"]:
        lines += [f"## `genflow eval {result['evaluation']}` on {result['split']}", "",
                  "| metric | value |", "|---|---|",
                  *(f"| {k} | {v:.6g} |" for k, v in result.items() if k not in ("evaluation", "split")), ""]
    front = yaml.safe_dump(facts, sort_keys=False, allow_unicode=True)
    path = out_dir / "README.md"
    path.write_text(f"---\n{front}---\n\n" + "\n".join(lines))
    return path


def _describe_best(best: dict[str, Any]) -> str:
    return f"{best['metric']} {best['value']:.6g} at epoch {best['epoch']}"


def _loading_example(facts: dict[str, Any]) -> list[str]:
    """A few lines of Python that rebuild the model from the exported files."""
    if facts["format"] == "onnx":
        graphs = [name for name in facts["files"] if name.endswith(".onnx")]
        sessions = [f"{Path(name).stem} = onnxruntime.InferenceSession({name!r})" for name in graphs]
        first = Path(graphs[0]).stem if graphs else "session"
        return ["import onnxruntime", "", *sessions,
                f"print([i.name for i in {first}.get_inputs()])  # {first}.run(None, {{name: numpy array}})"]
    return ["import yaml",
            "from safetensors.torch import load_file",
            "",
            "from genflow.config import config_from_dict",
            "from genflow.engine.recipe import get_recipe",
            "",
            "doc = yaml.safe_load(open(\"config.yaml\"))",
            "recipe_cls = get_recipe(doc[\"recipe\"])  # installed with genflow (or the package that declares it)",
            "model = recipe_cls(config_from_dict(recipe_cls.config_class, doc[\"config\"])).build_model()",
            "model.load_state_dict(load_file(\"model.safetensors\"))",
            "model.eval()"]


def _metrics_table(records: list[dict[str, Any]]) -> list[str]:
    """The validation records as a markdown table (one row per exported epoch)."""
    if not records:
        return ["No validation was recorded at the exported epochs (metrics.jsonl)."]
    names = [k for k in dict.fromkeys(k for r in records for k in r) if k not in ("epoch", "step")]
    rows = ["| epoch | step | " + " | ".join(names) + " |", "|" + "---|" * (2 + len(names))]
    for r in records:
        cells = [f"{r[n]:.6g}" if isinstance(r.get(n), float) else str(r.get(n, "")) for n in names]
        rows.append(f"| {r.get('epoch')} | {r.get('step')} | " + " | ".join(cells) + " |")
    return rows
