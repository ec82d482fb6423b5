"""models.sampling against diffusers' flow schedulers driven with the same toy velocity model."""

import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from models.sampling import flow_sigmas, sample
from models.sampling.solvers import clamp_for_log_snr

STEPS = (1, 2, 4, 10, 25)
SHIFTS = (1.0, 3.0, 5.0)
SHAPE = (2, 3, 4, 8)


def toy_model(seed: int = 0):
    """Deterministic nonlinear velocity: v = tanh(x @ A) + sigma * b."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(SHAPE[-1], SHAPE[-1], generator=g) / SHAPE[-1] ** 0.5
    b = torch.randn(SHAPE, generator=g)
    return lambda x, sigma: torch.tanh(x @ a) + float(sigma) * b


def make_scheduler(solver: str, shift: float):
    if solver == "euler":
        return FlowMatchEulerDiscreteScheduler(shift=shift)
    if solver == "unipc":
        return UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=shift
        )
    return DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++",
        solver_order=2,
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
    )


def set_timesteps(scheduler, solver: str, steps: int, sigmas: torch.Tensor | None = None) -> None:
    if solver == "euler":
        # Unshifted base points; the scheduler applies the shift itself.
        scheduler.set_timesteps(sigmas=np.linspace(1, 1 / 1000, steps + 1)[:-1])
    else:
        scheduler.set_timesteps(steps)
    if sigmas is not None:  # DPM++ builds a different schedule; drive its step math with ours
        scheduler.sigmas = sigmas.clone()
    scheduler.set_begin_index(0)  # as WanPipeline does


def run_diffusers(scheduler, model, noise: torch.Tensor) -> torch.Tensor:
    x = noise.clone()
    for i, t in enumerate(scheduler.timesteps):
        # The model sees the scheduler's own sigma, i.e. the same value our loop passes.
        # (Pipelines truncate the network's timestep for UniPC / DPM; that is generate()'s job.)
        v = model(x, scheduler.sigmas[i].item())
        x = scheduler.step(v, t, x, return_dict=False)[0]
    return x


def noise() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(123))


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("steps", STEPS)
def test_schedule_matches_diffusers(steps: int, shift: float) -> None:
    ours = flow_sigmas(steps, shift)
    assert ours.dtype == torch.float32

    euler = make_scheduler("euler", shift)
    set_timesteps(euler, "euler", steps)
    torch.testing.assert_close(ours, euler.sigmas, atol=1e-6, rtol=0)

    # UniPC lowers a leading 1 to 1 - 1e-6; our log-SNR solvers apply the same clamp.
    uni = make_scheduler("unipc", shift)
    set_timesteps(uni, "unipc", steps)
    torch.testing.assert_close(clamp_for_log_snr(ours), uni.sigmas, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours * 1000, torch.cat([euler.timesteps, torch.zeros(1)]), atol=1e-3, rtol=0)


@pytest.mark.parametrize("solver", ["euler", "unipc", "dpm++_2m"])
@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("steps", STEPS)
def test_solver_matches_diffusers(solver: str, steps: int, shift: float) -> None:
    model, eps = toy_model(), noise()
    sigmas = flow_sigmas(steps, shift)

    scheduler = make_scheduler(solver, shift)
    injected = clamp_for_log_snr(sigmas) if solver == "dpm++_2m" else None
    set_timesteps(scheduler, solver, steps, injected)
    expected = run_diffusers(scheduler, model, eps)

    got = sample(model, eps, sigmas, solver)
    assert torch.isfinite(got).all()
    assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("steps", STEPS)
def test_dpmpp_2m_on_native_diffusers_schedule(steps: int, shift: float) -> None:
    """Our DPM++(2M) also reproduces diffusers end to end on diffusers' own DPM flow sigmas."""
    model, eps = toy_model(), noise()
    scheduler = make_scheduler("dpm++_2m", shift)
    set_timesteps(scheduler, "dpm++_2m", steps)
    expected = run_diffusers(scheduler, model, eps)
    # Diffusers starts from the pure noise although its first sigma is below 1; x_init = noise
    # makes our start (1 - sigma) * x_init + sigma * noise equal to it.
    got = sample(model, eps, scheduler.sigmas, "dpm++_2m", x_init=eps)
    assert (got - expected).abs().max().item() <= 1e-5
