"""Synthetic clips whose content is known: soft-edged coloured shapes moving over plain or
smoothly graded backgrounds, with a caption saying what moves where. Generated from a seed;
nothing is downloaded.

    clip, caption = make_clip(seed=3)   # clip [3, F, H, W] in [-1, 1]; "a red circle moving right"
"""
from __future__ import annotations

import math

import torch

COLORS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.25, 0.95)}
SHAPES = ("circle", "square")
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}


def _background(g: torch.Generator, h: int, w: int, graded: bool) -> torch.Tensor:
    """[3, H, W] in 0..1: a pale plain colour, or a smooth two-colour linear gradient."""
    a = 0.55 + 0.4 * torch.rand(3, generator=g)
    if not graded:
        return a[:, None, None].expand(3, h, w).clone()
    b = 0.55 + 0.4 * torch.rand(3, generator=g)
    ang = float(torch.rand(1, generator=g)) * 2 * math.pi
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    t = ((xx * math.cos(ang) + yy * math.sin(ang)) * 0.5 + 0.5).clamp(0, 1)
    return a[:, None, None] * (1 - t) + b[:, None, None] * t


def _coverage(shape: str, cx: float, cy: float, r: float, h: int, w: int, soft: float) -> torch.Tensor:
    """[H, W] in 0..1: how much of each pixel the shape covers (edges smoothed over `soft` px)."""
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    if shape == "circle":
        d = ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt() - r
    else:
        d = torch.maximum((xx - cx).abs(), (yy - cy).abs()) - r
    return (0.5 - d / (2 * soft)).clamp(0, 1)


def make_clip(seed: int, frames: int = 17, height: int = 64, width: int = 64,
              color: str | None = None, shape: str | None = None, direction: str | None = None,
              graded: bool | None = None, soft: float = 1.0) -> tuple[torch.Tensor, str]:
    """One clip: a shape of one colour crossing part of the frame in one direction.
    Unset choices are drawn from the seed. Returns (clip [3, F, H, W] in [-1, 1], caption)."""
    g = torch.Generator().manual_seed(seed)

    def pick(options, given):
        return given if given is not None else options[int(torch.randint(len(options), (1,), generator=g))]

    color = pick(list(COLORS), color)
    shape = pick(SHAPES, shape)
    direction = pick(list(DIRECTIONS), direction)
    graded = bool(torch.rand(1, generator=g) < 0.5) if graded is None else graded
    bg = _background(g, height, width, graded)
    side = min(height, width)
    r = side * (0.12 + 0.06 * float(torch.rand(1, generator=g)))
    dx, dy = DIRECTIONS[direction]
    travel = side * 0.45
    # start so the whole path stays inside the frame
    cx0 = width / 2 - dx * travel / 2 + (1 - abs(dx)) * (float(torch.rand(1, generator=g)) - 0.5) * width * 0.4
    cy0 = height / 2 - dy * travel / 2 + (1 - abs(dy)) * (float(torch.rand(1, generator=g)) - 0.5) * height * 0.4
    rgb = torch.tensor(COLORS[color])[:, None, None]
    out = torch.empty(3, frames, height, width)
    for f in range(frames):
        t = f / max(frames - 1, 1)
        cov = _coverage(shape, cx0 + dx * travel * t, cy0 + dy * travel * t, r, height, width, soft)
        out[:, f] = bg * (1 - cov) + rgb * cov
    return out * 2 - 1, f"a {color} {shape} moving {direction}"
