"""Discrete-time (DDPM / Stable Diffusion style) eps and v models, sampled as flow models.

Such a model is trained on ``num_train_timesteps`` discrete timesteps t with
``acp = alphas_cumprod[t]`` from a beta schedule. Three spaces describe the same noisy latent:

* VP   ``x_t = a x0 + s eps`` with ``a = sqrt(acp)``, ``s = sqrt(1 - acp)``: what the network reads
  (diffusers' UNet input after ``scale_model_input``); DDIM / DPM-Solver keep their latent here.
* VE   ``x_t / a = x0 + S eps`` with ``S = s / a``: k-diffusion's and diffusers' Euler latent;
  ``S`` is what those schedulers call sigma.
* flow ``x_t / (a + s) = (1 - sigma) x0 + sigma eps`` with ``sigma = s / (a + s) = S / (1 + S)``.

The sampler (`sampler.sample`) always runs in flow space, so one loop and one set of solvers
serve every family (the rewrite is exact and the solvers are invariant under it, see
`solvers.py`). With ``r = sqrt((1 - sigma)^2 + sigma^2) = 1 / (a + s)``, the flow latent x at
``sigma`` is the VP latent ``x / r`` (k-diffusion's ``c_in = 1 / sqrt(S^2 + 1)`` applied to the
VE latent gives the same), and the network output becomes the flow velocity ``eps - x0``:

* eps:                     ``v = (eps - x) / (1 - sigma)``
* v (``a eps - s x0``):    ``v = (2 sigma - 1) x / r^2 + v_net / r``

Family adapter contract for ``prediction`` "eps" / "v": the model carries ``noise_schedule`` (a
`NoiseSchedule`), and ``denoise(x, t, cond)`` receives the VP latent x [B, C, T, H, W] and the
network timestep t [B] (float32), returning the raw network output (eps or v) like x. The
conversion and the timestep of each step live here (`vp_denoiser`), once for every family.

Steps are placed as the diffusers scheduler each solver stands for places them, so the network
sees exactly the timesteps that scheduler hands the UNet (diffusers' own defaults, as its
Stable Diffusion / AnimateDiff pipelines use them when built from the model's config):

=================  ==============================  =======  ================  ================
solver             scheduler                       spacing  network t         start (full)
=================  ==============================  =======  ================  ================
ddim               DDIMScheduler                   leading  int               unit noise
euler              EulerDiscreteScheduler          linspace float (interp.)   sigma * noise
euler_ancestral    EulerAncestralDiscreteScheduler linspace float (interp.)   sigma * noise
dpm++_2m / unipc   DPMSolverMultistep / UniPC      linspace int (steps + 1    unit noise
                                                            points, lowest
                                                            dropped)
=================  ==============================  =======  ================  ================

"unit noise" is VP ``x_t = noise`` (``init_noise_sigma = 1``); Euler's start is ``S_max * noise``
in VE for linspace / trailing spacing and unit noise for leading. Karras sigmas
(``use_karras_sigmas=True``) re-space the steps with rho 7 between the lowest and highest sigma
of the spaced steps (Euler's rule; with the default linspace those are the training sigmas of
timesteps 0 and T-1) or of the whole training range (DPM-Solver's and UniPC's; also used for
DDIM, which diffusers has no Karras option for); the network timesteps are then interpolated in
log sigma, and rounded where the scheduler hands out ints. Every schedule ends at sigma 0,
except DDIM's without karras when ``set_alpha_to_one`` is false (SD's config): its last step
lands on timestep 0's noise level, and the result is returned in VP space there.

Known divergences, both diffusers quirks: its DDIM with "linspace" / "trailing" spacing steps
each latent to ``t - T // steps``, which is not the next timestep unless the grid is uniform
(here every step lands on the next step's noise level; "leading" is uniform, so DDIM's default
matches exactly); and its "trailing" grid has one extra timestep (-1) for some step counts
(61, 103, ... of 1000), which is dropped here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..common.errors import VideoForgeError
from .schedules import total_steps
from .solvers import SOLVERS

# Diffusers' names. ComfyUI / AnimateDiff-Evolved call diffusers' "linear" (AnimateDiff's
# schedule) "sqrt_linear", and call SD's "scaled_linear" "linear": "sqrt_linear" is accepted as
# the same betas as "linear", but a bare "linear" here always means diffusers' linear.
BETA_SCHEDULES: tuple[str, ...] = ("scaled_linear", "linear", "sqrt_linear")
SPACINGS: tuple[str, ...] = ("leading", "linspace", "trailing")
VP_PREDICTIONS: tuple[str, ...] = ("eps", "v")


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete model's training noise schedule plus the two step-placement settings of the
    scheduler config shipped with it (diffusers' scheduler_config.json). Defaults: SD 1.5."""

    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000
    steps_offset: int = 1  # added to "leading" timesteps
    set_alpha_to_one: bool = False  # DDIM: the last step lands on sigma 0, else on timestep 0

    def __post_init__(self) -> None:
        if self.beta_schedule not in BETA_SCHEDULES:
            raise VideoForgeError(f"beta schedule must be one of {', '.join(BETA_SCHEDULES)}, "
                                  f"got {self.beta_schedule!r}")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise VideoForgeError("betas must satisfy 0 < beta_start < beta_end < 1, got "
                                  f"beta_start={self.beta_start!r}, beta_end={self.beta_end!r}")
        n = self.num_train_timesteps
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise VideoForgeError(f"num_train_timesteps must be an integer >= 2, got {n!r}")
        if isinstance(self.steps_offset, bool) or not isinstance(self.steps_offset, int) \
                or not 0 <= self.steps_offset < n:
            raise VideoForgeError(f"steps_offset must be an integer in [0, {n}), "
                                  f"got {self.steps_offset!r}")

    def alphas_cumprod(self) -> torch.Tensor:
        """[T] float32 ``acp`` of timesteps 0..T-1, in diffusers' float32 arithmetic."""
        n = self.num_train_timesteps
        if self.beta_schedule == "scaled_linear":
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n,
                                   dtype=torch.float32) ** 2
        else:  # "linear" / "sqrt_linear"
            betas = torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float32)
        return torch.cumprod(1.0 - betas, dim=0)

    def train_sigmas(self) -> torch.Tensor:
        """[T] float32 VE sigmas ``S = sqrt((1 - acp) / acp)`` of timesteps 0..T-1 (increasing)."""
        acp = self.alphas_cumprod()
        return ((1 - acp) / acp) ** 0.5


@dataclass(frozen=True)
class _Placement:
    """How the diffusers scheduler a solver stands for places its steps (see the table above)."""

    spacing: str  # its default timestep_spacing
    integer: bool  # hands the network int timesteps
    extra_point: bool  # linspace / leading space steps + 1 points and drop the lowest
    sigma_start: frozenset[str]  # spacings whose start is sigma * noise instead of unit noise
    final_at_t0: bool  # without set_alpha_to_one the last step lands on timestep 0 (DDIM)
    karras_over_spacing: bool  # Karras spans the spaced sigmas (Euler), else the training range


_EULER = _Placement("linspace", False, False, frozenset({"linspace", "trailing"}), False, True)
_MULTISTEP = _Placement("linspace", True, True, frozenset(), False, False)
_PLACEMENTS: dict[str, _Placement] = {
    "ddim": _Placement("leading", True, False, frozenset(), True, False),
    "euler": _EULER,
    "euler_ancestral": _EULER,
    "dpm++_2m": _MULTISTEP,
    "unipc": _MULTISTEP,
}


@dataclass(frozen=True)
class DiscreteSteps:
    """Where an eps / v model is sampled: the solver's flow sigmas and the network timesteps."""

    sigmas: torch.Tensor  # [steps + 1] float32 flow sigmas, decreasing
    timesteps: tuple[float, ...]  # [steps] network timestep of each step (float32 values)
    noise_scale: float | None  # start latent = noise_scale * noise at full denoise (None: sigma)

    def to_model_space(self, x: torch.Tensor) -> torch.Tensor:
        """The flow latent at the last sigma as the VP latent the model's VAE decodes."""
        return flow_to_vp(x, self.sigmas[-1].item())


def flow_to_vp(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Flow latent at ``sigma`` -> VP latent ``x / sqrt((1 - sigma)^2 + sigma^2)``."""
    return x / math.hypot(1.0 - sigma, sigma)


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> torch.Tensor:
    """[steps] float64 VE sigmas from ``sigma_max`` down to ``sigma_min``, evenly spaced in
    ``sigma^(1 / rho)`` (Karras et al. 2022, as k-diffusion and diffusers build them)."""
    ramp = np.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.from_numpy((hi + ramp * (lo - hi)) ** rho)


def _sigma_to_timestep(sigmas: np.ndarray, log_train: np.ndarray) -> np.ndarray:
    """Fractional timesteps of VE ``sigmas``: linear interpolation in log sigma between the
    training sigmas (``log_train``, float32 as diffusers keeps it, increasing)."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    low = np.clip(np.searchsorted(log_train, log_sigma, side="right") - 1, 0, len(log_train) - 2)
    lo, hi = log_train[low], log_train[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
    return (1 - w) * low + w * (low + 1)


def _spaced_timesteps(spacing: str, count: int, schedule: NoiseSchedule) -> np.ndarray:
    """``count`` decreasing float64 timesteps by diffusers' ``timestep_spacing`` rules."""
    n = schedule.num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, n - 1, count)[::-1]
    if spacing == "leading":
        return (np.arange(count) * (n // count))[::-1] + float(schedule.steps_offset)
    # trailing; numpy's float arange as diffusers calls it (its accumulated rounding decides some
    # timesteps). For some counts (61, 103, ...) it yields one value too many, a timestep -1 that
    # diffusers then steps through; the cut keeps ``count``.
    return np.arange(n, 0, -n / count).round()[:count] - 1


def discrete_steps(schedule: NoiseSchedule, steps: int, solver: str, *, spacing: str | None = None,
                   karras: bool = False, denoise: float = 1.0) -> DiscreteSteps:
    """The steps of ``solver`` for an eps / v model trained on ``schedule``.

    ``spacing`` defaults to the solver's diffusers scheduler's; ``karras`` replaces it with
    Karras sigmas. A partial ``denoise`` keeps the last ``steps`` of a longer schedule, as
    `schedules.flow_sigmas` does (diffusers' img2img ``strength`` on the same grid).
    """
    total = total_steps(steps, denoise)
    try:
        place = _PLACEMENTS[solver]
    except (KeyError, TypeError):
        raise VideoForgeError(f"solver must be one of {', '.join(SOLVERS)}, "
                              f"got {solver!r}") from None
    spacing = place.spacing if spacing is None else spacing
    if spacing not in SPACINGS:
        raise VideoForgeError(f"timestep spacing must be one of {', '.join(SPACINGS)}, "
                              f"got {spacing!r}")
    n_train = schedule.num_train_timesteps
    extra = int(place.extra_point and spacing != "trailing" and not karras)
    if total + extra > n_train:
        raise VideoForgeError(f"{total} steps (steps / denoise) exceed what a {n_train}-timestep "
                              f"model can take with {solver}: at most {n_train - extra}")

    train = schedule.train_sigmas().numpy()
    t = _spaced_timesteps(spacing, total + extra, schedule)[:total]
    # Euler keeps its timesteps as float32 and interpolates the sigmas at those values.
    t = np.round(t) if place.integer else t.astype(np.float32)
    ve = np.interp(t, np.arange(n_train), train)
    if karras:
        lo, hi = (ve[-1], ve[0]) if place.karras_over_spacing else (train[0], train[-1])
        ve = karras_sigmas(float(lo), float(hi), total).numpy()
        t = _sigma_to_timestep(ve, np.log(train))
        if place.integer:
            t = np.round(t)
    at_t0 = place.final_at_t0 and not karras and not schedule.set_alpha_to_one
    ve = np.append(ve, float(train[0]) if at_t0 else 0.0)
    ve = ve.astype(np.float32).astype(np.float64)  # the schedulers keep float32 sigmas
    flow = torch.from_numpy(ve / (1.0 + ve)).to(torch.float32)[-(steps + 1):]
    timesteps = tuple(float(v) for v in t.astype(np.float32)[-steps:])
    s0 = flow[0].item()
    noise_scale = None if spacing in place.sigma_start else math.hypot(1.0 - s0, s0)
    return DiscreteSteps(flow, timesteps, noise_scale)


# denoise(x_vp [B, ...], t [B], cond) -> eps or v like x_vp
NetworkFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def vp_denoiser(denoise: NetworkFn, prediction: str,
                plan: DiscreteSteps) -> Callable[[torch.Tensor, float, Any], torch.Tensor]:
    """``model(x, sigma, cond) -> flow velocity`` around an eps / v network (for `guided`).

    x is the flow latent at the plan's ``sigma``; the network gets the VP latent and the plan's
    timestep of that step.
    """
    if prediction not in VP_PREDICTIONS:
        raise VideoForgeError(f"prediction must be one of {', '.join(VP_PREDICTIONS)}, "
                              f"got {prediction!r}")
    step_sigmas = plan.sigmas.tolist()[:-1]

    def model(x: torch.Tensor, sigma: float, cond: Any) -> torch.Tensor:
        # sample() hands back the plan's own float32 sigmas, so the nearest one is the step
        # (nearest rather than equal so a solver's clamp of the first sigma cannot break it).
        i = min(range(len(step_sigmas)), key=lambda k: abs(step_sigmas[k] - sigma))
        r = math.hypot(1.0 - sigma, sigma)
        t = torch.full((x.shape[0],), plan.timesteps[i], dtype=torch.float32, device=x.device)
        out = denoise(x / r, t, cond).to(x.dtype)
        if prediction == "eps":
            return (out - x) / (1.0 - sigma)
        return ((2.0 * sigma - 1.0) / (r * r)) * x + out / r

    return model
