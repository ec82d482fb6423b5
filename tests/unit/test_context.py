"""Unit tests of models.sampling.context: context windows over the frame axis, and generate()."""

import pytest
import torch

from models.common.errors import VideoForgeError
from models.common.family import LatentFormat
from models.sampling import SOLVERS, NoiseSchedule, discrete_steps, flow_sigmas
from models.sampling.context import (
    ContextOptions,
    context_windows,
    ordered_halving,
    slice_cond,
    window_weights,
    windowed,
)
from models.sampling.sampler import model_sigma
from models.sampling.video import generate


class _Toy:
    """A tiny deterministic VideoModel: frame-coupled (mixes in the clip's temporal mean, so
    windows change the result) or frame-independent; records what each call saw."""

    family = "toy"
    variant = "test"
    latent = LatentFormat(channels=2, time_ratio=1, first_frame_alone=False)
    default_shift = 3.0
    flow_sigma_end = 1.0 / 1000   # the VideoModel contract: where the unshifted flow schedule ends
    device = torch.device("cpu")

    def __init__(self, prediction: str = "flow", coupled: bool = True, **attrs) -> None:
        self.prediction = prediction
        self.coupled = coupled
        self.calls: list[tuple[float, list[int] | None, int]] = []  # (t, frame ids, frames)
        self.__dict__.update(attrs)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        ids = cond.get("ids")
        self.calls.append((float(t[0]), None if ids is None else ids[0, 0, :, 0, 0].long().tolist(),
                           x.shape[2]))
        scale = t.view(-1, 1, 1, 1, 1) / (1000.0 if self.prediction != "flow" else 1.0)
        y = 0.7 * x - 0.2 * scale * x.roll(1, dims=1) + 0.05 * torch.sin(x)
        if self.coupled:
            w = torch.linspace(0.5, 1.5, x.shape[2]).view(1, 1, -1, 1, 1)
            y = y + 0.4 * (x * w).mean(dim=2, keepdim=True)
        if "image" in cond:  # per-frame conditioning, added frame by frame
            y = y + 0.1 * cond["image"]
        return y


def _latent(frames: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(1, 2, frames, 3, 2, generator=torch.Generator().manual_seed(seed))


def _run(model: _Toy, frames: int, context: ContextOptions | None, **kwargs) -> torch.Tensor:
    kw = dict(seed=5, steps=4, cfg=2.5, solver="euler")
    kw.update(kwargs)
    pos = {"context": torch.ones(1, 3)}
    neg = {"context": torch.zeros(1, 3)}
    return generate(model, torch.zeros(1, 2, frames, 3, 2), pos, neg, context=context, **kw)


def _eps(**kw) -> _Toy:
    return _Toy("eps", noise_schedule=NoiseSchedule(), **kw)


# ---------------------------------------------------------------------------------- schedules

OPTS = [ContextOptions(16, 4), ContextOptions(8, 0), ContextOptions(8, 7),
        ContextOptions(16, 4, closed_loop=True), ContextOptions(5, 2, closed_loop=True),
        ContextOptions(1, 0), ContextOptions(16, 4, "uniform"), ContextOptions(8, 3, "uniform"),
        ContextOptions(16, 4, "uniform", stride=3), ContextOptions(6, 5, "uniform", stride=4),
        ContextOptions(16, 4, "uniform", closed_loop=True),
        ContextOptions(8, 2, "uniform", stride=3, closed_loop=True), ContextOptions(2, 1, "uniform")]


@pytest.mark.parametrize("opts", OPTS, ids=repr)
def test_windows_cover_every_frame_with_the_requested_length(opts: ContextOptions) -> None:
    for n in list(range(1, 70)) + [96, 128, 161, 250]:
        for step in range(0, 40, 3 if n > 70 else 1):
            windows = context_windows(n, step, 40, opts)
            assert windows and {f for w in windows for f in w} == set(range(n)), (n, step)
            size = min(n, opts.length)
            for w in windows:
                assert len(w) == size and all(0 <= f < n for f in w), (n, step, w)
                assert len(set(w)) == size, (n, step, w)  # no frame twice in a window
                if not opts.closed_loop:  # frames in their true order: nothing wraps
                    assert w == sorted(w), (n, step, w)
            if n <= opts.length:
                assert windows == [list(range(n))]


@pytest.mark.parametrize("n, size, overlap", [(17, 16, 4), (40, 16, 4), (64, 16, 4), (33, 8, 0),
                                              (50, 8, 7), (100, 24, 8)])
def test_static_windows_overlap_and_never_change(n: int, size: int, overlap: int) -> None:
    opts = ContextOptions(size, overlap, "static")
    windows = context_windows(n, 0, 10, opts)
    assert windows[0][0] == 0 and windows[-1][-1] == n - 1
    for a, b in zip(windows, windows[1:]):
        assert b == list(range(b[0], b[0] + size))
        assert a[-1] - b[0] + 1 >= overlap and b[0] > a[0]
    assert all(context_windows(n, s, 10, opts) == windows for s in range(10))


def test_static_closed_loop_wraps_the_end_onto_the_start() -> None:
    windows = context_windows(40, 0, 10, ContextOptions(16, 4, closed_loop=True))
    assert windows[-1] == list(range(36, 40)) + list(range(12))
    assert windows[:3] == [list(range(a, a + 16)) for a in (0, 12, 24)]


def test_uniform_windows_move_between_steps() -> None:
    opts = ContextOptions(16, 4, "uniform")
    sets = [context_windows(64, s, 20, opts) for s in range(8)]
    assert len({tuple(map(tuple, w)) for w in sets}) > 4
    assert sets[0][0] == list(range(16))  # step 0: no shift
    # ordered halving: a bit-reversal sequence
    assert [ordered_halving(s) for s in range(6)] == [0, 0.5, 0.25, 0.75, 0.125, 0.625]


def test_uniform_closed_loop_is_animatediff_clis_uniform() -> None:
    # step 1: shifted by half the clip, windows every 12 frames, indices wrapping modulo 64
    windows = context_windows(64, 1, 20, ContextOptions(16, 4, "uniform", closed_loop=True))
    starts = [w[0] for w in windows]
    assert starts == [32, 44, 56, 4, 16, 28]
    assert windows[2] == [(56 + k) % 64 for k in range(16)]


def test_uniform_stride_adds_dilated_windows() -> None:
    windows = context_windows(64, 0, 20, ContextOptions(16, 4, "uniform", stride=3))
    steps = {w[1] - w[0] for w in windows}
    assert steps == {1, 2, 4}
    assert all(w[k + 1] - w[k] == w[1] - w[0] for w in windows for k in range(15))
    # never more levels than the clip needs: 20 frames get no dilated 16-frame window
    assert {w[1] - w[0] for w in context_windows(20, 0, 5, ContextOptions(16, 4, "uniform", stride=3))} == {1}


def test_pyramid_weights_peak_in_the_middle() -> None:
    for size in (1, 2, 5, 8, 16):
        w = window_weights(size, "pyramid")
        assert torch.equal(w, w.flip(0)) and (w > 0).all()
        mid = (size - 1) // 2
        assert w[mid] == w.max()
        assert (w[1:mid + 1] > w[:mid]).all()  # rising to the middle
    assert torch.equal(window_weights(16, "pyramid")[:8], torch.arange(1.0, 9.0))
    assert torch.equal(window_weights(7, "flat"), torch.ones(7))


# ---------------------------------------------------------------------------------- windowed

def test_per_frame_cond_is_sliced_with_the_window() -> None:
    seen = []

    def denoise(x, t, cond):
        seen.append(cond)
        return x

    per_frame = torch.arange(20.0).view(1, 1, 20, 1, 1).expand(2, 3, 20, 2, 2)
    text = torch.randn(2, 7, 4)
    other_5d = torch.randn(2, 3, 5, 2, 2)  # not 20 frames: left alone
    cond = {"text": text, "nested": {"img": per_frame, "other": other_5d, "flag": True},
            "seq": [per_frame]}
    x = torch.randn(2, 3, 20, 2, 2)
    opts = ContextOptions(8, 2, "static")
    windowed(denoise, opts, lambda t: 0)(x, torch.zeros(2), cond)
    windows = context_windows(20, 0, 1, opts)
    assert len(seen) == len(windows)
    for c, w in zip(seen, windows):
        assert c["text"] is text and c["nested"]["other"] is other_5d and c["nested"]["flag"] is True
        assert c["nested"]["img"][0, 0, :, 0, 0].tolist() == [float(f) for f in w]
        assert torch.equal(c["seq"][0], c["nested"]["img"])
    assert slice_cond(5, torch.tensor([0]), 3) == 5


def test_windowed_single_window_calls_the_model_once_untouched() -> None:
    calls = []
    x = torch.randn(1, 2, 10, 2, 2)
    cond = {"image": torch.randn(1, 2, 10, 2, 2)}

    def denoise(xx, t, c):
        calls.append((xx, c))
        return xx * 2

    out = windowed(denoise, ContextOptions(10, 4), lambda t: 0)(x, torch.zeros(1), cond)
    assert len(calls) == 1 and calls[0][0] is x and calls[0][1] is cond
    assert torch.equal(out, x * 2)


@pytest.mark.parametrize("opts", [o for o in OPTS if o.length > 1] + [ContextOptions(4, 1, fuse="flat")],
                         ids=repr)
def test_frame_independent_model_is_unchanged_by_windows(opts: ContextOptions) -> None:
    """Fusion is a convex combination: a model whose output frame depends only on its own input
    frame gives the same result with any windows."""
    x = _latent(37)
    image = torch.randn(1, 2, 37, 3, 2)
    model = _Toy(coupled=False)
    want = model.denoise(x, torch.full((1,), 0.4), {"image": image})
    for step in range(4):
        got = windowed(model.denoise, opts, lambda t: step)(x, torch.full((1,), 0.4), {"image": image})
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------- generate()

@pytest.mark.parametrize("make", [_Toy, _eps], ids=["flow", "eps"])
@pytest.mark.parametrize("opts", [ContextOptions(16, 4), ContextOptions(12, 11, "uniform", stride=3,
                                                                        closed_loop=True, fuse="flat")],
                         ids=repr)
def test_window_covering_the_clip_is_bit_identical(make, opts: ContextOptions) -> None:
    for frames in (1, 7, 12):
        want = _run(make(), frames, None)
        got = _run(make(), frames, opts)
        assert torch.equal(got, want)


@pytest.mark.parametrize("make", [_Toy, _eps], ids=["flow", "eps"])
def test_frame_independent_model_same_through_generate(make) -> None:
    want = _run(make(coupled=False), 30, None)
    for opts in (ContextOptions(8, 2), ContextOptions(8, 3, "uniform", stride=2),
                 ContextOptions(6, 1, closed_loop=True, fuse="flat")):
        torch.testing.assert_close(_run(make(coupled=False), 30, opts), want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("make", [_Toy, _eps], ids=["flow", "eps"])
def test_frame_coupled_model_changes_with_windows(make) -> None:
    want = _run(make(), 30, None)
    got = _run(make(), 30, ContextOptions(8, 2))
    assert got.shape == want.shape and torch.isfinite(got).all()
    assert (got - want).abs().max() > 1e-3


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("prediction", ["flow", "eps"])
def test_generate_tells_the_schedule_each_step(solver: str, prediction: str) -> None:
    """Every model call of step i (both CFG passes) sees exactly the uniform windows of step i."""
    frames, steps = 40, 5
    opts = ContextOptions(16, 4, "uniform", stride=2)
    model = _Toy() if prediction == "flow" else _eps()
    ids = torch.arange(float(frames)).view(1, 1, -1, 1, 1)
    generate(model, torch.zeros(1, 2, frames, 3, 2), {"c": torch.ones(1)}, {"c": torch.zeros(1)},
             seed=1, steps=steps, cfg=3.0, solver=solver, extra={"ids": ids}, context=opts)
    if prediction == "flow":
        net = [model_sigma(s, solver) for s in flow_sigmas(steps, 3.0).tolist()[:-1]]
    else:
        net = list(discrete_steps(NoiseSchedule(), steps, solver).timesteps)
    per_step = [2 * len(context_windows(frames, i, steps, opts)) for i in range(steps)]
    assert len(model.calls) == sum(per_step)
    k = 0
    for i in range(steps):
        windows = context_windows(frames, i, steps, opts)
        seen = model.calls[k:k + per_step[i]]
        k += per_step[i]
        assert [w for _, w, _ in seen] == windows + windows  # cond pass, then uncond pass
        assert all(abs(t - net[i]) < 2e-3 for t, _, _ in seen)


def test_per_frame_extra_travels_with_windows_through_generate() -> None:
    """An image-to-video style per-frame cond: a frame-independent model stays exact."""
    image = torch.randn(1, 2, 24, 3, 2)
    want = _run(_Toy(coupled=False), 24, None, extra={"image": image})
    got = _run(_Toy(coupled=False), 24, ContextOptions(8, 2, "uniform"), extra={"image": image})
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs, match", [
    ({"length": 0}, "length must be an integer >= 1, got 0"),
    ({"length": 8.0}, "length must be an integer >= 1, got 8.0"),
    ({"length": 8, "overlap": 8}, "overlap must be an integer from 0 to length - 1 = 7.*got 8"),
    ({"overlap": -1}, "overlap .* got -1"),
    ({"schedule": "looped"}, "schedule must be one of static, uniform, got 'looped'"),
    ({"stride": 0}, "stride must be an integer >= 1.*got 0"),
    ({"closed_loop": 1}, "closed_loop must be True or False, got 1"),
    ({"fuse": "gauss"}, "fuse must be one of flat, pyramid, got 'gauss'"),
])
def test_bad_options_name_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(VideoForgeError, match=match):
        ContextOptions(**kwargs)


def test_motion_module_frame_limit() -> None:
    model = _Toy(max_frames=16)
    with pytest.raises(VideoForgeError, match="24 frames exceed this model's 16-frame motion module; "
                       r"connect Context Options \(e.g. length 16, overlap 4\) to Sample Video "
                       "or use at most 16 frames"):
        _run(model, 24, None)
    with pytest.raises(VideoForgeError, match="length 20 exceeds this model's 16-frame motion module"):
        _run(model, 24, ContextOptions(20, 4))
    assert model.calls == []
    _run(model, 16, None)  # within the limit: fine
    _run(_Toy(max_frames=16), 12, ContextOptions(20, 4))  # windows of 12 frames: fine
    _run(_Toy(max_frames=None), 40, None)  # no limit stated
    model = _Toy(max_frames=16)
    _run(model, 24, ContextOptions(16, 4))
    assert {n for _, _, n in model.calls} == {16}
