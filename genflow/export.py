"""Exporting a trained run: safetensors weights + config, or ONNX graphs verified against torch."""

from __future__ import annotations

import json
import warnings
from pathlib import Path


import torch
import yaml

import genflow
from genflow.config import config_to_dict
from genflow.engine.run_dir import LoadedRun
from genflow.errors import GenflowError

__all__ = ["export_safetensors", "export_onnx", "ONNX_TOLERANCE"]

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


