"""Unit tests of models.sampling.discrete (eps / v models as flow models), the ancestral solver
and the seeded noise stream. Comparisons with diffusers are in tests/parity/test_sampler_eps.py."""

import math

import pytest
import torch

from models.common.errors import VideoForgeError
from models.common.family import LatentFormat
from models.sampling import (
    BETA_SCHEDULES,
    SOLVERS,
    NoiseSchedule,
    discrete_steps,
    euler_ancestral,
    flow_to_vp,
    karras_sigmas,
    make_noise,
    noise_stream,
    sample,
    vp_denoiser,
)
from models.sampling.discrete import _PLACEMENTS
from models.sampling.solvers import History
from models.sampling.video import generate


def _acp64(betas: torch.Tensor) -> torch.Tensor:
    return torch.cumprod(1.0 - betas, dim=0)


@pytest.mark.parametrize("name", BETA_SCHEDULES)
def test_betas_follow_their_definitions(name: str) -> None:
    """SD's scaled_linear squares a linspace of sqrt(beta); linear (ComfyUI: sqrt_linear) is a
    linspace of beta. Built in float32 like diffusers; within float32 rounding of float64 ones."""
    lo, hi = 0.00085, 0.012
    if name == "scaled_linear":
        betas = torch.linspace(lo**0.5, hi**0.5, 1000, dtype=torch.float64) ** 2
    else:
        betas = torch.linspace(lo, hi, 1000, dtype=torch.float64)
    acp = NoiseSchedule(name).alphas_cumprod()
    assert acp.dtype == torch.float32 and acp.shape == (1000,)
    torch.testing.assert_close(acp.double(), _acp64(betas), rtol=2e-5, atol=0)
    sigmas = NoiseSchedule(name).train_sigmas()
    torch.testing.assert_close(sigmas, ((1 - acp) / acp) ** 0.5, rtol=0, atol=0)
    assert (sigmas[1:] > sigmas[:-1]).all()


def test_sqrt_linear_is_linear_and_sd15_is_the_default() -> None:
    assert torch.equal(NoiseSchedule("sqrt_linear").alphas_cumprod(), NoiseSchedule("linear").alphas_cumprod())
    sd = NoiseSchedule()
    assert (sd.beta_schedule, sd.beta_start, sd.beta_end, sd.num_train_timesteps, sd.steps_offset,
            sd.set_alpha_to_one) == ("scaled_linear", 0.00085, 0.012, 1000, 1, False)
    # SD 1.5's training sigma range, as every k-diffusion user knows it
    assert sd.train_sigmas()[0].item() == pytest.approx(0.0292, abs=1e-4)
    assert sd.train_sigmas()[-1].item() == pytest.approx(14.6146, abs=1e-3)


def test_karras_sigmas_are_even_in_sigma_to_one_over_rho() -> None:
    s = karras_sigmas(0.03, 14.6, 9, rho=7.0)
    assert s.dtype == torch.float64 and s.shape == (9,)
    assert s[0].item() == pytest.approx(14.6, rel=1e-12) and s[-1].item() == pytest.approx(0.03, rel=1e-12)
    d = (s ** (1 / 7)).diff()
    torch.testing.assert_close(d, d[:1].expand_as(d), rtol=1e-9, atol=0)


def test_every_solver_has_a_step_placement() -> None:
    assert set(_PLACEMENTS) == set(SOLVERS)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("karras", [False, True])
def test_discrete_steps_shape(solver: str, karras: bool) -> None:
    plan = discrete_steps(NoiseSchedule(set_alpha_to_one=True), 12, solver, karras=karras)
    assert plan.sigmas.shape == (13,) and plan.sigmas.dtype == torch.float32
    assert len(plan.timesteps) == 12
    assert (plan.sigmas[1:] < plan.sigmas[:-1]).all() and plan.sigmas[-1].item() == 0.0
    assert 0.85 < plan.sigmas[0].item() < 0.94  # SD's sigma_max 14.6 is flow sigma 0.936
    if _PLACEMENTS[solver].integer:
        assert all(t == int(t) for t in plan.timesteps)


def test_ddim_leading_grid_and_last_level() -> None:
    """diffusers' DDIM on SD 1.5: timesteps 961, 921, ..., 1; the last step lands on the noise
    level of timestep 0 unless set_alpha_to_one."""
    train = NoiseSchedule().train_sigmas().double()
    plan = discrete_steps(NoiseSchedule(), 25, "ddim")
    assert plan.timesteps == tuple(float(t) for t in range(961, 0, -40))
    assert plan.sigmas[-1].item() == pytest.approx((train[0] / (1 + train[0])).item(), rel=1e-6)
    assert plan.noise_scale == pytest.approx(math.hypot(1 - plan.sigmas[0].item(), plan.sigmas[0].item()))
    assert discrete_steps(NoiseSchedule(set_alpha_to_one=True), 25, "ddim").sigmas[-1].item() == 0.0


def test_euler_linspace_starts_from_sigma_times_noise_and_fractional_timesteps() -> None:
    plan = discrete_steps(NoiseSchedule(), 4, "euler")
    assert plan.noise_scale is None
    assert plan.timesteps == (999.0, 666.0, 333.0, 0.0)
    assert discrete_steps(NoiseSchedule(), 7, "euler").timesteps[1] == pytest.approx(832.5)
    assert discrete_steps(NoiseSchedule(), 4, "euler", spacing="leading").noise_scale is not None


@pytest.mark.parametrize("solver", SOLVERS)
def test_partial_denoise_keeps_the_tail(solver: str) -> None:
    full = discrete_steps(NoiseSchedule(), 10, solver)
    part = discrete_steps(NoiseSchedule(), 5, solver, denoise=0.5)
    assert torch.equal(part.sigmas, full.sigmas[-6:]) and part.timesteps == full.timesteps[-5:]


def _noised(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 0.93])
def test_flow_and_vp_latents_agree(sigma: float) -> None:
    x0, eps = _noised()
    s_ve = sigma / (1 - sigma)
    a = 1 / math.sqrt(1 + s_ve**2)  # sqrt(acp) of that noise level
    s = s_ve * a
    torch.testing.assert_close(flow_to_vp((1 - sigma) * x0 + sigma * eps, sigma), a * x0 + s * eps)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_vp_denoiser_turns_an_exact_network_into_the_flow_velocity(prediction: str) -> None:
    """A network that knows x0 and eps returns them; the wrapper must give eps - x0, feed the VP
    latent and the step's timestep."""
    x0, eps = _noised()
    plan = discrete_steps(NoiseSchedule(), 6, "dpm++_2m")
    seen = []

    def network(x_vp: torch.Tensor, t: torch.Tensor, cond: None) -> torch.Tensor:
        seen.append((x_vp, t))
        acp = 1 / (1 + (sigma / (1 - sigma)) ** 2)
        a, s = math.sqrt(acp), math.sqrt(1 - acp)
        return eps if prediction == "eps" else a * eps - s * x0

    model = vp_denoiser(network, prediction, plan)
    sigma = plan.sigmas[2].item()
    v = model((1 - sigma) * x0 + sigma * eps, sigma, None)
    torch.testing.assert_close(v, eps - x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(seen[0][0], flow_to_vp((1 - sigma) * x0 + sigma * eps, sigma))
    assert seen[0][1].tolist() == [plan.timesteps[2]] * 2 and seen[0][1].dtype == torch.float32


def test_euler_ancestral_samples_the_noised_prediction() -> None:
    """With a model that always predicts x0, the posterior step leaves the latent distributed as
    (1 - sigma_next) x0 + sigma_next z: z must come out standard normal."""
    x0 = torch.full((400_000,), 0.7)
    sigmas = [0.9, 0.4, 0.0]
    g = torch.Generator().manual_seed(5)
    x = (1 - 0.9) * x0 + 0.9 * torch.randn(x0.shape, generator=g)
    v = (x - x0) / 0.9
    draws = []

    def noise() -> torch.Tensor:
        draws.append(1)
        return torch.randn(x0.shape, generator=g)

    x1, _ = euler_ancestral(x, v, sigmas, 0, History(), noise=noise)
    z = (x1 - 0.6 * x0) / 0.4
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    x2, _ = euler_ancestral(x1, (x1 - x0) / 0.4, sigmas, 1, History(), noise=noise)
    torch.testing.assert_close(x2, x0)
    assert len(draws) == 1  # the last step (to sigma 0) adds no noise, so draws none


def test_sample_uses_step_noise_and_noise_scale() -> None:
    noise = make_noise((3, 4), 0)
    calls = []

    def step_noise() -> torch.Tensor:
        calls.append(1)
        return torch.zeros(3, 4)

    seen = []
    sample(lambda x, s: (seen.append(x) or torch.zeros_like(x)), noise, [0.8, 0.5, 0.2, 0.0],
           "euler_ancestral", noise_scale=1.25, step_noise=step_noise)
    torch.testing.assert_close(seen[0], 1.25 * noise)
    assert len(calls) == 2


def test_noise_stream_continues_the_start_noise() -> None:
    draw = noise_stream((2, 3), 11)
    first, second = draw(), draw()
    assert torch.equal(first, make_noise((2, 3), 11)) and not torch.equal(first, second)
    g = torch.Generator().manual_seed(11)
    torch.randn(2, 3, generator=g)
    assert torch.equal(second, torch.randn(2, 3, generator=g))
    with pytest.raises(VideoForgeError, match="seed"):
        noise_stream((2,), -1)


# --- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(beta_schedule="cosine"), "beta schedule must be one of scaled_linear, linear, sqrt_linear, got 'cosine'"),
    (dict(beta_start=0.02, beta_end=0.01), "beta_start=0.02, beta_end=0.01"),
    (dict(beta_end=1.5), "0 < beta_start < beta_end < 1"),
    (dict(num_train_timesteps=1), "num_train_timesteps .* got 1"),
    (dict(steps_offset=-1), r"steps_offset must be an integer in \[0, 1000\), got -1"),
])
def test_bad_noise_schedule(kwargs: dict, match: str) -> None:
    with pytest.raises(VideoForgeError, match=match):
        NoiseSchedule(**kwargs)


def test_bad_discrete_steps() -> None:
    sd = NoiseSchedule()
    with pytest.raises(VideoForgeError, match="spacing must be one of leading, linspace, trailing, got 'uniform'"):
        discrete_steps(sd, 10, "ddim", spacing="uniform")
    with pytest.raises(VideoForgeError, match="solver must be one of .* got 'heun'"):
        discrete_steps(sd, 10, "heun")
    with pytest.raises(VideoForgeError, match="1000 steps .* dpm\\+\\+_2m: at most 999"):
        discrete_steps(sd, 1000, "dpm++_2m")
    with pytest.raises(VideoForgeError, match="2000 steps"):
        discrete_steps(sd, 1000, "euler", denoise=0.5)
    with pytest.raises(VideoForgeError, match="steps must be an integer >= 1, got 0"):
        discrete_steps(sd, 0, "euler")
    with pytest.raises(VideoForgeError, match="prediction must be one of eps, v, got 'x0'"):
        vp_denoiser(lambda x, t, c: x, "x0", discrete_steps(sd, 2, "euler"))


class _Model:
    family = "toy"
    latent = LatentFormat(channels=2)
    default_shift = 3.0
    device = torch.device("cpu")

    def __init__(self, prediction: str, **attrs) -> None:
        self.prediction = prediction
        self.__dict__.update(attrs)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        return torch.zeros_like(x)


def _generate(model: _Model, **kwargs) -> torch.Tensor:
    return generate(model, torch.zeros(1, 2, 1, 2, 2), {}, None, seed=0, steps=2, cfg=1.0, **kwargs)


def test_generate_errors_name_the_problem() -> None:
    with pytest.raises(VideoForgeError, match="predicts 'x0'; the sampler handles flow, eps, v"):
        _generate(_Model("x0"))
    with pytest.raises(VideoForgeError, match="states no noise_schedule"):
        _generate(_Model("eps"))
    with pytest.raises(VideoForgeError, match="beta_schedule / karras / spacing are for eps / v"):
        _generate(_Model("flow"), karras=True)
    with pytest.raises(VideoForgeError, match="beta schedule must be one of .* got 'cosine'"):
        _generate(_Model("eps", noise_schedule=NoiseSchedule()), beta_schedule="cosine")


@pytest.mark.parametrize("solver", SOLVERS)
def test_generate_eps_model_ends_on_its_data_prediction(solver: str) -> None:
    """A network predicting eps = x_vp / s (so x0 = 0) must give a zero latent, any solver."""
    sd = NoiseSchedule(set_alpha_to_one=True)
    acp = NoiseSchedule("linear").alphas_cumprod().double()  # the schedule generate() is given

    class ZeroData(_Model):
        def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
            i = t.double().round().long().clamp(0, 999)  # DDIM / DPM: exact; Euler: near enough
            return x / (1 - acp[i]).sqrt().float().reshape(-1, 1, 1, 1, 1)

    out = _generate(ZeroData("eps", noise_schedule=sd), solver=solver, beta_schedule="linear")
    assert out.abs().max().item() < 1e-3
