"""Parity of models/easyanimate/vae.py (the EasyAnimate V5.1 MagVIT VAE) with diffusers'
AutoencoderKLMagvit on a tiny random checkpoint, read from the original EasyAnimate file layout
and from the diffusers one."""
from __future__ import annotations

import pytest
import torch

from models.animatediff.vae import is_sd_vae
from models.common.checkpoint import load_state_dict
from models.common.errors import VideoForgeError
from models.common.tiling import TilePlan
from models.easyanimate.vae import (LATENT_FORMAT, SCALING_FACTOR, EasyAnimateVideoVAE,
                                    is_easyanimate_vae, layout_of, load_easyanimate_vae,
                                    to_internal)
from models.wan.vae import is_wan_vae
from tests_fixtures import (ea_tiny_vae, ea_vae_to_original, sd_vae_to_ldm, tiny_sd_vae,
                            write_easyanimate_vae, write_wan_vae)

TOL = 1e-4  # max abs error, fp32
FILE = {"original": "diffusion_pytorch_model.safetensors",
        "diffusers": "easyanimate_v5.1_vae_diffusers.safetensors"}

# Decoding a shorter latent is the same causal computation, but `decode_stream` runs the 1x1x1
# post_quant_conv over the whole latent first: for another T (and on other CPUs / BLAS builds)
# it picks another fp32 kernel whose sums differ in the last ulp, and this random tiny decoder
# amplifies that to a few 1e-6 of the output range (measured up to 7.7e-6 with MKL limited to
# AVX2; 0 on this CPU's default path). A causal leak moves earlier frames by far more.
CAUSAL_REL = 5e-5


def assert_causal_match(got: torch.Tensor, want: torch.Tensor) -> None:
    """`got` equals `want` up to the last-ulp differences of differently shaped fp32 kernels:
    max abs difference <= CAUSAL_REL * max |want|."""
    assert got.shape == want.shape
    err, scale = (got - want).abs().max().item(), want.abs().max().item()
    assert err <= CAUSAL_REL * scale, f"max abs diff {err:.3g} > {CAUSAL_REL} * max |ref| {scale:.3g}"


@pytest.fixture(scope="module", params=["original", "diffusers"])
def pair(request, tmp_path_factory):
    """(ours loaded from a file in that layout, diffusers reference)."""
    path = str(tmp_path_factory.mktemp("eavae") / FILE[request.param])
    info = write_easyanimate_vae(path, layout=request.param, seed=0)
    sd = load_state_dict(path)
    assert layout_of(sd) == request.param and is_easyanimate_vae(sd)
    return load_easyanimate_vae(sd, FILE[request.param]), info["model"]


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    """(ours from the original layout, diffusers reference), for the tests where the file
    layout does not matter (both load the very same weights: test_layouts_load_the_same_weights)."""
    path = str(tmp_path_factory.mktemp("eavae1") / FILE["original"])
    info = write_easyanimate_vae(path, layout="original", seed=0)
    return load_easyanimate_vae(load_state_dict(path), FILE["original"]), info["model"]


def test_constants_match_diffusers(pair):
    ours, ref = pair
    assert SCALING_FACTOR == ref.config.scaling_factor == 0.7125
    assert LATENT_FORMAT.channels == ref.config.latent_channels
    assert LATENT_FORMAT.space_ratio == ref.spatial_compression_ratio == 8
    assert LATENT_FORMAT.time_ratio == ref.temporal_compression_ratio == 4
    assert LATENT_FORMAT.first_frame_alone and LATENT_FORMAT.size_multiple == 16
    assert ours.vae.cfg.widths == tuple(ref.config.block_out_channels)


def check_encode(ours, ref, batch: int, frames: int, size: int) -> float:
    g = torch.Generator().manual_seed(batch * 100 + frames)
    video = torch.rand(batch, 3, frames, size, size, generator=g) * 2 - 1
    with torch.no_grad():
        expected = ref.encode(video).latent_dist.mode() * SCALING_FACTOR
    latent = ours.encode(video)
    s = size // 8
    assert latent.shape == (batch, 16, 1 + (frames - 1) // 4, s, s) == expected.shape
    err = (latent - expected).abs().max().item()
    print(f"encode B={batch} F={frames} {size}x{size}: max abs err {err:.3g} "
          f"(latent max {expected.abs().max():.3f})")
    return err


def check_decode(ours, ref, batch: int, t: int, size: int) -> float:
    g = torch.Generator().manual_seed(batch * 10 + t)
    latent = torch.randn(batch, 16, t, size // 8, size // 8, generator=g)
    with torch.no_grad():
        expected = ref.decode(latent / SCALING_FACTOR).sample
    # Random weights must not saturate the [-1, 1] clamp, or the comparison would be vacuous.
    assert (expected.abs() < 1).float().mean() > 0.9
    calls = []
    video = ours.decode(latent, callback=lambda i, n: calls.append((i, n)))
    assert video.shape == (batch, 3, 4 * (t - 1) + 1, size, size) == expected.shape
    err = (video - expected.clamp(-1, 1)).abs().max().item()
    print(f"decode B={batch} T={t} {size}x{size}: max abs err {err:.3g}")
    n = 4 * (t - 1) + 1  # progress counts decoded frames: 1, then 4 per latent frame
    assert calls == [(min(4 * i + 1, n), n) for i in range(t)]
    return err


def test_encode_matches_diffusers(pair):
    """9 frames (frame 0 alone, then two chunks of 4) at 32x32, from either file layout."""
    assert check_encode(*pair, batch=1, frames=9, size=32) <= TOL


def test_decode_matches_diffusers(pair):
    """3 latent frames -> 9 frames at 32x32, from either file layout."""
    assert check_decode(*pair, batch=1, t=3, size=32) <= TOL


@pytest.mark.parametrize("batch,n", [(2, 2), (1, 1)])
def test_batch_and_single_frame_match_diffusers(one, batch, n):
    assert check_encode(*one, batch=batch, frames=4 * (n - 1) + 1, size=16) <= TOL
    assert check_decode(*one, batch=batch, t=n, size=16) <= TOL


def test_streaming_in_time_is_exact(one):
    """Decoding streams latent frame by latent frame: the pieces are the whole decode, and the
    decode of the first k latent frames is the first 4(k-1)+1 frames of the whole, exactly up to
    fp32 kernel rounding (causal: later frames never change earlier ones). The same holds for
    encoding, bit for bit."""
    ours, _ = one
    g = torch.Generator().manual_seed(5)
    latent = torch.randn(1, 16, 3, 2, 2, generator=g)
    full = ours.decode(latent)
    pieces = list(ours.vae.decode_stream(latent))
    assert [(k, p.shape[2]) for k, p in pieces] == [(0, 1), (1, 4), (5, 4)]
    # decode() is this very stream, untiled (weights exactly 1): bit-identical
    assert torch.equal(torch.cat([p for _, p in pieces], dim=2), full)
    # a shorter latent: the same causal computation, other kernel shapes (see CAUSAL_REL)
    assert_causal_match(ours.decode(latent[:, :, :2]), full[:, :, :5])
    assert_causal_match(ours.decode(latent[:, :, :1]), full[:, :, :1])
    video = full.clone()
    lat = ours.encode(video)
    # Encoding runs every chunk (frame 0, then 4 frames) through the same kernels on the same
    # chunk shapes and data whatever follows it; over the whole input it only concatenates and
    # scales (exactly rounded elementwise): bit-identical, on every CPU path tried.
    assert torch.equal(ours.encode(video[:, :, :5]), lat[:, :, :2])
    assert torch.equal(ours.encode(video[:, :, :1]), lat[:, :, :1])


def per_window_decode(ref, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ref.decode(z / SCALING_FACTOR).sample.clamp(-1, 1)


def test_tiled_decode_and_encode(one):
    ours, ref = one
    g = torch.Generator().manual_seed(7)
    latent = torch.randn(1, 16, 1, 6, 6, generator=g)
    full = ours.decode(latent)
    # one tile covering the frame: the untiled computation (weights exactly 1), the very same numbers
    assert torch.equal(ours.decode(latent, plan=TilePlan(tile=48, overlap=16)), full)
    tiled = ours.decode(latent, plan=TilePlan(tile=32, overlap=16))
    # the corner that only the first tile covers is diffusers' decode of that tile's latent
    corner = per_window_decode(ref, latent[..., :4, :4])
    assert (tiled[..., :16, :16] - corner[..., :16, :16]).abs().max() <= TOL
    seams = ours.decode(latent, plan=TilePlan(tile=24, overlap=0))
    d, s = (tiled - full).abs(), (seams - full).abs()
    print(f"decode tile 32/16 on 48x48: max {d.max():.3f} mean {d.mean():.4f}; "
          f"24/0: max {s.max():.3f} mean {s.mean():.4f} (video std {full.std():.3f})")
    # Tiles cannot be exact: the group norms and the convs' zero padding see only the tile. A
    # random VAE on a white-noise latent is the worst case (its receptive field is the whole
    # frame): measured 32/16 max 1.98, mean 0.278; 24/0 max 1.79, mean 0.324 (video std 0.33).
    # Bounds: the measured figures plus margin (2 is the most two clamped videos can differ).
    assert d.mean() <= 0.33 and d.max() <= 2.0
    assert s.mean() > d.mean()  # the overlap blend does reduce the error

    video = full.clone()
    lat_full = ours.encode(video)
    assert torch.equal(ours.encode(video, plan=TilePlan(tile=48, overlap=16)), lat_full)
    lat_tiled = ours.encode(video, plan=TilePlan(tile=32, overlap=16))
    with torch.no_grad():
        corner = ref.encode(video[..., :32, :32]).latent_dist.mode() * SCALING_FACTOR
    assert (lat_tiled[..., :2, :2] - corner[..., :2, :2]).abs().max() <= TOL
    e = (lat_tiled - lat_full).abs()
    print(f"encode tile 32/16 on 48x48: latent max {e.max():.4f} mean {e.mean():.4f} "
          f"(latent max {lat_full.abs().max():.3f}, std {lat_full.std():.3f})")
    # Measured: max 0.446, mean 0.091 on latents up to 0.531 (std 0.147).
    assert e.mean() <= 0.12 and e.max() <= 0.6


def test_temporal_chunks_are_warm_up_approximations(one):
    """Temporal windows (not needed: decoding streams time) restart the causal cache with a
    one-latent-frame warm-up; frames before the first cut stay exact (up to fp32 kernel rounding)."""
    ours, _ = one
    g = torch.Generator().manual_seed(9)
    latent = torch.randn(1, 16, 5, 2, 2, generator=g)
    full = ours.decode(latent)
    chunked = ours.decode(latent, plan=TilePlan(t_tile=8, t_overlap=4))
    # the first chunk decodes a shorter latent: other kernel shapes (see CAUSAL_REL)
    assert_causal_match(chunked[:, :, :5], full[:, :, :5])
    e = (chunked - full).abs()
    print(f"decode temporal 8/4 on 17 frames: max {e.max():.3f} mean {e.mean():.4f} "
          "(a random VAE's causal history reaches far back; nothing exact after the cut)")
    assert torch.isfinite(chunked).all()


def test_detection(tmp_path):
    info = write_easyanimate_vae(str(tmp_path / "ea.safetensors"), layout="diffusers")
    for sd in (info["state_dict"], info["original"], {"vae." + k: v for k, v in info["original"].items()}):
        assert is_easyanimate_vae(sd)
        assert not is_wan_vae(sd) and not is_sd_vae(sd)
    wan = write_wan_vae(str(tmp_path / "wan_2.1_vae.safetensors"), dim=8)
    assert is_wan_vae(wan["official"])
    # official Wan names and diffusers AutoencoderKLWan names (conv_in, quant_conv as well)
    assert not is_easyanimate_vae(wan["official"]) and not is_easyanimate_vae(wan["state_dict"])
    sd_vae = tiny_sd_vae(seed=1).state_dict()
    assert not is_easyanimate_vae(sd_vae) and not is_easyanimate_vae(sd_vae_to_ldm(sd_vae))
    # the 4-channel MagVIT VAEs of EasyAnimate V2-V4 are not this one
    small = ea_tiny_vae(seed=2, latent_channels=4).state_dict()
    assert not is_easyanimate_vae(small) and not is_easyanimate_vae(ea_vae_to_original(small))


def test_layouts_load_the_same_weights():
    ref = ea_tiny_vae(seed=3)
    sd = ref.state_dict()
    a = load_easyanimate_vae(sd, "diffusers.safetensors")
    b = load_easyanimate_vae({"vae." + k: v for k, v in ea_vae_to_original(sd).items()}, "orig.safetensors")
    assert set(to_internal(ea_vae_to_original(sd))) == set(sd)
    assert a.vae.state_dict().keys() == b.vae.state_dict().keys() == sd.keys()
    assert all(torch.equal(a.vae.state_dict()[k], b.vae.state_dict()[k]) for k in sd)


def test_wrapper_interface(one):
    ours, ref = one
    assert isinstance(ours, EasyAnimateVideoVAE)
    assert ours.family == "easyanimate" and ours.latent is LATENT_FORMAT and ours.streams_time
    assert ours.to("cpu") is ours
    assert ours.width == 32  # tiny VAE: a quarter of the real one's 128
    assert EasyAnimateVideoVAE.BYTES_PER_PIXEL > 0
    assert ours.bytes_per_pixel == pytest.approx(EasyAnimateVideoVAE.BYTES_PER_PIXEL / 4)
    sd = ref.state_dict()
    half = load_easyanimate_vae(sd, "vae.safetensors", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.bytes_per_pixel == pytest.approx(ours.bytes_per_pixel / 2)
    latent = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    a, b = ours.decode(latent), half.decode(latent)
    assert b.dtype == torch.float32 and (a - b).abs().mean() < 0.05
    assert half.encode(a).shape == (1, 16, 2, 2, 2)
    with pytest.raises(VideoForgeError, match=r"expected latent \[B, 16"):
        next(ours.vae.decode_stream(torch.zeros(1, 4, 1, 4, 4)))


def test_rejects_frame_count_not_4k_plus_1(pair):
    ours, _ = pair
    with pytest.raises(VideoForgeError, match=r"frames=8.*4k\+1.*use 5 or 9"):
        ours.encode(torch.zeros(1, 3, 8, 16, 16))


def test_bad_files(tmp_path):
    from safetensors.torch import save_file

    path = str(tmp_path / "not_a_vae.safetensors")
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(4, 4), "head.head.bias": torch.zeros(4)}, path)
    sd = load_state_dict(path)
    assert not is_easyanimate_vae(sd)
    with pytest.raises(VideoForgeError, match=r"not_a_vae\.safetensors: not an EasyAnimate V5\.1 VAE "
                                              r"\(missing \['encoder\.conv_in\.weight'"):
        load_easyanimate_vae(sd, "not_a_vae.safetensors")

    info = write_easyanimate_vae(str(tmp_path / "ea.safetensors"), layout="original")
    broken = dict(info["original"])
    del broken["decoder.up_blocks.2.upsampler.conv.weight"]
    with pytest.raises(VideoForgeError, match=r"broken\.safetensors.*missing 1 keys.*"
                                              r"decoder\.up_blocks\.2\.upsampler\.conv\.weight"):
        load_easyanimate_vae(broken, "broken.safetensors")
    small = ea_vae_to_original(ea_tiny_vae(seed=2, latent_channels=4).state_dict())
    with pytest.raises(VideoForgeError, match=r"v4\.safetensors: not an EasyAnimate V5\.1 VAE.*"
                                              r"post_quant_conv \(4, 4, 1, 1, 1\)"):
        load_easyanimate_vae(small, "v4.safetensors")
    with pytest.raises(VideoForgeError, match=r"ea\.safetensors: fp8 storage is not offered"):
        load_easyanimate_vae(info["original"], "ea.safetensors", dtype=torch.float8_e4m3fn)
