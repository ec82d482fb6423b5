"""Parity of models/wan/vae.py with diffusers' AutoencoderKLWan on a tiny random checkpoint,
read from the official key layout (.safetensors as ComfyUI ships it, .pth as Wan-AI does)."""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from models.common.checkpoint import load_state_dict  # noqa: E402
from models.common.errors import VideoForgeError  # noqa: E402
from models.wan.vae import CACHE_T, FeatCache, WanVAE, is_wan_vae  # noqa: E402
from tests.fixtures.wan_vae import write_wan_vae  # noqa: E402

TOL = 1e-4  # max abs error relative to the reference's max abs, fp32


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape
    return ((out - ref).abs().max() / ref.abs().max()).item()


def reference(info: dict):
    from diffusers import AutoencoderKLWan

    cfg = {k: v for k, v in info["config"].items() if not k.startswith("_")}
    ref = AutoencoderKLWan(**cfg).float().eval()
    ref.load_state_dict(info["state_dict"], strict=True)
    return ref


@pytest.fixture(scope="module", params=["safetensors", "pth"])
def pair(request, tmp_path_factory):
    """(ours loaded from the file, diffusers reference) for each file format."""
    path = str(tmp_path_factory.mktemp("vae") / f"wan_2.1_vae.{request.param}")
    info = write_wan_vae(path, dim=16, seed=0, fmt=request.param)
    sd = load_state_dict(path)
    assert is_wan_vae(sd)
    return WanVAE.from_state_dict(sd), reference(info)


def stats(ref) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(ref.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(ref.config.latents_std).view(1, -1, 1, 1, 1)
    return mean, std


def test_latent_constants_match_diffusers(pair):
    ours, ref = pair
    mean, std = stats(ref)
    assert ours.z_dim == 16 and ours.dim == 16
    assert torch.equal(ours.latent_mean, mean) and torch.equal(ours.latent_std, std)


@pytest.mark.parametrize("batch,frames", [(1, 9), (2, 5), (1, 1)])
def test_encode_matches_diffusers(pair, batch, frames):
    ours, ref = pair
    g = torch.Generator().manual_seed(batch * 100 + frames)
    video = torch.rand(batch, 3, frames, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        mu = ref.encode(video).latent_dist.mean
    mean, std = stats(ref)
    expected = (mu - mean) / std
    latent = ours.encode(video)
    assert latent.shape == (batch, 16, 1 + (frames - 1) // 4, 4, 4)
    err = rel_err(latent, expected)
    print(f"encode B={batch} F={frames}: max rel err {err:.3g}")
    assert err <= TOL


@pytest.mark.parametrize("batch,t", [(1, 3), (2, 2), (1, 1)])
def test_decode_matches_diffusers(pair, batch, t):
    ours, ref = pair
    g = torch.Generator().manual_seed(batch * 10 + t)
    latent = torch.randn(batch, 16, t, 4, 4, generator=g)
    mean, std = stats(ref)
    with torch.no_grad():
        expected = ref.decode(latent * std + mean).sample
    calls = []
    video = ours.decode(latent, callback=lambda i, n: calls.append((i, n)))
    assert video.shape == (batch, 3, 4 * (t - 1) + 1, 32, 32)
    # Random weights must not saturate the clamp, or the comparison would be vacuous.
    assert (expected.abs() < 1).float().mean() > 0.9
    err = rel_err(video, expected)
    print(f"decode B={batch} T={t}: max rel err {err:.3g}")
    assert err <= TOL
    n = 4 * (t - 1) + 1  # progress counts decoded frames: 1, then 4 per latent frame
    assert calls == [(min(4 * i + 1, n), n) for i in range(t)]


def test_cache_holds_only_frame_tails(pair):
    """Bounded memory: between chunks only <= CACHE_T-frame copies survive, never views that
    would keep a whole chunk's activations alive."""
    ours, _ = pair
    x = ours.conv2(torch.randn(1, 16, 3, 4, 4))
    cache = FeatCache()
    with torch.no_grad():
        for i in range(3):
            cache.next_chunk()
            ours.decoder(x[:, :, i:i + 1], cache)
            n = cache.i
            tails = [s for s in cache.slots if s is not None]
            assert len(cache.slots) == n  # the same layers take the same slots every chunk
            assert tails and all(s.shape[2] <= CACHE_T and s._base is None for s in tails)


def test_rejects_frame_count_not_4k_plus_1(pair):
    ours, _ = pair
    with pytest.raises(VideoForgeError, match=r"frames=8.*4k\+1"):
        ours.encode(torch.zeros(1, 3, 8, 32, 32))


def test_rejects_non_vae_state_dict(tmp_path):
    path = str(tmp_path / "not_a_vae.safetensors")
    from safetensors.torch import save_file
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(4, 4), "head.head.bias": torch.zeros(4)}, path)
    sd = load_state_dict(path)
    assert not is_wan_vae(sd)
    with pytest.raises(VideoForgeError, match=r"Not a Wan2.1 VAE.*encoder\.conv1\.weight"):
        WanVAE.from_state_dict(sd)


def test_loads_diffusers_layout_rejects_incomplete_file(tmp_path):
    info = write_wan_vae(str(tmp_path / "v.safetensors"), dim=8)
    a = WanVAE.from_state_dict(info["state_dict"])  # diffusers names, converted on load
    b = WanVAE.from_state_dict(info["official"])
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in b.state_dict())
    broken = dict(info["official"])
    del broken["decoder.upsamples.3.resample.1.weight"]
    with pytest.raises(VideoForgeError, match=r"missing 1 keys.*decoder\.upsamples\.3\.resample\.1\.weight"):
        WanVAE.from_state_dict(broken)
