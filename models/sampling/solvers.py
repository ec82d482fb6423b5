"""Single-step update rules for flow models (velocity prediction, ``x0 = x - sigma * v``).

Every solver is a pure function ``step(x, v, sigmas, i, history) -> (x_next, history)`` that moves
the latent from ``sigmas[i]`` to ``sigmas[i + 1]`` given the velocity ``v`` the model predicted at
``(x, sigmas[i])``; the stochastic one also takes ``noise``, a callable drawing standard normal
noise like ``x``. The multistep solvers work in log-SNR ``lambda = log((1 - s) / s)`` and match
diffusers' schedulers configured for flow models (``prediction_type="flow_prediction"``,
``use_flow_sigmas=True``, ``final_sigmas_type="zero"``). Scalar coefficients are computed in
float64 Python floats; only the latents are tensors.

eps / v models run through the same rules after `discrete.py` rewrites them as flow models. That
rewrite is exact, and these steps are invariant under it: DDIM (eta 0) and diffusers' Euler are
the flow Euler step, DPM-Solver++ and UniPC depend on the noise levels only through log-SNR, and
`euler_ancestral` is the DDPM posterior step, which every parametrisation shares.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..common.errors import VideoForgeError

# log-SNR is -inf at sigma 1, so the log-SNR solvers start just below it, like diffusers' UniPC.
MAX_LOG_SNR_SIGMA = 1.0 - 1e-6


@dataclass(frozen=True)
class History:
    """What a solver carries from one step to the next."""

    x0: tuple[torch.Tensor, ...] = ()  # data predictions of the last (up to 2) steps, oldest first
    x_start: torch.Tensor | None = None  # UniPC: latent its last predictor started from
    order: int = 0  # UniPC: order of its last predictor, reused by the corrector


# step(x, v, sigmas, i, history) -> (x at sigmas[i + 1], history for step i + 1)
Step = Callable[
    [torch.Tensor, torch.Tensor, Sequence[float], int, History], tuple[torch.Tensor, History]
]


def log_snr(sigma: float) -> float:
    """lambda = log(alpha / sigma) with alpha = 1 - sigma; +inf at sigma 0, -inf at sigma 1."""
    if sigma <= 0.0:
        return math.inf
    if sigma >= 1.0:
        return -math.inf
    return math.log1p(-sigma) - math.log(sigma)


def euler(
    x: torch.Tensor, v: torch.Tensor, sigmas: Sequence[float], i: int, history: History
) -> tuple[torch.Tensor, History]:
    """First-order flow ODE step (FlowMatchEulerDiscreteScheduler): x + (sigma_next - sigma) * v."""
    return x + (sigmas[i + 1] - sigmas[i]) * v, history


def euler_ancestral(
    x: torch.Tensor,
    v: torch.Tensor,
    sigmas: Sequence[float],
    i: int,
    history: History,
    *,
    noise: Callable[[], torch.Tensor],
) -> tuple[torch.Tensor, History]:
    """Ancestral Euler (eta 1): Euler down to ``sigma_down``, then fresh noise up to ``sigma_next``.

    The split is k-diffusion's (diffusers' EulerAncestralDiscreteScheduler) in VE noise levels
    ``S = sigma / (1 - sigma)``: ``S_down = S_next^2 / S``, ``S_up^2 = S_next^2 - S_down^2``, which
    makes the step sample the DDPM posterior q(x_next | x, x0) given the predicted x0, whatever the
    parametrisation (ComfyUI's euler_ancestral_RF splits in flow sigmas instead; a different
    sampler). A flow latent is a VE latent times ``1 - sigma``, hence the rescale below.
    """
    s, t = sigmas[i], sigmas[i + 1]
    s_next = t / (1.0 - t)
    s_down = s_next * s_next * (1.0 - s) / s  # S_next^2 / S, finite at sigma 1 (S infinite)
    s_up = math.sqrt(max(s_next * s_next - s_down * s_down, 0.0))
    down = s_down / (1.0 + s_down)  # the flow sigma of S_down
    x = x + (down - s) * v
    # VE latent at S_down -> VE latent at S_next (add S_up noise) -> flow latent at t.
    x = (1.0 - t) * (1.0 + s_down) * x
    if s_up > 0.0:  # zero on the last step (t = 0), where the step lands on x0
        x = x + ((1.0 - t) * s_up) * noise().to(x)
    return x, history


def dpmpp_2m(
    x: torch.Tensor, v: torch.Tensor, sigmas: Sequence[float], i: int, history: History
) -> tuple[torch.Tensor, History]:
    """DPM-Solver++(2M), midpoint form, first order on the first and the last step.

    The last step is first order because diffusers drops to it whenever the final sigma is 0
    (``final_sigmas_type="zero"``); it lands exactly on the data prediction.
    """
    s, t = sigmas[i], sigmas[i + 1]
    x0 = x - s * v
    h = log_snr(t) - log_snr(s)
    phi = math.expm1(-h)  # -(1 - e^-h); -1 when t = 0
    x_next = (t / s) * x - (1.0 - t) * phi * x0
    is_last = i == len(sigmas) - 2
    if history.x0 and not is_last:
        # Second order: extrapolate x0 linearly in lambda using the previous step's prediction.
        r = (log_snr(s) - log_snr(sigmas[i - 1])) / h
        d1 = (x0 - history.x0[-1]) / r
        x_next = x_next - 0.5 * (1.0 - t) * phi * d1
    return x_next, History(x0=(x0,))


def _unipc_update(
    x: torch.Tensor,
    x0s: tuple[torch.Tensor, ...],
    sigmas: Sequence[float],
    s: int,
    t: int,
    order: int,
    x0_t: torch.Tensor | None = None,
) -> torch.Tensor:
    """One UniPC bh2 (data prediction) update of ``x`` from ``sigmas[s]`` to ``sigmas[t]``.

    ``x0s[-1]`` is the data prediction at ``sigmas[s]`` and, for order 2, ``x0s[-2]`` the one at
    ``sigmas[s - 1]``. Without ``x0_t`` this is the predictor UniP; with ``x0_t`` (the prediction at
    ``sigmas[t]``) it is the corrector UniC, which is one order higher.
    """
    sigma_s, sigma_t = sigmas[s], sigmas[t]
    lam_s = log_snr(sigma_s)
    h = log_snr(sigma_t) - lam_s
    b_h = math.expm1(-h)  # B(h) of the bh2 variant, equal to h * phi_1(-h)
    m0 = x0s[-1]
    x_t = (sigma_t / sigma_s) * x - (1.0 - sigma_t) * b_h * m0

    d1 = None
    if order == 2:
        rk = (log_snr(sigmas[s - 1]) - lam_s) / h
        d1 = (x0s[-2] - m0) / rk

    if x0_t is None:  # predictor: for order 2 diffusers fixes rho = 1/2
        correction = 0.5 * d1 if d1 is not None else None
    elif d1 is None:  # first-order corrector: rho = 1/2
        correction = 0.5 * (x0_t - m0)
    else:
        # Second-order corrector: solve [[1, 1], [rk, 1]] @ rho = b for the two weights.
        hh = -h
        k1 = b_h / hh - 1.0
        k2 = k1 / hh - 0.5
        b1, b2 = k1 / b_h, 2.0 * k2 / b_h
        rho0 = (b1 - b2) / (1.0 - rk)
        rho1 = b1 - rho0
        correction = rho0 * d1 + rho1 * (x0_t - m0)

    if correction is not None:
        x_t = x_t - (1.0 - sigma_t) * b_h * correction
    return x_t


def unipc(
    x: torch.Tensor, v: torch.Tensor, sigmas: Sequence[float], i: int, history: History
) -> tuple[torch.Tensor, History]:
    """UniPC (bh2, predict_x0, order 2, lower_order_final) as diffusers' Wan configuration.

    Each step first corrects the latent the previous predictor produced, using the model output
    just computed at it (free: no extra model call), then predicts the next latent from the
    corrected one. As in diffusers, the data prediction stays the one from the uncorrected latent.
    """
    x0 = x - sigmas[i] * v
    if history.x0:
        x = _unipc_update(history.x_start, history.x0, sigmas, i - 1, i, history.order, x0_t=x0)
    x0s = history.x0[-1:] + (x0,)
    steps_left = len(sigmas) - 1 - i
    order = min(2, steps_left, len(x0s))  # warm up from order 1; first order on the last step
    x_next = _unipc_update(x, x0s, sigmas, i, i + 1, order)
    return x_next, History(x0=x0s, x_start=x, order=order)


class Solver(NamedTuple):
    step: Callable[..., tuple[torch.Tensor, History]]  # a `Step`, plus ``noise=`` if stochastic
    needs_finite_log_snr: bool  # sigmas must stay strictly below 1
    stochastic: bool  # takes ``noise``: a callable drawing fresh standard normal noise like x


# Solvers by widget name. "ddim" is the Euler step (see the module docstring); it is its own name
# because eps / v models place its steps as diffusers' DDIMScheduler does (discrete.py).
_SOLVERS: dict[str, Solver] = {
    "euler": Solver(euler, False, False),
    "unipc": Solver(unipc, True, False),
    "dpm++_2m": Solver(dpmpp_2m, True, False),
    "ddim": Solver(euler, False, False),
    "euler_ancestral": Solver(euler_ancestral, False, True),
}
SOLVERS: tuple[str, ...] = tuple(_SOLVERS)


def get_solver(name: str) -> Solver:
    """The step function for ``name`` and what it needs."""
    try:
        return _SOLVERS[name]
    except (KeyError, TypeError):
        raise VideoForgeError(f"solver must be one of {', '.join(SOLVERS)}, got {name!r}") from None


def clamp_for_log_snr(sigmas: torch.Tensor) -> torch.Tensor:
    """Sigmas with a leading 1 lowered to ``1 - 1e-6``, as diffusers' UniPC does."""
    return sigmas.clamp(max=MAX_LOG_SNR_SIGMA)
