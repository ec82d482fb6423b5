"""Unit tests of models.sampling: schedules, noise, guidance, loop and input validation."""

import pytest
import torch

from models.common.errors import VideoForgeError
from models.sampling import (
    SOLVERS,
    flow_sigmas,
    guided,
    make_noise,
    noise_latent,
    sample,
    sigma_to_timestep,
)


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0, 8.0])
@pytest.mark.parametrize("steps", [1, 4, 30])
def test_schedule_shape_and_ends(steps: int, shift: float) -> None:
    sigmas = flow_sigmas(steps, shift)
    assert sigmas.shape == (steps + 1,) and sigmas.dtype == torch.float32
    assert sigmas[0].item() == 1.0 and sigmas[-1].item() == 0.0
    assert (sigmas[1:] < sigmas[:-1]).all()


def test_shift_spends_more_steps_at_high_noise() -> None:
    assert (flow_sigmas(10, 5.0)[1:-1] > flow_sigmas(10, 1.0)[1:-1]).all()


@pytest.mark.parametrize("steps, denoise, total", [(5, 0.5, 10), (3, 0.3, 10), (7, 0.7, 10), (4, 0.75, 5)])
def test_denoise_keeps_tail_of_longer_schedule(steps: int, denoise: float, total: int) -> None:
    sigmas = flow_sigmas(steps, 3.0, denoise)
    assert sigmas.shape == (steps + 1,)
    torch.testing.assert_close(sigmas, flow_sigmas(total, 3.0)[-(steps + 1) :], atol=0, rtol=0)
    assert sigmas[0] < 1.0


def test_timestep_is_sigma_times_1000() -> None:
    assert sigma_to_timestep(0.25) == 250.0


def test_make_noise_is_seeded() -> None:
    a = make_noise((2, 3, 4), 42)
    assert a.dtype == torch.float32 and a.device.type == "cpu"
    assert torch.equal(a, make_noise((2, 3, 4), 42))
    assert not torch.equal(a, make_noise((2, 3, 4), 43))
    # Other dtypes are a cast of the same float32 draw, so previews in bf16 match fp32 runs.
    assert torch.equal(make_noise((2, 3, 4), 42, torch.bfloat16), a.to(torch.bfloat16))


def test_noise_latent_interpolates() -> None:
    latent, noise = torch.ones(3), torch.full((3,), 5.0)
    torch.testing.assert_close(noise_latent(latent, noise, 0.25), torch.full((3,), 2.0))
    with pytest.raises(VideoForgeError, match=r"\(2,\)"):
        noise_latent(torch.ones(2), noise, 0.5)


@pytest.mark.parametrize("solver", SOLVERS)
def test_solvers_reach_a_constant_data_prediction_exactly(solver: str) -> None:
    """If the model always predicts x0 = target, every solver must end exactly on target."""
    target = torch.randn(2, 5, generator=torch.Generator().manual_seed(1))

    def model(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return (x - target) / sigma  # velocity whose x0 = x - sigma * v is the target

    out = sample(model, make_noise((2, 5), 0), flow_sigmas(6, 3.0), solver)
    torch.testing.assert_close(out, target, atol=1e-5, rtol=0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_sample_starts_from_noised_init_and_reports_each_step(solver: str) -> None:
    noise, init = make_noise((1, 4), 0), make_noise((1, 4), 1)
    sigmas = flow_sigmas(4, 3.0, denoise=0.5)
    seen: list[tuple[int, int, torch.Tensor]] = []

    def model(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return torch.zeros_like(x)

    sample(model, noise, sigmas, solver, x_init=init, callback=lambda i, n, x, x0: seen.append((i, n, x)))
    assert [(i, n) for i, n, _ in seen] == [(i, 4) for i in range(4)]
    torch.testing.assert_close(seen[0][2], noise_latent(init, noise, sigmas[0].item()))


def test_callback_can_interrupt() -> None:
    calls = []

    class Interrupted(Exception):
        pass

    def callback(i: int, n: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        if i == 2:
            raise Interrupted

    def model(x: torch.Tensor, sigma: float) -> torch.Tensor:
        calls.append(sigma)
        return x

    with pytest.raises(Interrupted):
        sample(model, make_noise((3,), 0), flow_sigmas(10, 1.0), "euler", callback=callback)
    assert len(calls) == 3


def _counting_model(calls: list[int]):
    def model(x: torch.Tensor, sigma: float, cond: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x * cond
    return model


def test_cfg_scale_one_calls_model_once_per_step() -> None:
    calls: list[int] = []
    fn = guided(_counting_model(calls), torch.tensor(2.0), None, 1.0)
    sample(fn, make_noise((1, 3), 0), flow_sigmas(5, 3.0), "unipc")
    assert calls == [1] * 5


@pytest.mark.parametrize("batched", [False, True])
def test_cfg_combines_cond_and_uncond(batched: bool) -> None:
    calls: list[int] = []
    x = torch.ones(2, 3)
    cond, uncond = torch.full((2, 1), 3.0), torch.full((2, 1), 1.0)
    fn = guided(_counting_model(calls), cond, uncond, 5.0, batched=batched)
    torch.testing.assert_close(fn(x, 0.5), torch.full((2, 3), 1.0 + 5.0 * (3.0 - 1.0)))
    assert calls == ([4] if batched else [2, 2])


def test_batched_cfg_stacks_nested_conditioning() -> None:
    seen = {}

    def model(x: torch.Tensor, sigma: float, cond: dict) -> torch.Tensor:
        seen.update(cond)
        return x

    cond = {"text": torch.zeros(1, 4, 2), "size": 7}
    guided(model, cond, {"text": torch.ones(1, 4, 2), "size": 7}, 2.0, batched=True)(torch.ones(1, 3), 0.5)
    assert seen["text"].shape == (2, 4, 2) and seen["size"] == 7
    with pytest.raises(VideoForgeError, match="batched guidance"):
        guided(model, cond, {"text": torch.ones(1, 5, 2), "size": 7}, 2.0, batched=True)


def test_cfg_without_uncond_is_an_error() -> None:
    with pytest.raises(VideoForgeError, match="7.5"):
        guided(_counting_model([]), torch.tensor(1.0), None, 7.5)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_bad_steps(steps) -> None:
    with pytest.raises(VideoForgeError, match=f"steps.*{steps!r}"):
        flow_sigmas(steps, 3.0)


@pytest.mark.parametrize("denoise", [0.0, -0.1, 1.5])
def test_bad_denoise(denoise: float) -> None:
    with pytest.raises(VideoForgeError, match=f"denoise.*{denoise!r}"):
        flow_sigmas(10, 3.0, denoise)


def test_bad_shift() -> None:
    with pytest.raises(VideoForgeError, match="shift.*-1"):
        flow_sigmas(10, -1.0)


def test_bad_solver_name() -> None:
    with pytest.raises(VideoForgeError, match="'heun'"):
        sample(lambda x, s: x, torch.zeros(2), flow_sigmas(2, 1.0), "heun")


def test_bad_sigmas() -> None:
    with pytest.raises(VideoForgeError, match="decrease"):
        sample(lambda x, s: x, torch.zeros(2), [0.5, 0.9, 0.0], "euler")
    with pytest.raises(VideoForgeError, match="at least 2"):
        sample(lambda x, s: x, torch.zeros(2), [1.0], "euler")
