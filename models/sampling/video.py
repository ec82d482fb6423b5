"""Text/image-to-video generation with any `VideoModel`: the one entry point the Sample Video
node calls. Family-agnostic: the model says what it predicts and how it is conditioned."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..common.errors import VideoForgeError
from ..common.family import VideoModel
from .context import ContextOptions, nearest_step, windowed
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


def _check_frames(model: VideoModel, frames: int, context: ContextOptions | None) -> None:
    """A model with a frame limit (``max_frames``: an AnimateDiff motion module's length in
    latent frames) must see at most that many frames per call."""
    limit = getattr(model, "max_frames", None)
    if limit is None or frames <= limit:
        return
    size = min(16, limit)
    example = f"length {size}, overlap {min(4, size // 4)}"
    if context is None:
        raise VideoForgeError(f"{frames} frames exceed this model's {limit}-frame motion module; "
                              f"connect Context Options (e.g. {example}) to Sample Video or use "
                              f"at most {limit} frames")
    if context.length > limit:
        raise VideoForgeError(f"Context Options length {context.length} exceeds this model's "
                              f"{limit}-frame motion module; use a length of at most {limit} "
                              f"(e.g. {example})")


def generate(model: VideoModel, latent: torch.Tensor, positive: dict[str, Any],
             negative: dict[str, Any] | None, *, seed: int, steps: int, cfg: float,
             solver: str = "unipc", shift: float | None = None, denoise: float = 1.0,
             beta_schedule: str | None = None, karras: bool = False, spacing: str | None = None,
             extra: dict[str, Any] | None = None, callback: Callback | None = None,
             context: ContextOptions | None = None) -> torch.Tensor:
    """Sample a latent video.

    Args:
        latent: [B, C, T, H, W]; its content is used only when denoise < 1 (video-to-video).
        positive / negative: the family's conditioning dicts (e.g. {"context": ...}).
        shift: flow models only (default: the model's); ignored for eps / v models.
        beta_schedule / karras / spacing: eps / v models only: another beta schedule than the
            model's (`discrete.BETA_SCHEDULES`), Karras sigmas, another timestep spacing than
            the solver's diffusers default (`discrete.SPACINGS`).
        extra: conditioning shared by both passes (e.g. I2V image latent and mask).
        context: denoise the frames in overlapping windows (`context.windowed`) at every model
            call; needed beyond a motion module's length (a model's ``max_frames``). A clip no
            longer than the window gives exactly the result without it.
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
    _check_frames(model, latent.shape[2], context)
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
        sigmas = flow_sigmas(steps, model.default_shift if shift is None else shift, denoise,
                             end=model.flow_sigma_end)
        net = model.denoise
        if context is not None:
            net = windowed(net, context, nearest_step(
                [model_sigma(s, solver) for s in sigmas.tolist()[:-1]]), num_steps=steps)

        def run(x: torch.Tensor, sigma: float, cond: dict[str, Any]) -> torch.Tensor:
            return net(x, torch.full((x.shape[0],), model_sigma(sigma, solver)), cond)
    else:
        plan = discrete_steps(_noise_schedule(model, beta_schedule), steps, solver,
                              spacing=spacing, karras=karras, denoise=denoise)
        sigmas = plan.sigmas
        net = model.denoise
        if context is not None:
            net = windowed(net, context, nearest_step(plan.timesteps), num_steps=steps)
        run = vp_denoiser(net, model.prediction, plan)

    model_fn = guided(run, pos, neg, cfg)
    out = sample(model_fn, noise, sigmas, solver, x_init=x_init,
                 noise_scale=None if plan is None else plan.noise_scale,
                 step_noise=lambda: draw().to(model.device), callback=callback)
    return (out if plan is None else plan.to_model_space(out))[:b]
