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
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genflow.errors import ConfigError
from genflow_recipes.hand_vae.rotations import axis_angle_to_matrix, geodesic_angle, matrix_to_axis_angle, rotation_6d_to_matrix

__all__ = ["HandPoseVAE", "kl_weight", "kl_with_free_bits", "gaussian_kl"]

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


class HandPoseVAE(nn.Module):
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

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> poses (B, 90) axis-angle."""
        out = self.decoder(z)
        if self.model_type == "standard":
            return out
        return matrix_to_axis_angle(rotation_6d_to_matrix(out.view(-1, NUM_JOINTS, 6))).flatten(1)

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

    # --- training -------------------------------------------------------------------------------------
    def forward(self, poses: torch.Tensor, noise: torch.Tensor, beta: float, free_bits: float = 0.0) -> dict[str, torch.Tensor]:
        """Loss terms of a batch; `noise` (B, z) standard normal for the reparameterisation."""
        mu, logvar = self.encode(poses)
        z = mu + (0.5 * logvar).exp() * noise
        raw = self.decoder(z)
        recon = self.recon_nll(poses, raw).mean()
        kl_dims = gaussian_kl(mu, logvar)
        kl = kl_dims.sum(-1).mean()
        loss = recon + beta * kl_with_free_bits(kl_dims, free_bits)
        return {"loss": loss, "recon_nll": recon.detach(), "kl": kl.detach(), "elbo": -(recon + kl).detach()}

    # --- ranking ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def energy(self, poses: torch.Tensor, samples: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,) energy: lower = more plausible.

        `samples` = 0: -ELBO at β = 1 without free bits, with the reconstruction at the posterior mean
        (deterministic). `samples` = K > 0: -log of the importance-weighted estimate
        (1/K) Σ_k p(x | z_k) p(z_k) / q(z_k | x), z_k ~ q(z | x) (a tighter bound, seeded by `generator`).
        """
        poses = poses.to(self.log_sigma.device, torch.float32)
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
        return self.decode(mu), self.joint_errors(poses, raw)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` poses (n, 90) decoded from z ~ N(0, I) (decoder means)."""
        z = torch.randn(n, self.z_dim, generator=generator).to(self.log_sigma.device)
        return self.decode(z)

    @torch.no_grad()
    def latent_means(self, poses: torch.Tensor) -> torch.Tensor:
        return self.encode(poses)[0]
