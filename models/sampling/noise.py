"""Seeded noise (the start and, for stochastic solvers, one draw per step) and the
flow-matching forward (noising) process."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..common.errors import VideoForgeError


def noise_stream(shape: Sequence[int], seed: int) -> Callable[[], torch.Tensor]:
    """Successive float32 CPU draws of standard normal noise of ``shape`` from one generator.

    The first draw is the starting noise (`make_noise`); stochastic solvers take the next ones,
    one per step. That is the order in which a diffusers pipeline given
    ``generator=torch.Generator("cpu").manual_seed(seed)`` draws its latents and then its
    ancestral noise, so a seed reproduces such a run.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise VideoForgeError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    shape = tuple(shape)
    return lambda: torch.randn(shape, generator=generator, dtype=torch.float32)


def make_noise(shape: Sequence[int], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise that depends only on ``seed`` and ``shape``.

    Drawn on the CPU in float32 (then cast) because CUDA and CPU generators, and randn in
    different dtypes, produce different streams; the caller moves the result to its device.
    """
    return noise_stream(shape, seed)().to(dtype)


def noise_latent(latent: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """The latent as seen at noise level ``sigma``: ``(1 - sigma) * latent + sigma * noise``."""
    if latent.shape != noise.shape:
        raise VideoForgeError(
            f"latent shape {tuple(latent.shape)} must match noise shape {tuple(noise.shape)}"
        )
    return (1.0 - sigma) * latent + sigma * noise
