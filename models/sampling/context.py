"""Context windows: denoise a long clip in overlapping windows of latent frames.

A motion module (AnimateDiff) has a fixed positional-encoding length (16 / 24 / 32 frames); a
longer clip is denoised in windows of at most that many latent frames at every model call, and the
window outputs are fused per frame (a weighted mean). Nothing here knows a model family: `windowed`
wraps any ``denoise(x [B, C, T, H, W], t [B], cond) -> like x`` and slices ``x`` and the
per-frame conditioning along the frame axis (dim 2).

Schedules (`context_windows`):

* "static": windows of ``length`` frames every ``length - overlap`` frames, the last one moved
  back to end at the last frame (every window has the full length), the same at every step. With
  ``closed_loop`` the windows instead keep their stride past the end and wrap to the start, so the
  last frames are blended into the first ones (for looping videos).
* "uniform": AnimateDiff-CLI's ``uniform`` schedule: the windows are shifted at each sampling step
  by a different fraction of the clip (`ordered_halving` of the step: 0, 1/2, 1/4, 3/4, ...), so
  the seams move and average out over the steps; ``stride`` levels of dilation (windows of every
  frame, every 2nd, every 4th, ...) add long-range coherence. See `context_windows` for where this
  differs from the reference.

Fusion (``fuse``): "flat" weighs every frame of a window alike; "pyramid" weighs a window's middle
frames most and falls off linearly to its ends, so seams are blended. Either way each output frame
is a convex combination of the window outputs covering it.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..common.errors import VideoForgeError

SCHEDULES: tuple[str, ...] = ("static", "uniform")
FUSE_MODES: tuple[str, ...] = ("flat", "pyramid")

# denoise(x [B, C, T, H, W], t [B], cond) -> like x (a VideoModel's denoise)
DenoiseFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
# step_of(t [B]) -> index of the sampling step this model call belongs to
StepOf = Callable[[torch.Tensor], int]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class ContextOptions:
    """How to cut the frame axis into windows and fuse them (see the module docstring).

    length: latent frames per window; overlap: frames shared by neighbouring windows (static:
    at least this many; uniform: exactly, before wrapping); schedule: "static" | "uniform";
    stride: uniform only, the number of dilation levels (1: contiguous windows only; 2: also
    windows of every 2nd frame; ...); closed_loop: windows may wrap from the end to the start;
    fuse: "flat" | "pyramid".
    """

    length: int = 16
    overlap: int = 4
    schedule: str = "static"
    stride: int = 1
    closed_loop: bool = False
    fuse: str = "pyramid"

    def __post_init__(self) -> None:
        if not _is_int(self.length) or self.length < 1:
            raise VideoForgeError(f"context length must be an integer >= 1, got {self.length!r}")
        if not _is_int(self.overlap) or not 0 <= self.overlap < self.length:
            raise VideoForgeError(f"context overlap must be an integer from 0 to length - 1 = "
                                  f"{self.length - 1} (length {self.length}), got {self.overlap!r}")
        if self.schedule not in SCHEDULES:
            raise VideoForgeError(f"context schedule must be one of {', '.join(SCHEDULES)}, "
                                  f"got {self.schedule!r}")
        if not _is_int(self.stride) or self.stride < 1:
            raise VideoForgeError(f"context stride must be an integer >= 1 (1: no dilated "
                                  f"windows), got {self.stride!r}")
        if not isinstance(self.closed_loop, bool):
            raise VideoForgeError(f"closed_loop must be True or False, got {self.closed_loop!r}")
        if self.fuse not in FUSE_MODES:
            raise VideoForgeError(f"context fuse must be one of {', '.join(FUSE_MODES)}, "
                                  f"got {self.fuse!r}")


def ordered_halving(step: int) -> float:
    """The 64-bit reversal of ``step`` as a fraction of 2**64: 0, 1/2, 1/4, 3/4, 1/8, 5/8, ...
    (a van der Corput sequence: consecutive steps spread their offsets evenly over [0, 1))."""
    v = int(step) % (1 << 64)
    rev = 0
    for _ in range(64):
        rev = (rev << 1) | (v & 1)
        v >>= 1
    return rev / (1 << 64)


def _dedupe(windows: list[list[int]]) -> list[list[int]]:
    seen: set[tuple[int, ...]] = set()
    out = []
    for w in windows:
        key = tuple(w)
        if key not in seen:
            seen.add(key)
            out.append(w)
    return out


def _static(n: int, opts: ContextOptions) -> list[list[int]]:
    size, step = opts.length, opts.length - opts.overlap
    if opts.closed_loop:
        # keep the stride past the end and wrap: the last window overlaps the first by
        # length - step + (the rest of the last stride) >= overlap frames
        return [[(a + k) % n for k in range(size)] for a in range(0, n, step)]
    out, a = [], 0
    while a + size < n:
        out.append(list(range(a, a + size)))
        a += step
    out.append(list(range(n - size, n)))
    return out


def _uniform(n: int, step: int, opts: ContextOptions) -> list[list[int]]:
    size, overlap = opts.length, opts.overlap
    frac = ordered_halving(step)
    pad = int(round(n * frac))
    # Dilation levels as AnimateDiff-CLI limits them (no more than needed to span the clip),
    # and, unlike there, no dilation whose window spans more than the clip (its indices would
    # repeat frames modulo n).
    levels = min(opts.stride, int(math.ceil(math.log2(n / size))) + 1)
    dilations = [d for d in (1 << i for i in range(levels)) if (size - 1) * d + 1 <= n]
    windows: list[list[int]] = []
    for d in dilations:
        start = int(frac * d) + pad
        stop = n + pad + (0 if opts.closed_loop else -overlap)
        for j in range(start, stop, size * d - overlap):
            a = j % n
            if opts.closed_loop or a + (size - 1) * d < n:
                windows.append([(a + k * d) % n for k in range(size)])
                continue
            # Not a loop: the reference (AnimateDiff-CLI) still wraps windows here (the per-step
            # shift pushes them past the end), joining the last frames to the first ones as if
            # they were neighbours. Instead such a window is split in its part before the end,
            # moved back to end at the last frame, and its part after the wrap, moved to start
            # there (at frame < d): the same frames are covered, but in their true order.
            windows.append([n - 1 - (size - 1 - k) * d for k in range(size)])
            k0 = -(-(n - a) // d)  # first k with a + k * d >= n
            b = min(a + k0 * d - n, n - 1 - (size - 1) * d)
            windows.append([b + k * d for k in range(size)])
    windows = _dedupe(windows)
    # Safety net (the windows above already cover every frame: the contiguous level covers one
    # full turn of the clip from `pad` on, and splitting keeps each window's frames): any frame
    # left out gets a contiguous window, moved back to fit before the end.
    covered = {f for w in windows for f in w}
    for f in range(n):
        if f not in covered:
            w = list(range(min(f, n - size), min(f, n - size) + size))
            windows.append(w)
            covered.update(w)
    return windows


def context_windows(num_frames: int, step: int, num_steps: int | None,
                    opts: ContextOptions) -> list[list[int]]:
    """The windows (lists of frame indices, each ``opts.length`` long) of sampling step ``step``.

    Every frame is in at least one window. With ``num_frames <= opts.length`` there is a single
    window of all frames, in order. ``num_steps`` is accepted for the schedules' signature (as in
    AnimateDiff-CLI) but no schedule needs it.
    """
    del num_steps
    if num_frames < 1:
        raise VideoForgeError(f"context windows need at least one frame, got {num_frames}")
    if num_frames <= opts.length:
        return [list(range(num_frames))]
    if opts.schedule == "static":
        return _static(num_frames, opts)
    return _uniform(num_frames, step, opts)


def window_weights(size: int, fuse: str) -> torch.Tensor:
    """[size] float32 fusion weights over a window's positions: all 1 ("flat"), or 1, 2, ...
    rising to the middle and falling again symmetrically ("pyramid"); never 0."""
    if fuse == "flat":
        return torch.ones(size, dtype=torch.float32)
    if fuse == "pyramid":
        k = torch.arange(size, dtype=torch.float32)
        return torch.minimum(k + 1, size - k)
    raise VideoForgeError(f"context fuse must be one of {', '.join(FUSE_MODES)}, got {fuse!r}")


def slice_cond(cond: Any, index: torch.Tensor, num_frames: int) -> Any:
    """``cond`` with every 5-D tensor of ``num_frames`` frames (dim 2, per-frame conditioning such
    as an image-to-video latent) reduced to the frames in ``index``; through dicts, lists and
    tuples; anything else is passed through as is."""
    if isinstance(cond, torch.Tensor):
        if cond.dim() == 5 and cond.shape[2] == num_frames:
            return cond.index_select(2, index.to(cond.device))
        return cond
    if isinstance(cond, dict):
        return {k: slice_cond(v, index, num_frames) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)) and not hasattr(cond, "_fields"):
        return type(cond)(slice_cond(v, index, num_frames) for v in cond)
    return cond


def windowed(denoise: DenoiseFn, opts: ContextOptions, step_of: StepOf, *,
             num_steps: int | None = None) -> DenoiseFn:
    """``denoise`` run window by window along the frame axis and fused (see the module docstring).

    ``step_of(t)`` names the sampling step of a call (the uniform schedule moves its windows per
    step). A clip of at most ``opts.length`` frames is passed to ``denoise`` once, untouched, so
    the result is exactly that of ``denoise`` itself. The fused output is float32 (or float64 if
    the model returns that).
    """

    def run(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        if x.dim() != 5:
            raise VideoForgeError(f"context windows need a [B, C, T, H, W] latent, got shape "
                                  f"{tuple(x.shape)}")
        n = x.shape[2]
        if n <= opts.length:
            return denoise(x, t, cond)
        windows = context_windows(n, step_of(t), num_steps, opts)
        out: torch.Tensor | None = None
        total = torch.zeros(n, dtype=torch.float32, device=x.device)
        for frames in windows:
            index = torch.tensor(frames, dtype=torch.long, device=x.device)
            y = denoise(x.index_select(2, index), t, slice_cond(cond, index, n))
            if out is None:
                dtype = torch.promote_types(y.dtype, torch.float32)
                out = torch.zeros((*y.shape[:2], n, *y.shape[3:]), dtype=dtype, device=y.device)
            w = window_weights(len(frames), opts.fuse)
            weighted = y.to(out.dtype) * w.to(y.device, out.dtype).view(1, 1, -1, 1, 1)
            out.index_add_(2, index.to(y.device), weighted)
            total.index_add_(0, index, w.to(total.device))
        assert out is not None
        return out / total.to(out.device, out.dtype).view(1, 1, -1, 1, 1)

    return run


def nearest_step(values: list[float] | tuple[float, ...]) -> StepOf:
    """``step_of`` for `windowed`: the step whose value (network timestep or sigma) is nearest
    to ``t[0]``. Equal values (possible for rounded timesteps of very many steps) resolve to the
    first; that only changes which offsets the uniform schedule uses, never the coverage."""
    vals = [float(v) for v in values]
    if not vals:
        raise VideoForgeError("context windows need at least one sampling step")

    def step_of(t: torch.Tensor) -> int:
        v = float(t.reshape(-1)[0])
        return min(range(len(vals)), key=lambda k: abs(vals[k] - v))

    return step_of
