"""Peak-memory estimates made *before* a node allocates, so that a request the machine cannot
serve is refused with what to change instead of the operating system killing the server.

Every figure here is bytes. An estimate is a sum of named parts (the output tensor, the solver's
latent copies, one network forward's activations, ...); `check_fits` compares it with what is free
on the device the work runs on and raises a `VideoForgeError` that gives the estimate, what is
free, and what to change. The per-token / per-pixel working-memory figures the families state
were measured with `peak_rss_growth` (bench/activation_memory.py, bench/vae_tiling.py).
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import VideoForgeError

GB = 1024 ** 3
# Share of the free memory a request may plan to fill: the rest is allocator slack, fragmentation
# and whatever ComfyUI or other nodes allocate meanwhile.
USABLE_SHARE = 0.9


def tensor_bytes(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * (torch.finfo(dtype).bits // 8 if dtype.is_floating_point else
                torch.iinfo(dtype).bits // 8)


def fmt_bytes(n: float) -> str:
    if n >= GB:
        return f"{n / GB:.1f} GB"
    return f"{n / 1024 ** 2:.0f} MB"


@dataclass
class Estimate:
    """What one request will hold at its peak, by part."""
    what: str                                   # e.g. "Sample Video (832x480, 81 frames)"
    parts: dict[str, float] = field(default_factory=dict)
    advice: str = "use fewer frames, a smaller size or a lower batch_size"

    @property
    def total(self) -> float:
        return float(sum(self.parts.values()))

    def add(self, name: str, nbytes: float) -> "Estimate":
        self.parts[name] = self.parts.get(name, 0.0) + float(nbytes)
        return self

    def describe(self) -> str:
        big = sorted(self.parts.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{k} {fmt_bytes(v)}" for k, v in big if v >= 1024 ** 2) or "small"


def check_fits(est: Estimate, free: float, where: str, share: float = USABLE_SHARE) -> None:
    """Raise a VideoForgeError when `est` exceeds `share` of `free` bytes on `where`."""
    if est.total <= share * free:
        return
    raise VideoForgeError(
        f"{est.what} needs about {fmt_bytes(est.total)} ({est.describe()}) but only "
        f"{fmt_bytes(free)} is free on {where}; {est.advice}. Nothing was allocated.")


def video_bytes(frames: int, height: int, width: int, batch: int = 1,
                dtype: torch.dtype = torch.float32) -> int:
    """An IMAGE batch [B*F, H, W, 3] (what Decode Video returns, what the preprocessors take)."""
    return tensor_bytes((batch * frames, height, width, 3), dtype)


# Latent-sized float32 tensors alive during sampling besides the network's activations: the
# start noise, x, the solver's update and history (unipc / dpm++ keep two model outputs), the
# CFG pair (cond, uncond, the guided mix), the input latent and the returned copy. Counted from
# models/sampling (sampler.sample, guidance.guided, video.generate); 12 is an upper bound.
SAMPLER_LATENT_COPIES = 12
# A whole Sample Video (2 steps, CFG) peaked 1.13x above one forward's working memory at
# 480x320x33 with the 1.3B width (bench/memory_check.py): the step's other tensors at token
# width (the two passes' outputs, the context copies) outlive a single call.
SAMPLING_OVERHEAD = 1.2


def describe_latent(fmt: Any, shape: tuple[int, ...]) -> str:
    """'2 x 832x480, 81 frames' for a latent [B, C, T, H, W] of a family's LatentFormat."""
    b, _, t, h, w = shape
    s = fmt.space_ratio
    return f"{b} x {w * s}x{h * s}, {fmt.pixel_frames(t)} frames"


def module_bytes_off(module: torch.nn.Module, device: torch.device) -> int:
    """Bytes of `module`'s weights and buffers not yet on `device` (what moving it there adds)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors if t.device != device)


def sampling_estimate(model: Any, latent_shape: tuple[int, ...], context_frames: int | None,
                      device: torch.device) -> Estimate:
    """Peak of `models.sampling.video.generate` for `model` (a NodeModel) on `latent_shape`
    [B, C, T, H, W] on `device`, with the network called on windows of `context_frames` latent
    frames when context windows are used. Weights count only where they still have to move."""
    b, c, t, h, w = latent_shape
    est = Estimate(f"Sample Video ({describe_latent(model.latent, latent_shape)})",
                   advice="use fewer frames, a smaller size or a lower batch_size "
                          "(Context Options also bound the frames per network call)")
    est.add("latents", SAMPLER_LATENT_COPIES * tensor_bytes(latent_shape))
    est.add("network activations", SAMPLING_OVERHEAD *
            model.activation_bytes((b, c, min(t, context_frames or t), h, w), device))
    est.add("weights", module_bytes_off(model.net, device))
    return est


def vae_estimate(what: str, vae: Any, plan: Any, frames: int, height: int, width: int,
                 device: torch.device, pixel_copies: float, advice: str) -> Estimate:
    """Peak of one VAE pass (a NodeVAE `vae`, tiled by `plan`) over a `frames` x `height` x
    `width` video on `device`: the working memory of its largest window plus `pixel_copies`
    float32 copies of the whole pixel video (input / output and their conversions)."""
    from .tiling import working_bytes
    est = Estimate(what, advice=advice)
    est.add("VAE working memory", working_bytes(plan, vae.latent, height, width, frames,
                                                vae.bytes_per_pixel, vae.streams_time))
    est.add("frames", pixel_copies * video_bytes(frames, height, width))
    est.add("weights", module_bytes_off(vae.vae, device))
    return est


def _status_kb(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {name}")


def peak_rss_growth(fn: Callable[[], Any]) -> float:
    """Peak resident memory (bytes) that `fn()` adds to this process, from the kernel's own
    high-water mark (Linux >= 4.0). malloc_trim first hands back what glibc cached from earlier
    work (else `fn` reuses it and looks smaller); clear_refs=5 then resets VmHWM so the mark
    covers `fn` only. What `fn` returns and its temporaries alive at the peak all count,
    and so does memory glibc keeps in its heap after a free (its mmap threshold adapts to
    earlier frees): that is what a server really holds, so figures move by +-15% between runs."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kb("VmRSS")
    out = fn()
    peak = _status_kb("VmHWM")
    del out
    return float(peak - base) * 1024
