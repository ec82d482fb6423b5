"""Text/image-to-video generation with any `VideoModel`: the one entry point the Sample Video
node calls. Family-agnostic: the model says what it predicts and how it is conditioned."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..common.errors import VideoForgeError
from ..common.family import VideoModel
from .discrete import VP_PREDICTIONS, DiscreteSteps, NoiseSchedule, discrete_steps, vp_denoiser
from .guidance import guided
from .noise import noise_stream
from .sampler import Callback, model_sigma, sample
from .schedules import flow_sigmas


def _noise_schedule(model: VideoModel, beta_schedule: str | None) -> NoiseSchedule:
    schedule = getattr(model, "noise_schedule", None)
    if not isinstance(schedule, NoiseSchedule):
        raise VideoForgeError(f"this {model.family} model predicts {model.prediction!r} but states "
                              "no noise_schedule (models.sampling.discrete.NoiseSchedule).")
    return schedule if beta_schedule is None else replace(schedule, beta_schedule=beta_schedule)


def generate(model: VideoModel, latent: torch.Tensor, positive: dict[str, Any],
             negative: dict[str, Any] | None, *, seed: int, steps: int, cfg: float,
             solver: str = "unipc", shift: float | None = None, denoise: float = 1.0,
             beta_schedule: str | None = None, karras: bool = False, spacing: str | None = None,
             extra: dict[str, Any] | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Sample a latent video.

    Args:
        latent: [B, C, T, H, W]; its content is used only when denoise < 1 (video-to-video).
        positive / negative: the family's conditioning dicts (e.g. {"context": ...}).
        shift: flow models only (default: the model's); ignored for eps / v models.
        beta_schedule / karras / spacing: eps / v models only: another beta schedule than the
            model's (`discrete.BETA_SCHEDULES`), Karras sigmas, another timestep spacing than
            the solver's diffusers default (`discrete.SPACINGS`).
        extra: conditioning shared by both passes (e.g. I2V image latent and mask).
    Returns:
        [B, C, T, H, W] float32 on the model's device (for eps / v models the VP latent).
    """
    if model.prediction != "flow" and model.prediction not in VP_PREDICTIONS:
        raise VideoForgeError(f"{model.family} predicts {model.prediction!r}; the sampler handles "
                              f"flow, {', '.join(VP_PREDICTIONS)} models.")
    if latent.dim() != 5 or latent.shape[1] != model.latent.channels:
        raise VideoForgeError(f"latent of shape {tuple(latent.shape)} does not fit this "
                              f"{model.family} model ([B, {model.latent.channels}, T, H, W] "
                              "expected); create it with Empty Video Latent from this model.")
    extra = extra or {}
    pos = {**positive, **extra}
    neg = {**negative, **extra} if negative is not None else None
    # Noise is drawn on the CPU from the seed alone, so a seed gives the same video everywhere;
    # stochastic solvers draw their step noise from the same stream, after the start noise.
    draw = noise_stream(latent.shape, seed)
    noise = draw().to(model.device)
    x_init = latent.to(model.device, torch.float32) if denoise < 1.0 else None
    b = latent.shape[0]

    plan: DiscreteSteps | None = None
    if model.prediction == "flow":
        if beta_schedule is not None or karras or spacing is not None:
            raise VideoForgeError(f"beta_schedule / karras / spacing are for eps / v models; this "
                                  f"{model.family} model is a flow model (use shift).")
        sigmas = flow_sigmas(steps, model.default_shift if shift is None else shift, denoise)

        def run(x: torch.Tensor, sigma: float, cond: dict[str, Any]) -> torch.Tensor:
            return model.denoise(x, torch.full((x.shape[0],), model_sigma(sigma, solver)), cond)
    else:
        plan = discrete_steps(_noise_schedule(model, beta_schedule), steps, solver,
                              spacing=spacing, karras=karras, denoise=denoise)
        sigmas = plan.sigmas
        run = vp_denoiser(model.denoise, model.prediction, plan)

    model_fn = guided(run, pos, neg, cfg)
    out = sample(model_fn, noise, sigmas, solver, x_init=x_init,
                 noise_scale=None if plan is None else plan.noise_scale,
                 step_noise=lambda: draw().to(model.device), callback=callback)
    return (out if plan is None else plan.to_model_space(out))[:b]
