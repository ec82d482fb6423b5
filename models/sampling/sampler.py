"""The sampling loop shared by every model family."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch

from ..common.errors import VideoForgeError
from .noise import noise_latent
from .solvers import History, clamp_for_log_snr, get_solver

# model_fn(x, sigma) -> flow velocity at flow noise level sigma. A flow model's timestep is
# sigma * 1000 (schedules.py); eps / v models are put in this form by discrete.vp_denoiser.
ModelFn = Callable[[torch.Tensor, float], torch.Tensor]
# callback(step, total, x, x0_pred); raising from it aborts sampling (e.g. user interrupt).
Callback = Callable[[int, int, torch.Tensor, torch.Tensor], None]

# The reference multistep schedulers (official Wan's FlowUniPC / FlowDPM++, diffusers' UniPC and
# DPM-Solver) hand the network int64 timesteps, i.e. sigma * 1000 truncated, while their solver
# math uses the exact sigma. `generate()` applies this to the network's input so those solvers
# match the reference outputs; `sample()` itself stays exact.
INTEGER_TIMESTEP_SOLVERS = frozenset({"unipc", "dpm++_2m"})


def model_sigma(sigma: float, solver: str) -> float:
    """The sigma the network sees for a solver step (see INTEGER_TIMESTEP_SOLVERS)."""
    return math.floor(sigma * 1000) / 1000 if solver in INTEGER_TIMESTEP_SOLVERS else sigma


def _check_sigmas(sigmas: torch.Tensor | Sequence[float]) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).detach().cpu()
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise VideoForgeError(
            f"sigmas must be 1-D with at least 2 values, got shape {tuple(sigmas.shape)}"
        )
    if (sigmas[1:] > sigmas[:-1]).any() or sigmas[0] > 1 or sigmas[-1] < 0:
        raise VideoForgeError(f"sigmas must decrease within [0, 1], got {sigmas.tolist()}")
    return sigmas


def sample(
    model_fn: ModelFn,
    noise: torch.Tensor,
    sigmas: torch.Tensor | Sequence[float],
    solver: str,
    *,
    x_init: torch.Tensor | None = None,
    noise_scale: float | None = None,
    step_noise: Callable[[], torch.Tensor] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Integrate the flow ODE along ``sigmas`` (used as float32) with one model call per step.

    The start is ``(1 - sigmas[0]) * x_init + sigmas[0] * noise``; without ``x_init`` it is
    ``noise_scale * noise`` (``noise_scale`` defaults to ``sigmas[0]``, i.e. the noised zero latent;
    DDPM-style schedulers start from unit-variance noise instead, see `discrete.py`). The latent is
    kept in at least float32 whatever the model computes in. ``step_noise`` draws the fresh noise
    of stochastic solvers (default: ``torch.randn_like`` on torch's global generator).
    ``callback`` runs after each model call with the step index, the step count, the latent the
    model saw and its data prediction ``x - sigma * v``.
    """
    step, needs_finite_log_snr, stochastic = get_solver(solver)
    sigmas = _check_sigmas(sigmas)
    dtype = torch.promote_types(noise.dtype, torch.float32)
    noise = noise.to(dtype)
    if x_init is not None:
        x = noise_latent(x_init.to(device=noise.device, dtype=dtype), noise, sigmas[0].item())
    else:
        x = (sigmas[0].item() if noise_scale is None else noise_scale) * noise
    if needs_finite_log_snr:
        sigmas = clamp_for_log_snr(sigmas)
    if stochastic:
        step = partial(step, noise=step_noise or (lambda: torch.randn_like(noise)))

    sigma_list = sigmas.tolist()  # float32 values as Python floats, for exact scalar arithmetic
    total = len(sigma_list) - 1
    history = History()
    for i in range(total):
        sigma = sigma_list[i]
        v = model_fn(x, sigma).to(dtype)
        if callback is not None:
            callback(i, total, x, x - sigma * v)
        x, history = step(x, v, sigma_list, i, history)
    return x
