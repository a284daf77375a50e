"""VAE priors of two-hand poses (90 = 2 x 15 joints x axis-angle), with an energy for ranking poses.

* ``standard``: the pose as a flat (B, 90) vector, Gaussian reconstruction with a learned (or fixed)
  per-dimension sigma.
* ``so3``: the pose as 30 rotations. The encoder reads each joint's rotation matrix (no axis-angle
  wrap-around); the decoder outputs a 6-D rotation per joint (Zhou et al. 2019) turned into a matrix;
  the reconstruction term is an isotropic Gaussian on the tangent space of SO(3) in the geodesic
  angle θ between input and output rotation: θ² / (2σ²) + 3 ln σ + 3/2 ln 2π per joint, σ (radians)
  learned.

Both: a diagonal-Gaussian posterior, KL to N(0, I) weighted by β (warm-up, :func:`kl_weight`) with
optional free bits per latent dimension (:func:`kl_with_free_bits`). `energy(poses)` is the negative
ELBO at β = 1 without free bits (lower = more plausible), or an importance-weighted bound with K
samples (`samples=K`), for ranking hand-pose hypotheses.

:class:`SourceHandPoseVAE` is the network of smplx-pose-priors (`architecture: source`), for its users'
checkpoints and for measuring genflow's model beside it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genflow.errors import ConfigError
from genflow_recipes.hand_vae.rotations import axis_angle_to_matrix, geodesic_angle, matrix_to_axis_angle, rotation_6d_to_matrix

__all__ = ["HandPoseVAE", "SourceHandPoseVAE", "source_parameter_names", "kl_weight", "kl_with_free_bits", "gaussian_kl"]

NUM_JOINTS = 30


def kl_weight(epoch: float, warmup_epochs: float, beta_max: float) -> float:
    """β after `epoch` (fractional) epochs: linear from 0 to `beta_max` over `warmup_epochs`."""
    if warmup_epochs <= 0:
        return beta_max
    return beta_max * min(1.0, max(0.0, epoch) / warmup_epochs)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per latent dimension: (B, z)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)


def kl_with_free_bits(kl_per_dim: torch.Tensor, free_bits: float) -> torch.Tensor:
    """Σ_d max(mean_batch KL_d, free_bits) (nats): dimensions below the floor get no gradient to collapse."""
    per_dim = kl_per_dim.mean(0)
    return (torch.clamp(per_dim, min=free_bits) if free_bits > 0 else per_dim).sum()


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, outputs))


class _PoseVAE(nn.Module):
    """What both networks share: training terms, energy, reconstruction and sampling, written against
    `encode(poses) -> (mu, logvar)`, `decoder(z) -> raw`, `recon_nll(poses, raw)`, `poses_from_raw(raw)`
    and `joint_errors(poses, raw)`."""

    z_dim: int

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def kl_penalty(self, kl_dims: torch.Tensor, free_bits: float) -> torch.Tensor:
        """The KL term of the training loss from the per-sample, per-dimension KL (B, z)."""
        return kl_with_free_bits(kl_dims, free_bits)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> poses (B, 90) axis-angle."""
        return self.poses_from_raw(self.decoder(z))

    # --- training -------------------------------------------------------------------------------------
    def forward(self, poses: torch.Tensor, noise: torch.Tensor, beta: float, free_bits: float = 0.0) -> dict[str, torch.Tensor]:
        """Loss terms of a batch; `noise` (B, z) standard normal for the reparameterisation."""
        mu, logvar = self.encode(poses)
        z = mu + (0.5 * logvar).exp() * noise
        raw = self.decoder(z)
        recon = self.recon_nll(poses, raw).mean()
        kl_dims = gaussian_kl(mu, logvar)
        kl = kl_dims.sum(-1).mean()
        loss = recon + beta * self.kl_penalty(kl_dims, free_bits)
        return {"loss": loss, "recon_nll": recon.detach(), "kl": kl.detach(), "elbo": -(recon + kl).detach()}

    # --- ranking ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def energy(self, poses: torch.Tensor, samples: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) energy: lower = more plausible.

        `samples` = 0: -ELBO at β = 1 without free bits, with the reconstruction at the posterior mean
        (deterministic). `samples` = K > 0: -log of the importance-weighted estimate
        (1/K) Σ_k p(x | z_k) p(z_k) / q(z_k | x), z_k ~ q(z | x) (a tighter bound, seeded by `generator`).
        """
        poses = poses.to(self.device, torch.float32)
        mu, logvar = self.encode(poses)
        if samples <= 0:
            return self.recon_nll(poses, self.decoder(mu)) + gaussian_kl(mu, logvar).sum(-1)
        std = (0.5 * logvar).exp()
        log_w = []
        for _ in range(samples):
            eps = torch.randn(mu.shape, generator=generator).to(mu.device)
            z = mu + std * eps
            log_p_z = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
            log_q = -0.5 * (eps.pow(2) + math.log(2 * math.pi)).sum(-1) - (0.5 * logvar).sum(-1)
            log_w.append(-self.recon_nll(poses, self.decoder(z)) + log_p_z - log_q)
        return -(torch.logsumexp(torch.stack(log_w), 0) - math.log(samples))

    @torch.no_grad()
    def reconstruct(self, poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstructed poses (B, 90), per-joint geodesic error (B, 30) in radians), at the posterior mean."""
        mu, _ = self.encode(poses)
        raw = self.decoder(mu)
        return self.poses_from_raw(raw), self.joint_errors(poses, raw)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` poses (n, 90) decoded from z ~ N(0, I) (decoder means)."""
        z = torch.randn(n, self.z_dim, generator=generator).to(self.device)
        return self.decode(z)

    @torch.no_grad()
    def latent_means(self, poses: torch.Tensor) -> torch.Tensor:
        return self.encode(poses)[0]


class HandPoseVAE(_PoseVAE):
    """model_type ``standard`` | ``so3`` (see the module docstring). Poses in and out are (B, 90) axis-angle."""

    def __init__(self, model_type: str = "standard", z_dim: int = 24, hidden: int = 256, learn_sigma: bool = True,
                 init_sigma: float = 0.1):
        super().__init__()
        if model_type not in ("standard", "so3"):
            raise ConfigError(f"config key 'model.model_type': expected 'standard' or 'so3', got '{model_type}'")
        self.model_type, self.z_dim = model_type, z_dim
        inputs = NUM_JOINTS * 3 if model_type == "standard" else NUM_JOINTS * 9
        outputs = NUM_JOINTS * 3 if model_type == "standard" else NUM_JOINTS * 6
        self.encoder = _mlp(inputs, hidden, 2 * z_dim)
        self.decoder = _mlp(z_dim, hidden, outputs)
        sigma_shape = (NUM_JOINTS * 3,) if model_type == "standard" else (1,)
        log_sigma = torch.full(sigma_shape, math.log(init_sigma))
        self.log_sigma = nn.Parameter(log_sigma, requires_grad=learn_sigma)

    # --- pieces ---------------------------------------------------------------------------------------
    def encode(self, poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.model_type == "standard":
            x = poses
        else:
            with torch.autocast(poses.device.type, enabled=False):  # rotation algebra in fp32 under mixed precision
                x = axis_angle_to_matrix(poses.float().view(-1, NUM_JOINTS, 3)).flatten(1)
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar.clamp(-12, 8)

    def poses_from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """The decoder's output -> poses (B, 90) axis-angle."""
        if self.model_type == "standard":
            return raw
        return matrix_to_axis_angle(rotation_6d_to_matrix(raw.float().view(-1, NUM_JOINTS, 6))).flatten(1)

    def recon_nll(self, poses: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """-log p(x | z) per sample (B,), from the decoder's raw output."""
        log_sigma = self.log_sigma.clamp(-7, 2)
        if self.model_type == "standard":
            z = (poses - raw) / log_sigma.exp()
            return (0.5 * z.pow(2) + log_sigma + 0.5 * math.log(2 * math.pi)).sum(-1)
        theta = self.joint_errors(poses, raw)
        return (0.5 * theta.pow(2) / (2 * log_sigma).exp() + 3 * log_sigma + 1.5 * math.log(2 * math.pi)).sum(-1)

    def joint_errors(self, poses: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """Geodesic angle (B, 30) between each input joint rotation and its reconstruction (fp32 always)."""
        with torch.autocast(poses.device.type, enabled=False):
            target = axis_angle_to_matrix(poses.float().view(-1, NUM_JOINTS, 3))
            raw = raw.float()
            if self.model_type == "standard":
                recon = axis_angle_to_matrix(raw.view(-1, NUM_JOINTS, 3))
            else:
                recon = rotation_6d_to_matrix(raw.view(-1, NUM_JOINTS, 6))
            return geodesic_angle(target, recon)


# --- the source's network ---------------------------------------------------------------------------------
_STANDARDISE_EPS = 1e-6  # added to the standard deviation, as the source's model does


def _source_stack(inputs: int, hidden: int, layers: int, dropout: float) -> list[nn.Module]:
    blocks: list[nn.Module] = []
    for i in range(layers):
        blocks += [nn.Linear(inputs if i == 0 else hidden, hidden), nn.GELU(), nn.Dropout(dropout)]
    return blocks


class _SourceDecoder(nn.Module):
    """z -> raw: standard: (decoded mean, decoded log-variance) side by side (B, 180), in standardised
    units; so3: a 6-D rotation per joint (B, 180)."""

    def __init__(self, model_type: str, z_dim: int, hidden: int, layers: int, dropout: float, init_logvar: float):
        super().__init__()
        self.model_type = model_type
        norm = [nn.LayerNorm(hidden)] if model_type == "standard" else []
        self.body = nn.Sequential(*_source_stack(z_dim, hidden, layers, dropout), *norm)
        if model_type == "standard":
            self.mean = nn.Linear(hidden, NUM_JOINTS * 3)
            self.logvar = nn.Linear(hidden, NUM_JOINTS * 3)
            nn.init.zeros_(self.logvar.weight)
            nn.init.constant_(self.logvar.bias, init_logvar)
        else:
            self.rotation = nn.Linear(hidden, NUM_JOINTS * 6)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.body(z)
        if self.model_type == "standard":
            return torch.cat([self.mean(h), self.logvar(h).clamp(-8, 4)], dim=-1)
        return self.rotation(h)


def _clamped_geodesic_angle(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """arccos((tr(R1ᵀ R2) - 1) / 2) with the cosine kept 1e-6 inside [-1, 1], as the source's loss computes it
    (no gradient below ~0.08° and near 180°; genflow's own so3 model uses the atan2 form, smooth everywhere)."""
    cosine = ((R1.transpose(-1, -2) @ R2).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.arccos(cosine.clamp(-1 + 1e-6, 1 - 1e-6))


class SourceHandPoseVAE(_PoseVAE):
    """The hand VAE of smplx-pose-priors (`hand_vae_prior.py`, `hand_vae_prior_so3.py`), as its code intends.

    Encoder and decoder are `layers` x (Linear `hidden`, GELU, dropout). ``standard``: a LayerNorm closes
    each stack; the input is standardised with the training poses' mean and std (buffers `input_mean` /
    `input_std`); the decoder predicts a mean and a log-variance per dimension of each pose (initial
    log-variance -1.5, clamped to [-8, 4]), and the likelihood is Gaussian in standardised units.
    ``so3``: a LayerNorm opens the encoder, which reads the standardised axis-angle; the decoder outputs a
    6-D rotation per joint (the two rows of the source's convention); the likelihood is a 1-D Gaussian
    of each joint's geodesic angle with one learned σ (initial ln σ = -1.5): θ²/(2σ²) + ln σ + ½ ln 2π per
    joint, the angle as arccos of the clamped cosine. Free bits (so3's `free_bits`) floor each sample's KL
    per dimension.

    `pose_mean` / `pose_std` hold a standardisation applied *before* the network's own: identity for the
    intended model. The source as shipped standardises the poses in its data module and again in the
    model, and its so3 model turns the standardised numbers into rotations; a checkpoint trained that way
    gets its data module's statistics here (`genflow runs import smplx-pose-priors ... pipeline=shipped`),
    and then computes what it computed in the source, on raw poses in radians.
    """

    def __init__(self, model_type: str = "standard", z_dim: int = 24, hidden: int = 256, layers: int = 3,
                 dropout: float = 0.1):
        super().__init__()
        if model_type not in ("standard", "so3"):
            raise ConfigError(f"config key 'model.model_type': expected 'standard' or 'so3', got '{model_type}'")
        self.model_type, self.z_dim = model_type, z_dim
        dims = NUM_JOINTS * 3
        for name, value in (("pose_mean", 0.0), ("pose_std", 1.0), ("input_mean", 0.0), ("input_std", 1.0)):
            self.register_buffer(name, torch.full((dims,), value))
        if model_type == "standard":
            self.encoder = nn.Sequential(*_source_stack(dims, hidden, layers, dropout), nn.LayerNorm(hidden))
        else:
            self.encoder = nn.Sequential(nn.LayerNorm(dims), *_source_stack(dims, hidden, layers, dropout))
            self.log_sigma = nn.Parameter(torch.tensor(-1.5))
        self.mean_head = nn.Linear(hidden, z_dim)
        self.logvar_head = nn.Linear(hidden, z_dim)
        self.decoder = _SourceDecoder(model_type, z_dim, hidden, layers, dropout, init_logvar=-1.5)

    @torch.no_grad()
    def set_input_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """The training poses' per-dimension mean and std (std floored at 1e-6), as the source sets them."""
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp_min(1e-6))

    # --- pieces ---------------------------------------------------------------------------------------
    def _model_input(self, poses: torch.Tensor) -> torch.Tensor:
        """What the source's model receives: poses after the data module's standardisation (identity here
        unless imported from the shipped pipeline)."""
        return (poses.to(self.pose_mean.dtype) - self.pose_mean) / self.pose_std

    def _standardised(self, poses: torch.Tensor) -> torch.Tensor:
        return (self._model_input(poses) - self.input_mean) / (self.input_std + _STANDARDISE_EPS)

    def encode(self, poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(self._standardised(poses))
        limit = 10.0 if self.model_type == "standard" else 8.0
        return self.mean_head(h), self.logvar_head(h).clamp(-limit, limit)

    def _rotations(self, raw: torch.Tensor) -> torch.Tensor:
        """so3: the decoder's 6-D outputs -> rotation matrices (B, 30, 3, 3), rows as the source builds them."""
        return rotation_6d_to_matrix(raw.to(self.pose_mean.dtype).view(-1, NUM_JOINTS, 6)).transpose(-1, -2)

    def poses_from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        with torch.autocast(raw.device.type, enabled=False):
            if self.model_type == "standard":
                model_input = raw[..., : NUM_JOINTS * 3].to(self.input_std.dtype) * (self.input_std + _STANDARDISE_EPS) + self.input_mean
            else:
                model_input = matrix_to_axis_angle(self._rotations(raw)).flatten(1)
            return model_input * self.pose_std + self.pose_mean

    def recon_nll(self, poses: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        with torch.autocast(poses.device.type, enabled=False):
            raw = raw.to(self.pose_mean.dtype)  # fp32 (fp64 in the parity check) under mixed precision
            if self.model_type == "standard":
                mean, logvar = raw.chunk(2, dim=-1)
                x = self._standardised(poses)
                return 0.5 * (math.log(2 * math.pi) + logvar + (x - mean).pow(2) / logvar.exp()).sum(-1)
            target = axis_angle_to_matrix(self._model_input(poses).view(-1, NUM_JOINTS, 3))
            theta = _clamped_geodesic_angle(self._rotations(raw), target)
            log_sigma = self.log_sigma.to(raw.dtype)
            variance = (2 * log_sigma).exp() + 1e-8  # the source's guard
            return (0.5 * theta.pow(2) / variance).sum(-1) + 0.5 * NUM_JOINTS * (2 * log_sigma + math.log(2 * math.pi))

    def joint_errors(self, poses: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        with torch.autocast(poses.device.type, enabled=False):
            target = axis_angle_to_matrix(poses.to(self.pose_mean.dtype).view(-1, NUM_JOINTS, 3))
            recon = axis_angle_to_matrix(self.poses_from_raw(raw).view(-1, NUM_JOINTS, 3))
            return geodesic_angle(target, recon)

    def kl_penalty(self, kl_dims: torch.Tensor, free_bits: float) -> torch.Tensor:
        per_sample = torch.clamp(kl_dims, min=free_bits) if free_bits > 0 else kl_dims
        return per_sample.sum(-1).mean()


def source_parameter_names(model: SourceHandPoseVAE) -> dict[str, str]:
    """Each tensor of `model` -> its name in the source's model (without the LightningModule's `model.`
    prefix). `pose_mean` / `pose_std` have no counterpart (the source keeps that standardisation in its data
    module) and are left out."""
    heads = {"input_mean": "x_mean", "input_std": "x_std", "mean_head": "enc_mu", "logvar_head": "enc_logvar",
             "decoder.mean": "dec_mu", "decoder.logvar": "dec_logvar", "decoder.rotation": "dec_6d", "log_sigma": "log_sigma"}
    # the standard model's closing LayerNorms are modules of their own in the source (ln_enc / ln_dec)
    closing = {}
    if model.model_type == "standard":
        closing = {f"encoder.{len(model.encoder) - 1}": "ln_enc", f"decoder.body.{len(model.decoder.body) - 1}": "ln_dec"}
    names = {}
    for name in model.state_dict():
        module, _, leaf = name.rpartition(".")
        if name in ("pose_mean", "pose_std"):
            continue
        if name in heads:
            names[name] = heads[name]
        elif module in heads:
            names[name] = f"{heads[module]}.{leaf}"
        elif module in closing:
            names[name] = f"{closing[module]}.{leaf}"
        else:
            names[name] = name.replace("decoder.body.", "decoder.")
    return names
