"""Text/image-to-video generation with any `VideoModel`: the one entry point the Sample Video
node calls. Family-agnostic: the model says what it predicts and how it is conditioned."""
from __future__ import annotations

from typing import Any

import torch

from ..common.errors import VideoForgeError
from ..common.family import VideoModel
from .guidance import guided
from .noise import make_noise
from .sampler import Callback, model_sigma, sample
from .schedules import flow_sigmas


def generate(model: VideoModel, latent: torch.Tensor, positive: dict[str, Any],
             negative: dict[str, Any] | None, *, seed: int, steps: int, cfg: float,
             solver: str = "unipc", shift: float | None = None, denoise: float = 1.0,
             extra: dict[str, Any] | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Sample a latent video.

    Args:
        latent: [B, C, T, H, W]; its content is used only when denoise < 1 (video-to-video).
        positive / negative: the family's conditioning dicts (e.g. {"context": ...}).
        extra: conditioning shared by both passes (e.g. I2V image latent and mask).
    Returns:
        [B, C, T, H, W] float32 on the model's device.
    """
    if model.prediction != "flow":
        raise VideoForgeError(f"{model.family} predicts {model.prediction!r}; only flow models "
                              "are sampled here so far.")
    if latent.dim() != 5 or latent.shape[1] != model.latent.channels:
        raise VideoForgeError(f"latent of shape {tuple(latent.shape)} does not fit this "
                              f"{model.family} model ([B, {model.latent.channels}, T, H, W] "
                              "expected); create it with Empty Video Latent from this model.")
    extra = extra or {}
    pos = {**positive, **extra}
    neg = {**negative, **extra} if negative is not None else None
    sigmas = flow_sigmas(steps, model.default_shift if shift is None else shift, denoise)
    # Noise is drawn on the CPU from the seed alone, so a seed gives the same video everywhere.
    noise = make_noise(latent.shape, seed).to(model.device)
    x_init = latent.to(model.device, torch.float32) if denoise < 1.0 else None
    b = latent.shape[0]

    def run(x: torch.Tensor, sigma: float, cond: dict[str, Any]) -> torch.Tensor:
        return model.denoise(x, torch.full((x.shape[0],), model_sigma(sigma, solver)), cond)

    model_fn = guided(run, pos, neg, cfg)
    return sample(model_fn, noise, sigmas, solver, x_init=x_init, callback=callback)[:b]
