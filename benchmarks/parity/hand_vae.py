"""hand-vae against smplx-pose-priors' own models: port the weights by name, compare outputs and loss.

    python benchmarks/parity/hand_vae.py --source /path/to/smplx-pose-priors [--data datasets/hands]

The source (github.com/keniel123/smplx-pose-priors) has no licence: it is read from a local copy given
by `--source`, never shipped or imported by genflow. Its two model files need only torch, so this runs
in genflow's environment. For each model (standard, so3) and each pipeline it builds the source's model
with its own initialisation, sets its standardisation from training poses, ports every tensor into
genflow's `SourceHandPoseVAE` (`source_parameter_names`, the map `genflow runs import smplx-pose-priors`
uses) and compares, in eval mode with the same reparameterisation noise, the encoder's mean and
log-variance, the decoder's output, the per-pose reconstruction NLL and KL, the loss and its gradients:

- `intended`: the source's model given raw poses (it standardises them once itself), which is what its
  code means to do;
- `shipped`: what its training script runs: its data module standardises the poses and its model
  standardises them again (and the so3 model reads the standardised numbers as radians); genflow holds
  the data module's statistics in `pose_mean` / `pose_std` and is given raw poses.

float64 is the parity check (goal: every difference <= 1e-5); float32 is printed beside it.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from genflow_recipes.hand_vae.model import SourceHandPoseVAE, source_parameter_names  # noqa: E402

TOLERANCE = 1e-5


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def training_poses(data: Path | None, n: int, seed: int) -> np.ndarray:
    if data is not None and (data / "manifest.json").is_file():
        from genflow.data import load_split

        return load_split(data, "train", ["pose"])["pose"][:n].astype(np.float64)
    from genflow_recipes.hand_vae.grasps import make_grasp_poses

    return make_grasp_poses(n, seed)[0].astype(np.float64)


def source_models(source: Path):
    sys.path.insert(0, str(source))
    try:
        from hand_vae_prior import HandVAEPrior
        from hand_vae_prior_so3 import HandVAEPriorSO3
    finally:
        sys.path.remove(str(source))
    return {"standard": HandVAEPrior, "so3": HandVAEPriorSO3}


def compare(model_type: str, pipeline: str, source_class, poses: np.ndarray, dtype: torch.dtype, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    theirs = source_class() if model_type == "standard" else source_class(free_bits=0.0)
    mean = torch.from_numpy(poses.mean(0)).float()
    std = torch.from_numpy(poses.std(0)).float()
    theirs.set_data_stats(mean, std)
    ours = SourceHandPoseVAE(model_type)
    state = theirs.state_dict()
    weights = {name: state[theirs_name] for name, theirs_name in source_parameter_names(ours).items()}
    if pipeline == "shipped":
        weights["pose_mean"], weights["pose_std"] = mean, std.clamp_min(1e-6)
    else:
        weights["pose_mean"], weights["pose_std"] = torch.zeros(90), torch.ones(90)
    ours.load_state_dict(weights, strict=True)
    theirs, ours = theirs.to(dtype).eval(), ours.to(dtype).eval()

    raw = torch.from_numpy(poses[:512]).to(dtype)
    given = (raw - mean.to(dtype)) / std.clamp_min(1e-6).to(dtype) if pipeline == "shipped" else raw
    given = given if model_type == "standard" else given.view(-1, 30, 3)

    torch.manual_seed(seed + 1)
    out = theirs(given)
    torch.manual_seed(seed + 1)
    noise = torch.randn(raw.shape[0], ours.z_dim, dtype=dtype)
    mu, logvar = ours.encode(raw)
    decoded = ours.decoder(mu + (0.5 * logvar).exp() * noise)
    recon = ours.recon_nll(raw, decoded)
    kl = 0.5 * (logvar.exp() + mu.pow(2) - 1 - logvar).sum(-1)
    diffs = {"encoder mean": (mu - out["z_mu"]).abs().max(), "encoder log-variance": (logvar - out["z_logvar"]).abs().max(),
             "reconstruction NLL": (recon - out["recon_nll"]).abs().max(), "KL": (kl - out["kl"]).abs().max()}
    if model_type == "standard":
        diffs["decoded mean"] = (decoded[:, :90] - out["x_mu"]).abs().max()
        diffs["decoded log-variance"] = (decoded[:, 90:] - out["x_logvar"]).abs().max()

    beta = 0.7
    torch.manual_seed(seed + 2)
    loss_theirs, _ = theirs.elbo_loss(given, beta=beta)
    torch.manual_seed(seed + 2)
    loss_ours = ours(raw, torch.randn(raw.shape[0], ours.z_dim, dtype=dtype), beta)["loss"]
    diffs["loss"] = (loss_ours - loss_theirs).abs()
    ours_params, theirs_params = dict(ours.named_parameters()), dict(theirs.named_parameters())
    grads_ours = dict(zip(ours_params, torch.autograd.grad(loss_ours, list(ours_params.values()))))
    grads_theirs = dict(zip(theirs_params, torch.autograd.grad(loss_theirs, list(theirs_params.values()))))
    names = source_parameter_names(ours)
    diffs["loss gradients"] = max((grads_ours[name] - grads_theirs[names[name]]).abs().max() for name in grads_ours)
    diffs["loss value"] = loss_theirs
    return {key: float(value.detach()) for key, value in diffs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="a local copy of smplx-pose-priors")
    parser.add_argument("--data", type=Path, default=ROOT / "datasets" / "hands", help="hand shards (else generated poses)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.source / "hand_vae_prior.py").is_file():
        sys.exit(f"{args.source}: no hand_vae_prior.py (expected a copy of smplx-pose-priors)")
    commit = (args.source / "COMMIT").read_text().strip() if (args.source / "COMMIT").is_file() else "unknown commit"
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}; source {commit[:7]}")
    classes = source_models(args.source)
    poses = training_poses(args.data, 20_000, args.seed)
    worst = 0.0
    for model_type in ("standard", "so3"):
        for pipeline in ("intended", "shipped"):
            exact = compare(model_type, pipeline, classes[model_type], poses, torch.float64, args.seed)
            single = compare(model_type, pipeline, classes[model_type], poses, torch.float32, args.seed)
            loss = exact.pop("loss value")
            single.pop("loss value")
            print(f"\n{model_type}, {pipeline} pipeline (loss {loss:.4f}): max |genflow - source|, float64 / float32")
            for key, value in exact.items():
                print(f"  {key:<22} {value:.2e} / {single[key]:.2e}")
            worst = max(worst, *exact.values())
    verdict = "PASS" if worst <= TOLERANCE else "FAIL"
    print(f"\nworst float64 difference {worst:.2e} (goal <= {TOLERANCE:g}): {verdict}")
    sys.exit(0 if verdict == "PASS" else 1)


if __name__ == "__main__":
    main()
