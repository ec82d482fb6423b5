"""models/common/tiling.py on toy VAEs whose exact answer is known."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.common.errors import VideoForgeError
from models.common.family import LatentFormat
from models.common.tiling import TilePlan, _ramps, auto_plan, spans, tiled_decode, tiled_encode

CAUSAL = LatentFormat(channels=4, time_ratio=4, space_ratio=8, first_frame_alone=True, size_multiple=16)
FRAMEWISE = LatentFormat(channels=4, time_ratio=1, space_ratio=8, first_frame_alone=False, size_multiple=8)


def pointwise_stream(z: torch.Tensor):
    """A causal 'decoder' with no spatial context and a memory of one latent frame:
    frame(i) = tanh(z_i + 0.5 z_{i-1}) upsampled x8 (1 frame for the window's first latent, else 4)."""
    prev = None
    for i in range(z.shape[2]):
        cur = z[:, :3, i:i + 1]
        y = torch.tanh(cur + (0.5 * prev if prev is not None else 0))
        y = y.repeat_interleave(8, 3).repeat_interleave(8, 4)
        # the 4 frames of a group differ from each other, so a misplaced frame shows
        frames = y if i == 0 else torch.cat([y * (1 + 0.1 * k) for k in range(4)], dim=2)
        yield (0 if i == 0 else 4 * i - 3), frames
        prev = cur


def blurry_stream(z: torch.Tensor):
    """Like pointwise_stream but every output pixel sees a 3x3 latent neighbourhood (zero padded)."""
    zb = F.avg_pool3d(z, (1, 3, 3), stride=1, padding=(0, 1, 1), count_include_pad=True)
    yield from pointwise_stream(zb)


def causal_encode(v: torch.Tensor) -> torch.Tensor:
    """Toy causal encoder: frame 0 alone, then groups of 4 frames; each latent also sees the last
    frame of the previous group. Space: 8x8 average pooling."""
    f = v.shape[2]
    pooled = F.avg_pool3d(v, (1, 8, 8))
    lats = [pooled[:, :, 0:1]]
    for j in range(1, (f - 1) // 4 + 1):
        grp = pooled[:, :, 4 * j - 3:4 * j + 1].mean(2, keepdim=True)
        lats.append(grp + 0.5 * pooled[:, :, 4 * j - 4:4 * j - 3])
    lat = torch.cat(lats, dim=2)
    return torch.cat([lat, lat[:, :1] * 2], dim=1)  # 4 channels


def test_spans_cover_with_full_size_windows():
    for n, size, ov in [(10, 4, 1), (33, 8, 2), (7, 8, 2), (16, 8, 0), (9, 5, 4)]:
        w = spans(n, size, ov)
        assert w[0][0] == 0 and w[-1][1] == n
        assert all(b - a == min(size, n) for a, b in w)
        assert all(w[i + 1][0] <= w[i][1] - min(ov, size) for i in range(len(w) - 1))


def test_ramps_sum_to_one_and_skip_tile_edges():
    for n, size, ov in [(40, 16, 4), (37, 16, 8), (100, 24, 6), (9, 5, 1)]:
        w = spans(n, size, ov)
        total = torch.zeros(n)
        for i, ((a, b), r) in enumerate(zip(w, _ramps(w, n))):
            assert (r >= 0).all()
            if ov >= 4 and i > 0:  # the pixel at an inner tile edge saw zero padding: unused
                assert r[0] == 0
            if ov >= 4 and i + 1 < len(w):
                assert r[-1] == 0
            total[a:b] += r
        torch.testing.assert_close(total, torch.ones(n), rtol=0, atol=1e-6)


@pytest.mark.parametrize("plan", [TilePlan(32, 8), TilePlan(48, 16), TilePlan(0, 0, 8, 4),
                                  TilePlan(32, 16, 12, 4), TilePlan(64, 8, 16, 8)])
def test_pointwise_decoder_tiles_exactly(plan):
    torch.manual_seed(0)
    z = torch.randn(2, 4, 6, 7, 9)
    full = tiled_decode(pointwise_stream, z, CAUSAL, TilePlan())
    assert full.shape == (2, 3, 21, 56, 72)
    tiled = tiled_decode(pointwise_stream, z, CAUSAL, plan)
    torch.testing.assert_close(tiled, full, rtol=0, atol=1e-6)


def test_untiled_equals_plain_stream_exactly():
    torch.manual_seed(1)
    z = torch.randn(1, 4, 3, 4, 4)
    expect = torch.cat([f for _, f in pointwise_stream(z)], dim=2)
    assert torch.equal(tiled_decode(pointwise_stream, z, CAUSAL, TilePlan()), expect)


def test_overlap_hides_tile_borders():
    torch.manual_seed(2)
    z = torch.randn(1, 4, 2, 12, 12)
    full = tiled_decode(blurry_stream, z, CAUSAL, TilePlan())
    errs = [(tiled_decode(blurry_stream, z, CAUSAL, TilePlan(48, ov)) - full).abs().max().item()
            for ov in (8, 16, 24)]
    assert errs[0] > 1e-3  # the toy has spatial context: tiles without margin are wrong
    assert errs[0] > errs[1] > errs[2]


def test_causal_encode_chunks_exactly():
    torch.manual_seed(3)
    v = torch.randn(1, 3, 25, 48, 64)
    full = tiled_encode(causal_encode, v, CAUSAL, TilePlan())
    torch.testing.assert_close(full, causal_encode(v), rtol=0, atol=0)
    for plan in (TilePlan(0, 0, 8, 4), TilePlan(16, 0, 12, 4), TilePlan(32, 8, 8, 4)):
        torch.testing.assert_close(tiled_encode(causal_encode, v, CAUSAL, plan), full, rtol=0, atol=1e-6)


def test_framewise_vae_time_chunks_blend():
    torch.manual_seed(4)
    z = torch.randn(1, 4, 10, 3, 3)

    def frames(w):
        yield 0, w[:, :3].repeat_interleave(8, 3).repeat_interleave(8, 4)

    full = tiled_decode(frames, z, FRAMEWISE, TilePlan())
    torch.testing.assert_close(tiled_decode(frames, z, FRAMEWISE, TilePlan(0, 0, 4, 2)), full,
                               rtol=0, atol=1e-6)


def test_progress_counts_every_window():
    calls = []
    z = torch.zeros(1, 4, 3, 7, 7)  # 56 px: two 32 px tiles per axis
    tiled_decode(pointwise_stream, z, CAUSAL, TilePlan(32, 8), callback=lambda d, t: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1] == 9 * 4  # 9 frames x 4 tiles
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


@pytest.mark.parametrize("plan, words", [
    (TilePlan(100, 16), "tile_size=100: must be a multiple of 8"),
    (TilePlan(64, 12), "overlap=12: must be a multiple of 8"),
    (TilePlan(64, 64), "overlap=64 must be smaller than tile_size=64"),
    (TilePlan(0, 8, 10, 4), "temporal_size=10: must be a multiple of 4"),
    (TilePlan(0, 8, 8, 0), "at least 4 frames of overlap"),
    (TilePlan(0, 8, 8, 8), "temporal_overlap=8 must be smaller than temporal_size=8"),
    (TilePlan(-8, 8), "must not be negative"),
])
def test_bad_plans_say_what_to_change(plan, words):
    with pytest.raises(VideoForgeError, match=words.replace("(", r"\(")):
        tiled_decode(pointwise_stream, torch.zeros(1, 4, 2, 4, 4), CAUSAL, plan)


def test_auto_plan_fits_the_budget():
    mb = 1024 ** 2
    # fits: untiled, streaming VAE keeps the whole clip in one chunk
    p = auto_plan(CAUSAL, 480, 832, 129, bytes_per_pixel=1000, budget=8000 * mb, streams_time=True)
    assert p.tile == 0 and p.t_tile == 0
    # does not fit: tiles whose estimated memory fits, multiples of 64, overlap a quarter
    p = auto_plan(CAUSAL, 720, 1280, 129, bytes_per_pixel=3000, budget=2000 * mb, streams_time=True)
    assert p.tile and p.tile % 64 == 0 and 3000 * 4 * p.tile ** 2 <= 2000 * mb
    assert p.overlap == max(p.tile // 4, 48) and p.t_tile == 0
    p.validate(CAUSAL)
    # a VAE that cannot stream gets temporal chunks first
    p = auto_plan(CAUSAL, 256, 256, 129, bytes_per_pixel=1000, budget=64 * 256 * 256 * 1000, streams_time=False)
    assert p.t_tile == 64 and p.tile == 0
    p.validate(CAUSAL)
