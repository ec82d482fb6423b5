"""generate() on eps / v models against diffusers' SD schedulers driven like their pipelines.

A toy network (nonlinear in x, and in t so that any timestep difference shows) stands in for the
UNet. Both sides start from the same CPU generator, draw the start noise first and the ancestral
noise after it, and run in float32; every network input (latent and timestep) and the result are
compared.
"""

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from models.common.family import LatentFormat
from models.sampling import NoiseSchedule, discrete_steps, karras_sigmas
from models.sampling.video import generate

SHAPE = (1, 4, 3, 4, 4)  # [B, C, T, H, W]
SEED = 7
TOL = 1e-5

# scheduler_config.json of SD 1.5 (and of the SD 1.5 fine-tunes AnimateDiff's diffusers docs use),
# and AnimateDiff's own inference config (its scheduler defaults to set_alpha_to_one=True).
CONFIGS = {
    "sd15": (
        NoiseSchedule("scaled_linear", set_alpha_to_one=False),
        dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
             steps_offset=1, set_alpha_to_one=False, clip_sample=False),
    ),
    "animatediff": (
        NoiseSchedule("linear", set_alpha_to_one=True),
        dict(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", num_train_timesteps=1000,
             steps_offset=1, set_alpha_to_one=True, clip_sample=False),
    ),
}

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "dpm++_2m": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
}

# (solver, spacing or None for the scheduler's default, karras)
CASES = [
    ("ddim", None, False),
    # diffusers' DDIM steps to t - 1000 // steps: on the trailing grid only when steps divide 1000
    ("ddim", "trailing", False),
    ("euler", None, False),
    ("euler", "leading", False),
    ("euler", "trailing", False),
    ("euler", None, True),
    ("euler_ancestral", None, False),
    ("euler_ancestral", "leading", False),
    ("dpm++_2m", None, True),
    ("dpm++_2m", None, False),
    ("dpm++_2m", "leading", False),
    ("unipc", None, False),
    ("unipc", None, True),
]
STEPS = (1, 2, 10, 25)  # all divide 1000 (see DDIM trailing above)


def reference(solver: str, config: dict, spacing: str | None, karras: bool, prediction: str):
    extra = {"prediction_type": "epsilon" if prediction == "eps" else "v_prediction"}
    if spacing is not None:
        extra["timestep_spacing"] = spacing
    if karras:
        extra["use_karras_sigmas"] = True
    if solver == "dpm++_2m":
        extra.update(algorithm_type="dpmsolver++", solver_order=2)
    return SCHEDULERS[solver].from_config(config, **extra)


def network(x: torch.Tensor, t: torch.Tensor, cond: dict, acp: torch.Tensor, prediction: str) -> torch.Tensor:
    """Toy eps / v network whose clean-latent guess x0 = mu(x, t, cond) is O(1), as a trained
    network's is (an x0 of the latent's own size would test float32 cancellation, not sampling).
    ``acp``: the schedule's alphas_cumprod, interpolated at fractional timesteps."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(SHAPE[-1], SHAPE[-1], generator=g) / 2
    b = torch.randn(SHAPE[1:], generator=g)
    t = t.double().reshape(-1, 1, 1, 1, 1)
    lo = t.floor().clamp(0, len(acp) - 2)
    w = t - lo
    acp_t = ((1 - w) * acp[lo.long()] + w * acp[lo.long() + 1]).float()
    alpha, sigma = acp_t.sqrt(), (1 - acp_t).sqrt()
    x0 = 0.5 * torch.tanh(x @ a) + (0.1 * torch.sin(t.float() / 30) + 0.2 * t.float() / 1000 + cond["c"]) * b
    eps = (x - alpha * x0) / sigma
    return eps if prediction == "eps" else alpha * eps - sigma * x0


class ToyModel:
    family = "toy"
    variant = "test"
    latent = LatentFormat(channels=SHAPE[1])
    default_shift = 1.0
    device = torch.device("cpu")

    def __init__(self, prediction: str, schedule: NoiseSchedule, acp: torch.Tensor) -> None:
        self.prediction, self.noise_schedule, self.acp = prediction, schedule, acp
        self.seen: list[tuple[torch.Tensor, float]] = []

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        assert t.shape == (x.shape[0],) and t.dtype == torch.float32
        self.seen.append((x.clone(), t[0].item()))
        return network(x, t, cond, self.acp, self.prediction)


POS, NEG = {"c": torch.tensor(0.05)}, {"c": torch.tensor(-0.05)}


def run_diffusers(scheduler, solver: str, prediction: str, steps: int, cfg: float, denoise: float,
                  init: torch.Tensor | None):
    """The loop of diffusers' SD / AnimateDiff pipelines (img2img's strength for denoise < 1)."""
    generator = torch.Generator().manual_seed(SEED)
    noise = torch.randn(SHAPE, generator=generator)
    total = steps if denoise == 1.0 else int(steps / denoise + 1e-6)
    scheduler.set_timesteps(total)
    timesteps = scheduler.timesteps[total - steps:]
    if denoise == 1.0:
        x = noise * scheduler.init_noise_sigma
    else:
        if hasattr(scheduler, "set_begin_index"):  # DDIM indexes by timestep, not by step
            scheduler.set_begin_index(total - steps)
        x = scheduler.add_noise(init, noise, timesteps[:1])
    seen = []
    for t in timesteps:
        inp = scheduler.scale_model_input(x, t)
        seen.append((inp.clone(), float(t)))
        out = network(inp, t, POS, scheduler.alphas_cumprod, prediction)
        if cfg != 1.0:
            out_uncond = network(inp, t, NEG, scheduler.alphas_cumprod, prediction)
            out = out_uncond + cfg * (out - out_uncond)
        stochastic = {"generator": generator} if solver == "euler_ancestral" else {}
        x = scheduler.step(out, t, x, **stochastic, return_dict=False)[0]
    return x, seen


def compare(solver, spacing, karras, config_name, prediction, steps, cfg=1.0, denoise=1.0):
    schedule, config = CONFIGS[config_name]
    init = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3)) if denoise < 1 else None
    scheduler = reference(solver, config, spacing, karras, prediction)
    expected, ref_seen = run_diffusers(scheduler, solver, prediction, steps, cfg, denoise, init)

    model = ToyModel(prediction, schedule, scheduler.alphas_cumprod)
    latent = torch.zeros(SHAPE) if init is None else init
    got = generate(model, latent, POS, NEG if cfg != 1.0 else None, seed=SEED, steps=steps, cfg=cfg,
                   solver=solver, denoise=denoise, karras=karras, spacing=spacing)

    seen = model.seen[:: 2 if cfg != 1.0 else 1]  # cond pass of each step
    assert [t for _, t in seen] == [t for _, t in ref_seen]  # the exact network timesteps
    traj = max((a - b).abs().max().item() for (a, _), (b, _) in zip(seen, ref_seen))
    final = (got - expected).abs().max().item()
    assert torch.isfinite(got).all()
    assert traj <= TOL and final <= TOL, f"trajectory {traj:.2e}, final {final:.2e}"
    return traj, final


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("solver, spacing, karras", CASES)
def test_eps_matches_diffusers(solver, spacing, karras, config_name, steps) -> None:
    compare(solver, spacing, karras, config_name, "eps", steps)


@pytest.mark.parametrize("solver, spacing, karras", CASES)
def test_v_prediction_matches_diffusers(solver, spacing, karras) -> None:
    compare(solver, spacing, karras, "sd15", "v", 10)


@pytest.mark.parametrize("solver, spacing, karras", CASES)
def test_cfg_matches_diffusers(solver, spacing, karras) -> None:
    """CFG mixes flow velocities; the rewrite is affine in the output, so that is eps-space CFG."""
    compare(solver, spacing, karras, "animatediff", "eps", 10, cfg=7.5)


@pytest.mark.parametrize("solver, spacing, karras", [c for c in CASES if c[1] != "trailing"])
def test_partial_denoise_matches_img2img(solver, spacing, karras) -> None:
    compare(solver, spacing, karras, "sd15", "eps", 5, denoise=0.5)


# --- schedules --------------------------------------------------------------------------------

@pytest.mark.parametrize("ours, theirs", [("scaled_linear", "scaled_linear"), ("linear", "linear"),
                                          ("sqrt_linear", "linear")])
def test_alphas_cumprod_and_sigmas_match_diffusers(ours: str, theirs: str) -> None:
    schedule = NoiseSchedule(ours)
    ref = EulerDiscreteScheduler(beta_schedule=theirs, beta_start=0.00085, beta_end=0.012)
    assert torch.equal(schedule.alphas_cumprod(), ref.alphas_cumprod)
    assert torch.equal(schedule.train_sigmas(), ref.sigmas[:-1].flip(0))


@pytest.mark.parametrize("steps", [1, 2, 7, 25, 50])
def test_karras_sigmas_match_diffusers(steps: int) -> None:
    ref = DPMSolverMultistepScheduler.from_config(CONFIGS["sd15"][1], use_karras_sigmas=True)
    ref.set_timesteps(steps)
    train = NoiseSchedule().train_sigmas()
    ours = karras_sigmas(train[0].item(), train[-1].item(), steps)
    assert ours.dtype == torch.float64
    assert torch.equal(ours.float(), ref.sigmas[:-1])


@pytest.mark.parametrize("solver, spacing, karras", CASES + [("ddim", "linspace", False)])
def test_steps_match_diffusers_timesteps_and_sigmas(solver, spacing, karras) -> None:
    """Over many step counts: the network timesteps exactly, the sigmas as diffusers' VE sigmas
    in flow terms (DDIM keeps no sigmas: its last level is checked through the parity runs)."""
    schedule, config = CONFIGS["sd15"]
    for steps in [*range(1, 61), 100, 250, 999]:
        ref = reference(solver, config, spacing, karras, "eps")
        ref.set_timesteps(steps)
        plan = discrete_steps(schedule, steps, solver, spacing=spacing, karras=karras)
        assert plan.timesteps == tuple(ref.timesteps.float().tolist()), steps
        if solver != "ddim":
            ve = ref.sigmas.double()
            torch.testing.assert_close(plan.sigmas, (ve / (1 + ve)).float(), atol=0, rtol=0)
