"""Slow, explicit references of the paper's equations, written independently of mtsnn's code."""

import torch


def full_f1(v, alpha_h=1.0, alpha_w=20.0, v_th=10.0, s_max=15):
    """Eq. (14), every term."""
    return sum(i * alpha_h * torch.exp(-((v - i * v_th) ** 2) / (alpha_w / i)) for i in range(1, s_max + 1))


def full_f2(v, alpha_h=1.0, alpha_w=20.0, v_th=10.0, s_max=15):
    """Eq. (15), every term."""
    return sum(alpha_h * torch.exp(-((v - i * v_th) ** 2) / alpha_w) for i in range(1, s_max + 1))


def full_f3(v, alpha_h=1.0, alpha_w=None, v_th=10.0, s_max=15):
    """Eq. (16), piece by piece (alpha_w plays no part)."""
    u = v / v_th
    return torch.where(
        u < 0,
        0.0,
        torch.where(
            u < 1,
            alpha_h * u,
            torch.where(u < s_max, alpha_h, torch.where(u < s_max + 1, alpha_h * (s_max + 1 - u), 0.0)),
        ),
    )
