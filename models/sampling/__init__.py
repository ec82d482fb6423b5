"""Family-agnostic flow-matching sampling: schedules, solvers, guidance, seeded noise."""

from .guidance import guided
from .noise import make_noise, noise_latent
from .sampler import Callback, ModelFn, sample
from .schedules import NUM_TRAIN_TIMESTEPS, flow_sigmas, shift_sigmas, sigma_to_timestep
from .solvers import SOLVERS, History, dpmpp_2m, euler, get_solver, unipc

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "SOLVERS",
    "Callback",
    "History",
    "ModelFn",
    "dpmpp_2m",
    "euler",
    "flow_sigmas",
    "get_solver",
    "guided",
    "make_noise",
    "noise_latent",
    "sample",
    "shift_sigmas",
    "sigma_to_timestep",
    "unipc",
]
