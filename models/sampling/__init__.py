"""Family-agnostic sampling: one flow-space loop and solver set for flow models and, rewritten as
flow models (discrete.py), for discrete eps / v models; schedules, guidance, seeded noise."""

from .context import (
    FUSE_MODES,
    SCHEDULES,
    ContextOptions,
    context_windows,
    ordered_halving,
    window_weights,
    windowed,
)
from .discrete import (
    BETA_SCHEDULES,
    SPACINGS,
    DiscreteSteps,
    NoiseSchedule,
    discrete_steps,
    flow_to_vp,
    karras_sigmas,
    vp_denoiser,
)
from .guidance import guided
from .noise import make_noise, noise_latent, noise_stream
from .sampler import Callback, ModelFn, sample
from .schedules import (
    NUM_TRAIN_TIMESTEPS,
    flow_sigmas,
    shift_sigmas,
    sigma_to_timestep,
    total_steps,
)
from .solvers import SOLVERS, History, Solver, dpmpp_2m, euler, euler_ancestral, get_solver, unipc

__all__ = [
    "BETA_SCHEDULES",
    "FUSE_MODES",
    "NUM_TRAIN_TIMESTEPS",
    "SCHEDULES",
    "SOLVERS",
    "SPACINGS",
    "Callback",
    "ContextOptions",
    "DiscreteSteps",
    "History",
    "ModelFn",
    "NoiseSchedule",
    "Solver",
    "context_windows",
    "discrete_steps",
    "dpmpp_2m",
    "euler",
    "euler_ancestral",
    "flow_sigmas",
    "flow_to_vp",
    "get_solver",
    "guided",
    "karras_sigmas",
    "make_noise",
    "noise_latent",
    "noise_stream",
    "ordered_halving",
    "sample",
    "shift_sigmas",
    "sigma_to_timestep",
    "total_steps",
    "unipc",
    "vp_denoiser",
    "window_weights",
    "windowed",
]
