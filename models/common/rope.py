"""One rotary position embedding over N position axes (t, h, w), shared by every family:
Wan2.1 (complex form as its reference computes it: float64 angles, complex128 rotation, result
cast back) and HunyuanVideo (float32 cos / sin, interleaved pairs) are configurations of it."""
from __future__ import annotations

import torch


def axes_split(head_dim: int) -> tuple[int, int, int]:
    """Wan's split of a head's rotary dims over (t, h, w): 128 -> (44, 42, 42) in real dims."""
    d = head_dim
    hw = 2 * (d // 6)
    return d - 2 * hw, hw, hw


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x [B, L, H, D] by freqs [L, 1, D/2] (complex)."""
    b, l, h, d = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, l, h, d // 2, 2))
    return torch.view_as_real(xc * freqs.to(x.device)).flatten(3).to(x.dtype)


# ------------------------------------------------------------------ general N-axis rotary embedding
# One head of width D is split over N position axes (e.g. t, h, w): axis i rotates axes_dims[i]
# channels, i.e. axes_dims[i] // 2 adjacent pairs (2j, 2j+1), by angle pos_i * theta^(-2j/axes_dims[i]).
# HunyuanVideo: axes (16, 56, 56), theta 256, float32 (`nd_rope_freqs` + `apply_rope_interleaved`).
# Wan2.1 is the same rotation with axes `axes_split(128)` = (44, 42, 42), theta 10000, in
# complex128: `nd_rope_complex(grid, axes_split(d), 10000.0, torch.float64)[:, None]` with
# `apply_rope` (tests/parity/test_hunyuan_dit.py checks it against Wan's own formula).

def rope_angles(dim: int, pos: torch.Tensor, theta: float = 10000.0,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Angles [len(pos), dim // 2]: pos * theta^(-2j/dim) for j < dim / 2, computed in `dtype`
    (the order of operations of the HunyuanVideo / diffusers / Wan references)."""
    if dim % 2:
        raise ValueError(f"rotary axis width {dim} is odd")
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=dtype, device=pos.device)[: dim // 2] / dim)
    return torch.outer(pos.to(dtype), inv)


def nd_rope_angles(grid, axes_dims, theta: float = 10000.0, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Angles [prod(grid), sum(axes_dims) // 2] for every point of an N-axis grid, flattened in
    row-major order (last axis fastest: (t, h, w) -> t*H*W + h*W + w).

    grid: per axis a length n (positions 0..n-1) or a 1-D tensor of positions (offsets, crops).
    axes_dims: per axis the number of rotated channels (even).
    """
    if len(grid) != len(axes_dims):
        raise ValueError(f"grid {tuple(grid)} and axes_dims {tuple(axes_dims)} differ in length")
    pos = [torch.arange(g, dtype=dtype, device=device) if isinstance(g, int)
           else g.to(device=device) for g in grid]
    sizes = [len(p) for p in pos]
    parts = []
    for i, (p, d) in enumerate(zip(pos, axes_dims)):
        ang = rope_angles(d, p, theta, dtype)                         # [n_i, d_i / 2]
        shape = [1] * len(sizes) + [d // 2]
        shape[i] = sizes[i]
        parts.append(ang.view(shape).expand(*sizes, d // 2))
    return torch.cat(parts, dim=-1).reshape(-1, sum(axes_dims) // 2)


def nd_rope_freqs(grid, axes_dims, theta: float = 10000.0, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [prod(grid), sum(axes_dims) // 2] in `dtype`, for `apply_rope_interleaved`."""
    ang = nd_rope_angles(grid, axes_dims, theta, dtype, device)
    return ang.cos(), ang.sin()


def nd_rope_complex(grid, axes_dims, theta: float = 10000.0, dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """e^{i * angle} [prod(grid), sum(axes_dims) // 2] (complex128 from float64), the form
    `apply_rope` (Wan) multiplies with."""
    ang = nd_rope_angles(grid, axes_dims, theta, dtype, device)
    return torch.polar(torch.ones_like(ang), ang)


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (x[2j], x[2j+1]) of x [B, L, H, D] by cos / sin [L, D/2].

    Math runs in cos' dtype (float32 for HunyuanVideo, as its reference; float64 reproduces
    Wan's complex rotation), the result is returned in x's dtype:
    out[2j] = a cos - b sin, out[2j+1] = a sin + b cos with (a, b) = (x[2j], x[2j+1]).
    """
    dt = cos.dtype
    a, b = x.to(dt).unflatten(-1, (-1, 2)).unbind(-1)               # [B, L, H, D/2] each
    c = cos.to(x.device)[:, None, :]
    s = sin.to(x.device)[:, None, :]
    return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2).to(x.dtype)
