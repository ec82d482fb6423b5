"""Rotary position embedding over (t, h, w) axes, in complex form as the Wan reference
computes it (float64 tables, float64 rotation, result cast back)."""
from __future__ import annotations

import torch


def rope_freqs(dim: int, max_len: int = 1024, theta: float = 10000.0) -> torch.Tensor:
    """Complex table [max_len, dim // 2] of e^{i * pos * theta^(-2j/dim)} in complex128."""
    assert dim % 2 == 0
    inv = 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64).div(dim))
    ang = torch.outer(torch.arange(max_len, dtype=torch.float64), inv)
    return torch.polar(torch.ones_like(ang), ang)


def axes_split(head_dim: int) -> tuple[int, int, int]:
    """Wan's split of a head's rotary dims over (t, h, w): 128 -> (44, 42, 42) in real dims."""
    d = head_dim
    hw = 2 * (d // 6)
    return d - 2 * hw, hw, hw


def rope_table(head_dim: int, max_len: int = 1024, theta: float = 10000.0) -> torch.Tensor:
    """Concatenated per-axis tables [max_len, head_dim // 2] (complex128)."""
    dt, dh, dw = axes_split(head_dim)
    return torch.cat([rope_freqs(dt, max_len, theta), rope_freqs(dh, max_len, theta),
                      rope_freqs(dw, max_len, theta)], dim=1)


def grid_freqs(table: torch.Tensor, grid: tuple[int, int, int], head_dim: int) -> torch.Tensor:
    """Complex rotation for every token of a (f, h, w) grid: [f*h*w, 1, head_dim // 2]."""
    f, h, w = grid
    dt, dh, dw = (d // 2 for d in axes_split(head_dim))
    ft, fh, fw = table.split([dt, dh, dw], dim=1)
    out = torch.cat([
        ft[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
        fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
        fw[:w].view(1, 1, w, -1).expand(f, h, w, -1),
    ], dim=-1)
    return out.reshape(f * h * w, 1, -1)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x [B, L, H, D] by freqs [L, 1, D/2] (complex)."""
    b, l, h, d = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, l, h, d // 2, 2))
    return torch.view_as_real(xc * freqs.to(x.device)).flatten(3).to(x.dtype)
