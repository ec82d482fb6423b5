"""Shifted flow-matching sigma schedules, and the sigma <-> timestep convention.

A flow model sees ``x_sigma = (1 - sigma) * x0 + sigma * noise`` and predicts the velocity
``v = noise - x0``; sigma runs from 1 (pure noise) to 0 (clean latent).

The schedule is the one diffusers' ``UniPCMultistepScheduler`` builds with
``use_flow_sigmas=True, flow_shift=shift`` (how ``WanPipeline`` is configured): ``steps`` points
spaced linearly from 1 down to (but excluding) ``1 / num_train_timesteps``, shifted with
``shift * s / (1 + (shift - 1) * s)``, then a final 0. Computed in float64, returned as float32,
exactly as diffusers stores ``scheduler.sigmas``.

Relation to other diffusers schedulers (all for denoise 1):

* ``FlowMatchEulerDiscreteScheduler(shift=shift)`` produces these exact sigmas when given the
  unshifted base points: ``set_timesteps(sigmas=linspace(1, 1/1000, steps + 1)[:-1])``. Its
  default ``set_timesteps(steps)`` differs: it spaces ``steps`` points linearly between 1 and the
  *already shifted* ``sigma_min`` and shifts them again, so its last nonzero sigma is smaller.
* UniPC additionally nudges a first sigma of exactly 1 to ``1 - 1e-6`` so its log-SNR stays
  finite; here that nudge belongs to the log-SNR solvers (see ``solvers.py``), not the schedule.
* ``DPMSolverMultistepScheduler`` builds its flow sigmas from ``linspace(0.999, 0, steps + 1)``
  instead, i.e. it never starts at sigma 1; its schedule is therefore not this one.
"""

from __future__ import annotations

import torch

from ..common.errors import VideoForgeError

# Flow models are trained with timestep = sigma * 1000.
NUM_TRAIN_TIMESTEPS = 1000


def sigma_to_timestep(sigma: float | torch.Tensor) -> float | torch.Tensor:
    """The timestep a flow model is conditioned on for noise level ``sigma``."""
    return sigma * NUM_TRAIN_TIMESTEPS


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """``shift * s / (1 + (shift - 1) * s)``: shift > 1 spends more of the steps at high noise."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def total_steps(steps: int, denoise: float) -> int:
    """Steps of the full schedule whose last ``steps`` a partial ``denoise`` runs (ComfyUI's
    KSampler rule, shared by the flow and the discrete schedules)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise VideoForgeError(f"steps must be an integer >= 1, got {steps!r}")
    if not 0.0 < denoise <= 1.0:
        raise VideoForgeError(f"denoise must be in (0, 1], got {denoise!r}")
    # The tiny epsilon keeps e.g. 3 / 0.3 = 9.999... from losing a step to float rounding.
    return steps if denoise == 1.0 else int(steps / denoise + 1e-6)


def flow_sigmas(steps: int, shift: float, denoise: float = 1.0,
                end: float = 1.0 / NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """The ``steps + 1`` sigmas (float32, decreasing, last 0) for ``steps`` sampler steps.

    The unshifted points are ``linspace(1, end, total + 1)`` without its last, then shifted:
    ``end`` 1/1000 is Wan's / EasyAnimate's (diffusers' FlowMatchEulerDiscreteScheduler default),
    0 HunyuanVideo's (its official scheduler and diffusers' pipeline); a model states its own as
    ``flow_sigma_end``.
    Denoise strength follows ComfyUI's KSampler: a schedule is built for
    ``int(steps / denoise)`` steps and its last ``steps + 1`` sigmas are kept, so ``steps`` is
    always the number of model evaluations and a partial denoise starts part-way down the curve.
    """
    total = total_steps(steps, denoise)
    if not shift > 0:
        raise VideoForgeError(f"shift must be > 0, got {shift!r}")
    # Same arithmetic as numpy.linspace(1, end, total + 1), which diffusers uses, minus its end.
    step = (end - 1.0) / total
    base = 1.0 + torch.arange(total, dtype=torch.float64) * step
    sigmas = torch.cat([shift_sigmas(base, float(shift)), base.new_zeros(1)])
    return sigmas[-(steps + 1) :].to(torch.float32)
