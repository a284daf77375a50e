"""Rotation utilities: round trips, geodesic distance properties, safe gradients."""

import math

import torch

from genflow_recipes.hand_vae.rotations import (
    euler_zyx_to_axis_angle,
    axis_angle_to_matrix,
    euler_zyx_to_matrix,
    geodesic_angle,
    matrix_to_axis_angle,
    matrix_to_euler_zyx,
    matrix_to_rotation_6d,
    rotation_6d_to_matrix,
)


def random_axis_angle(n, max_angle=math.pi, seed=0):
    g = torch.Generator().manual_seed(seed)
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    return axis * torch.rand(n, 1, generator=g, dtype=torch.float64) * max_angle


def test_axis_angle_round_trip_including_near_zero_and_near_pi():
    v = torch.cat([random_axis_angle(500, math.pi * 0.999),
                   random_axis_angle(20, 1e-5, seed=1),
                   torch.nn.functional.normalize(torch.randn(20, 3, dtype=torch.float64), dim=-1) * (math.pi - 1e-4)])
    R = axis_angle_to_matrix(v)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(R), atol=1e-10, rtol=0)
    back = matrix_to_axis_angle(R)
    torch.testing.assert_close(axis_angle_to_matrix(back), R, atol=1e-6, rtol=0)  # same rotation (v ~ -v at π)
    torch.testing.assert_close(back[:520], v[:520], atol=1e-6, rtol=0)


def test_6d_and_euler_round_trips():
    R = axis_angle_to_matrix(random_axis_angle(100))
    torch.testing.assert_close(rotation_6d_to_matrix(matrix_to_rotation_6d(R)), R, atol=1e-10, rtol=0)
    angles = torch.rand(100, 3, dtype=torch.float64) * torch.tensor([6.0, 3.0, 6.0]) - torch.tensor([3.0, 1.5, 3.0])
    torch.testing.assert_close(matrix_to_euler_zyx(euler_zyx_to_matrix(angles)), angles, atol=1e-8, rtol=0)
    angles[0] = 0.0  # the identity: the small-angle limit
    torch.testing.assert_close(axis_angle_to_matrix(euler_zyx_to_axis_angle(angles)), euler_zyx_to_matrix(angles), atol=1e-10, rtol=0)


def test_geodesic_distance_properties():
    A = axis_angle_to_matrix(random_axis_angle(200, seed=2))
    B = axis_angle_to_matrix(random_axis_angle(200, seed=3))
    assert geodesic_angle(A, A).abs().max() < 1e-5  # zero on identical (up to the gradient-safe smoothing)
    torch.testing.assert_close(geodesic_angle(A, B), geodesic_angle(B, A))  # symmetric
    flip = axis_angle_to_matrix(torch.tensor([[math.pi, 0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(geodesic_angle(A, A @ flip), torch.full((200,), math.pi, dtype=torch.float64), atol=1e-5, rtol=0)  # opposite (smoothing: <= 1e-6)
    v = random_axis_angle(200, seed=4)
    torch.testing.assert_close(geodesic_angle(A, A @ axis_angle_to_matrix(v)), v.norm(dim=-1), atol=1e-6, rtol=0)


def test_geodesic_gradient_is_finite_at_and_near_zero():
    for eps in (0.0, 1e-8, 1e-4):
        v = torch.tensor([[eps, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
        angle = geodesic_angle(torch.eye(3, dtype=torch.float64)[None], axis_angle_to_matrix(v))
        angle.sum().backward()
        assert torch.isfinite(v.grad).all()
