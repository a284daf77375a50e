"""Rotations for pose models: axis-angle <-> matrix, the 6-D representation, geodesic distance.

All functions take batched tensors (..., 3) / (..., 3, 3) / (..., 6) and are safe where the naive
formulas are not: the axis-angle map near 0 (Taylor terms) and near π (axis from the symmetric
part), and the geodesic angle everywhere (atan2 of sine and cosine, with a smoothed norm, so its
gradient stays finite at 0).
"""

from __future__ import annotations

import torch

__all__ = ["axis_angle_to_matrix", "matrix_to_axis_angle", "rotation_6d_to_matrix", "matrix_to_rotation_6d",
           "geodesic_angle", "euler_zyx_to_matrix", "matrix_to_euler_zyx", "euler_zyx_to_axis_angle"]


def _skew(v: torch.Tensor) -> torch.Tensor:
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).unflatten(-1, (3, 3))


def axis_angle_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """Rodrigues: (..., 3) rotation vectors -> (..., 3, 3); R = I + a K + b K², K = skew(v)."""
    theta2 = (v * v).sum(-1, keepdim=True).unsqueeze(-1)
    theta = torch.sqrt(theta2.clamp_min(1e-12))
    small = theta2 < 1e-6
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-12))
    K = _skew(v)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand_as(K)
    return eye + a * K + b * (K @ K)


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 3) rotation vectors with angle in [0, π]."""
    cos = ((R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    vee = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1) / 2
    sin = vee.norm(dim=-1)
    theta = torch.atan2(sin, cos)
    generic = vee * (theta / sin.clamp_min(1e-12)).unsqueeze(-1)
    small = vee * (1 + theta**2 / 6).unsqueeze(-1)  # theta / sin(theta) ~ 1 + theta²/6
    # near π sin θ loses the axis; the symmetric part keeps it: (R + Rᵀ)/2 = cos θ I + (1 - cos θ) a aᵀ
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    outer = ((R + R.transpose(-1, -2)) / 2 - cos[..., None, None] * eye) / (1 - cos).clamp_min(1e-12)[..., None, None]
    col = outer.diagonal(dim1=-2, dim2=-1).argmax(-1)
    axis = torch.gather(outer, -1, col[..., None, None].expand(*col.shape, 3, 1)).squeeze(-1)
    axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sign = torch.where((axis * vee).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(R.dtype)
    near_pi = axis * sign * theta.unsqueeze(-1)
    out = torch.where((theta < 1e-3).unsqueeze(-1), small, generic)
    return torch.where((theta > torch.pi - 1e-3).unsqueeze(-1), near_pi, out)


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """Zhou et al. 2019: two 3-vectors -> Gram-Schmidt -> the first two columns, third by cross product."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rotation_6d(R: torch.Tensor) -> torch.Tensor:
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def geodesic_angle(R1: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """Angle in [0, π] of R1ᵀ R2: atan2(|vee|, cos), with |vee| smoothed so the gradient is finite at 0."""
    R = R1.transpose(-1, -2) @ R2
    cos = (R.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    vee = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1) / 2
    sin = torch.sqrt((vee * vee).sum(-1) + 1e-12)
    return torch.atan2(sin, cos)


def euler_zyx_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """(..., 3) = (z, y, x) angles -> Rz(z) Ry(y) Rx(x)."""
    z, y, x = angles.unbind(-1)
    cz, sz, cy, sy, cx, sx = z.cos(), z.sin(), y.cos(), y.sin(), x.cos(), x.sin()
    return torch.stack([
        cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx,
        sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx,
        -sy, cy * sx, cy * cx,
    ], dim=-1).unflatten(-1, (3, 3))


def euler_zyx_to_axis_angle(angles: torch.Tensor) -> torch.Tensor:
    """(..., 3) = (z, y, x) angles -> the rotation vector of Rz(z) Ry(y) Rx(x), through the quaternion
    qz qy qx (no matrices: ~4x cheaper for millions of joints); angle in [0, π]."""
    half = angles / 2
    (cz, cy, cx), (sz, sy, sx) = half.cos().unbind(-1), half.sin().unbind(-1)
    w = cx * cy * cz + sx * sy * sz
    v = torch.stack([sx * cy * cz - cx * sy * sz, cx * sy * cz + sx * cy * sz, cx * cy * sz - sx * sy * cz], -1)
    sign = torch.where(w < 0, -1.0, 1.0).to(angles.dtype)  # q and -q are one rotation: take w >= 0
    w, v = w * sign, v * sign.unsqueeze(-1)
    s = v.norm(dim=-1)
    scale = torch.where(s > 1e-9, 2 * torch.atan2(s, w) / s.clamp_min(1e-9), 2 / w)  # 2 / w: the small-angle limit
    return v * scale.unsqueeze(-1)


def matrix_to_euler_zyx(R: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`euler_zyx_to_matrix` for |y| < π/2: (..., 3) = (z, y, x)."""
    y = torch.asin((-R[..., 2, 0]).clamp(-1, 1))
    z = torch.atan2(R[..., 1, 0], R[..., 0, 0])
    x = torch.atan2(R[..., 2, 1], R[..., 2, 2])
    return torch.stack([z, y, x], dim=-1)
