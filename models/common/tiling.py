"""Tiled VAE decode and encode for every family: bounded memory without seams.

A plan cuts the work into windows along time, height and width:

- space: tiles of `tile` pixels that overlap by `overlap` pixels; each output pixel is a weighted
  mean of the tiles covering it, with linear ramps across every overlap (weights sum to exactly 1),
  so no tile edge (where the VAE saw zero padding) shows.
- time: chunks of `t_tile` frames overlapping by `t_overlap`. A causal VAE (first frame alone,
  Wan / HunyuanVideo / EasyAnimate) gets the overlap as *warm-up*: the chunk starts earlier so
  its caches fill, and its outputs for the warm-up frames are dropped — the previous chunk, which
  saw more history, keeps them. A VAE that already streams time through its cache (Wan) runs with
  `t_tile = 0`: one chunk, exact, and memory still does not grow with the frame count because the
  VAE hands back frames as it goes (`decode` callables yield pieces).

The drivers know nothing about a family beyond its `LatentFormat`; a family passes a callable that
decodes / encodes one window.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from .errors import VideoForgeError
from .family import LatentFormat

# decode(latent window) yields (first output frame index within the window, frames [B, C, n, h, w])
DecodeFn = Callable[[torch.Tensor], Iterable[tuple[int, torch.Tensor]]]
EncodeFn = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TilePlan:
    """Window sizes in pixels and pixel frames; 0 means "whole" along that axis."""
    tile: int = 0
    overlap: int = 64
    t_tile: int = 0
    t_overlap: int = 8

    def validate(self, fmt: LatentFormat) -> None:
        """Raise a VideoForgeError naming the value and what would be valid."""
        s, r = fmt.space_ratio, fmt.time_ratio
        if self.tile < 0 or self.overlap < 0 or self.t_tile < 0 or self.t_overlap < 0:
            raise VideoForgeError(f"tile sizes must not be negative: {self}.")
        if self.tile:
            _multiple("tile_size", self.tile, s, "pixels per latent pixel")
            _multiple("overlap", self.overlap, s, "pixels per latent pixel")
            if self.overlap >= self.tile:
                raise VideoForgeError(f"overlap={self.overlap} must be smaller than tile_size="
                                      f"{self.tile} (e.g. overlap {_round_to(self.tile // 4, s)}).")
        if self.t_tile:
            _multiple("temporal_size", self.t_tile, r, "frames per latent frame")
            _multiple("temporal_overlap", self.t_overlap, r, "frames per latent frame")
            if self.t_overlap >= self.t_tile:
                raise VideoForgeError(f"temporal_overlap={self.t_overlap} must be smaller than "
                                      f"temporal_size={self.t_tile}.")
            if fmt.first_frame_alone and self.t_overlap < r:
                # a chunk of a causal VAE must start with at least one latent frame of warm-up,
                # else its first frame is decoded as a lone "first frame" and 3 frames go missing
                raise VideoForgeError(f"temporal_overlap={self.t_overlap}: this causal VAE needs "
                                      f"at least {r} frames of overlap between temporal chunks.")


def _round_to(v: int, m: int) -> int:
    return max(m, v // m * m)


def _multiple(name: str, v: int, m: int, what: str) -> None:
    if v % m:
        lo = v // m * m
        raise VideoForgeError(f"{name}={v}: must be a multiple of {m} (the VAE's {what}); "
                              f"use {lo or m} or {lo + m}.")


def spans(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Windows [a, b) of `size` covering 0..n, consecutive ones overlapping by >= `overlap`
    (the last is moved back to end at n, so every window has the full size)."""
    if size <= 0 or size >= n:
        return [(0, n)]
    stride = size - overlap
    out, a = [], 0
    while a + size < n:
        out.append((a, a + size))
        a += stride
    out.append((n - size, n))
    return out


def _ramps(windows: list[tuple[int, int]], n: int, margin: float = 0.25) -> list[torch.Tensor]:
    """Per window, weights over its positions, normalised to sum to exactly 1 everywhere.

    Across an overlap of length L with a neighbour, the outer `margin * L` positions next to the
    window's edge get weight 0 (a VAE sees zero padding there, so they are the least accurate)
    and the weight ramps linearly across the middle; the neighbour's weights mirror it."""
    def ramp(d: torch.Tensor, length: int) -> torch.Tensor:
        m = margin * length
        return ((d - m + 0.5) / max(length - 2 * m, 1.0)).clamp(0.0, 1.0)

    raw = []
    for i, (a, b) in enumerate(windows):
        w = torch.ones(b - a, dtype=torch.float64)
        pos = torch.arange(a, b, dtype=torch.float64)
        if i > 0 and windows[i - 1][1] > a:          # overlap with the previous window
            w *= ramp(pos - a, windows[i - 1][1] - a)
        if i + 1 < len(windows) and windows[i + 1][0] < b:  # overlap with the next window
            w *= ramp(b - 1 - pos, b - windows[i + 1][0])
        raw.append(w)
    total = torch.zeros(n, dtype=torch.float64)
    for (a, b), w in zip(windows, raw):
        total[a:b] += w
    if margin and bool((total <= 0).any()):  # uneven last window: fall back to full-width ramps
        return _ramps(windows, n, 0.0)
    return [(w / total[a:b]).float() for (a, b), w in zip(windows, raw)]


@dataclass(frozen=True)
class _Axis:
    """One window along one axis: input slice, where its output starts, and the output weights
    (zeros at the front = causal warm-up outputs to drop)."""
    src: slice
    dst: int
    w: torch.Tensor


def _space_axis(n_lat: int, tile_lat: int, ov_lat: int, in_scale: int, out_scale: int) -> list[_Axis]:
    wins = spans(n_lat, tile_lat, ov_lat)
    out = [(a * out_scale, b * out_scale) for a, b in wins]
    return [_Axis(slice(a * in_scale, b * in_scale), oa, w)
            for (a, b), (oa, _), w in zip(wins, out, _ramps(out, n_lat * out_scale))]


def _time_axis(t_lat: int, plan: TilePlan, fmt: LatentFormat, decode: bool) -> list[_Axis]:
    """Temporal windows in latent frames mapped to the input / output frame ranges."""
    r = fmt.time_ratio
    wins = spans(t_lat, plan.t_tile // r, plan.t_overlap // r) if plan.t_tile else [(0, t_lat)]
    axes = []
    if fmt.first_frame_alone:
        # A window starting at latent a0 > 0 begins with the last pixel frame of a0's group
        # (r*a0) taken as its lone first frame; later latents map to groups of r frames as usual.
        for i, (a0, b) in enumerate(wins):
            own = wins[i - 1][1] if i else 0  # latents before `own` belong to the previous window
            if decode:
                n_out = r * (b - a0 - 1) + 1
                first_kept = 0 if own == 0 else r * own - r + 1
                w = (torch.arange(n_out) + r * a0 >= first_kept).float()
                axes.append(_Axis(slice(a0, b), r * a0, w))
            else:
                w = (torch.arange(b - a0) + a0 >= own).float()
                axes.append(_Axis(slice(r * a0, r * (b - 1) + 1), a0, w))
    else:
        if decode:
            axes = _space_axis(t_lat, plan.t_tile // r if plan.t_tile else 0, plan.t_overlap // r, 1, r)
        else:
            axes = _space_axis(t_lat, plan.t_tile // r if plan.t_tile else 0, plan.t_overlap // r, r, 1)
    return axes


def _blend(fn: Callable[[torch.Tensor], Iterable[tuple[int, torch.Tensor]]], x: torch.Tensor,
           out: torch.Tensor, axes: tuple[list[_Axis], list[_Axis], list[_Axis]],
           callback: Progress | None) -> torch.Tensor:
    """Run fn on every (time, y, x) window of x and add its weighted outputs into `out`."""
    ts, ys, xs = axes
    total = sum(len(t.w) for t in ts) * len(ys) * len(xs)
    done = 0
    for t in ts:
        live = torch.nonzero(t.w).flatten()
        lo, hi = int(live[0]), int(live[-1]) + 1  # kept outputs of this window (contiguous)
        for y in ys:
            for xa in xs:
                wmap = (y.w[:, None] * xa.w[None, :]).to(out.device)
                for k0, piece in fn(x[:, :, t.src, y.src, xa.src]):
                    n = piece.shape[2]
                    if (piece.shape[3], piece.shape[4]) != tuple(wmap.shape):
                        raise VideoForgeError(f"tiling: a window gave {tuple(piece.shape[3:])} "
                                              f"pixels, expected {tuple(wmap.shape)}.")
                    a, b = max(k0, lo), min(k0 + n, hi)
                    if a < b:
                        tw = t.w[a:b].to(out.device)[:, None, None]
                        region = out[:, :, t.dst + a:t.dst + b,
                                     y.dst:y.dst + wmap.shape[0], xa.dst:xa.dst + wmap.shape[1]]
                        region += piece[:, :, a - k0:b - k0].to(out.dtype) * (tw * wmap)
                    done += n
                    if callback is not None:
                        callback(done, total)
    return out


def tiled_decode(decode: DecodeFn, latent: torch.Tensor, fmt: LatentFormat, plan: TilePlan,
                 out_channels: int = 3, callback: Progress | None = None) -> torch.Tensor:
    """latent [B, C, T, h, w] -> video [B, out_channels, F, h*s, w*s] float32 (F from `fmt`).

    `decode(window)` yields (output frame offset within the window, frames); `callback(done,
    total)` counts decoded frames over all windows (progress, interrupts).
    """
    plan.validate(fmt)
    b, _, t, h, w = latent.shape
    s = fmt.space_ratio
    out = torch.zeros(b, out_channels, fmt.pixel_frames(t), h * s, w * s,
                      dtype=torch.float32, device=latent.device)
    axes = (_time_axis(t, plan, fmt, decode=True),
            _space_axis(h, plan.tile // s, plan.overlap // s, 1, s),
            _space_axis(w, plan.tile // s, plan.overlap // s, 1, s))
    return _blend(decode, latent, out, axes, callback)


def tiled_encode(encode: EncodeFn, video: torch.Tensor, fmt: LatentFormat, plan: TilePlan,
                 callback: Progress | None = None) -> torch.Tensor:
    """video [B, 3, F, H, W] -> latent [B, C, T, H/s, W/s] float32, window by window."""
    plan.validate(fmt)
    if video.dim() != 5 or video.shape[1] != 3:
        raise VideoForgeError(f"encode: expected video [B, 3, F, H, W], got {tuple(video.shape)}.")
    b, _, f, hp, wp = video.shape
    s = fmt.space_ratio
    fmt.check_frames(f)
    if hp % s or wp % s:
        raise VideoForgeError(f"encode: size {wp}x{hp} given; width and height must be multiples of {s}.")
    t = fmt.latent_frames(f)
    out = torch.zeros(b, fmt.channels, t, hp // s, wp // s, dtype=torch.float32, device=video.device)
    axes = (_time_axis(t, plan, fmt, decode=False),
            _space_axis(hp // s, plan.tile // s, plan.overlap // s, s, 1),
            _space_axis(wp // s, plan.tile // s, plan.overlap // s, s, 1))
    return _blend(lambda v: [(0, encode(v))], video, out, axes, callback)


def working_bytes(plan: TilePlan, fmt: LatentFormat, height: int, width: int, frames: int,
                  bytes_per_pixel: float, streams_time: bool) -> float:
    """Estimated working memory of one decode / encode step under `plan` (what `auto_plan`
    sizes): `bytes_per_pixel` x the pixel-frames of the largest window alive at once."""
    step = fmt.time_ratio if streams_time else min(plan.t_tile or frames, frames)
    th = min(plan.tile, height) if plan.tile else height
    tw = min(plan.tile, width) if plan.tile else width
    return bytes_per_pixel * step * th * tw


def auto_plan(fmt: LatentFormat, height: int, width: int, frames: int, bytes_per_pixel: float,
              budget: float, streams_time: bool) -> TilePlan:
    """The largest windows whose estimated working memory fits `budget` bytes.

    `bytes_per_pixel`: the VAE's working memory per output pixel-frame alive in one decode step
    (measured per family, `bench/vae_tiling.py`). A streaming VAE decodes one latent frame
    (time_ratio pixel frames) per step; any other decodes its whole temporal window, which is
    shortened first (down to 4 latent frames) before frames are cut into tiles of >= 128 px.
    """
    s, r = fmt.space_ratio, fmt.time_ratio
    step = r if streams_time else frames
    t_tile = 0
    if not streams_time:
        fit = int(budget // (bytes_per_pixel * height * width))  # frames that fit untiled
        if fit < frames:
            t_tile = max(4 * r, fit // r * r)
            step = t_tile
    t_overlap = r if t_tile else 8
    if bytes_per_pixel * step * height * width <= budget:
        return TilePlan(tile=0, t_tile=t_tile, t_overlap=t_overlap)
    side = int((budget / (bytes_per_pixel * step)) ** 0.5)
    tile = max(128, side // (8 * s) * (8 * s))
    # >= 48 px of overlap: a trained Wan VAE's tiles then stay within ~1/255 of the untiled
    # decode (bench/vae_tiling.py); 32 px left up to ~7/255 at tile borders
    return TilePlan(tile=tile, overlap=max(_round_to(tile // 4, s), 6 * s), t_tile=t_tile, t_overlap=t_overlap)
