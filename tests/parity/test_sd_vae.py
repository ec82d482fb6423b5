"""Parity of models/animatediff/vae.py (the SD1.5 VAE, frame by frame) with diffusers'
AutoencoderKL on a tiny random checkpoint, read from the LDM layout (as inside an SD1.5
single-file checkpoint) and from the diffusers layout."""
from __future__ import annotations

import pytest
import torch

from models.animatediff.vae import (LATENT_FORMAT, SCALING_FACTOR, SDVAE, SDVideoVAE,
                                    diffusers_to_ldm_vae, is_sd_vae, load_sd_vae)
from models.common.checkpoint import load_state_dict, strip_prefix
from models.common.errors import VideoForgeError
from models.common.tiling import TilePlan
from models.wan.vae import is_wan_vae
from tests_fixtures import sd_vae_to_ldm, tiny_sd_vae, write_tiny_sd_vae, write_wan_vae

TOL = 1e-4  # max abs error, fp32


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("sdvae") / "v1-5-pruned-emaonly.safetensors")
    info = write_tiny_sd_vae(path, seed=0)
    return path, info


@pytest.fixture(scope="module", params=["ldm_file", "diffusers"])
def pair(request, written):
    """(ours, diffusers reference) with ours loaded from the LDM file or the diffusers dict."""
    path, info = written
    if request.param == "ldm_file":
        ours = load_sd_vae(load_state_dict(path), "v1-5-pruned-emaonly.safetensors")
    else:
        ours = load_sd_vae(info["state_dict"], "diffusion_pytorch_model.safetensors")
    return ours, info["model"]


def per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([fn(x[:, :, t]) for t in range(x.shape[2])], dim=2)


def test_fixture_converter_matches_diffusers(written):
    """The fixture's diffusers -> LDM converter, undone by diffusers' own LDM -> diffusers
    converter, gives back the same tensors and a model with identical outputs."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    path, info = written
    ckpt = load_state_dict(path)  # keys under first_stage_model.
    assert all(k.startswith("first_stage_model.") for k in ckpt)
    back = convert_ldm_vae_checkpoint(dict(ckpt), info["config"])
    sd = info["state_dict"]
    assert set(back) == set(sd)
    assert all(torch.equal(back[k].reshape(sd[k].shape), sd[k]) for k in sd)
    cfg = {k: v for k, v in info["config"].items() if not k.startswith("_")}
    ref2 = AutoencoderKL(**cfg).float().eval()
    ref2.load_state_dict(back, strict=True)
    g = torch.Generator().manual_seed(3)
    lat, img = torch.randn(1, 4, 8, 8, generator=g), torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    ref = info["model"]
    with torch.no_grad():
        assert torch.equal(ref2.decode(lat).sample, ref.decode(lat).sample)
        assert torch.equal(ref2.encode(img).latent_dist.mean, ref.encode(img).latent_dist.mean)


def test_our_converter_matches_fixture(written):
    _, info = written
    sd = info["state_dict"]
    ours, theirs = diffusers_to_ldm_vae(sd), info["ldm"]
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    # older diffusers VAE files (e.g. sd-vae-ft-mse) name the attention query / key / value /
    # proj_attn; also [C, C] attention weights under LDM names
    legacy = {k.replace("to_q.", "query.").replace("to_k.", "key.").replace("to_v.", "value.")
               .replace("to_out.0.", "proj_attn."): v for k, v in sd.items()}
    old = diffusers_to_ldm_vae(legacy)
    assert set(old) == set(theirs) and all(torch.equal(old[k], theirs[k]) for k in theirs)
    flat = {k: (v[:, :, 0, 0] if ".attn_1." in k and v.dim() == 4 else v) for k, v in theirs.items()}
    a, b = SDVAE.from_state_dict(flat), SDVAE.from_state_dict(theirs)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


@pytest.mark.parametrize("batch", [1, 2])
def test_decode_matches_diffusers(pair, batch):
    ours, ref = pair
    g = torch.Generator().manual_seed(batch)
    latent = torch.randn(batch, 4, 3, 8, 8, generator=g)
    expected = per_frame(lambda z: ref.decode(z / SCALING_FACTOR).sample, latent)
    # Random weights must not saturate the clamp, or the comparison would be vacuous.
    assert (expected.abs() < 1).float().mean() > 0.9 and expected.std() > 0.1
    calls = []
    video = ours.decode(latent, callback=lambda i, n: calls.append((i, n)))
    assert video.shape == (batch, 3, 3, 64, 64) and video.dtype == torch.float32
    err = (video - expected.clamp(-1, 1)).abs().max().item()
    print(f"decode B={batch}: max abs err {err:.3g}")
    assert err <= TOL
    assert calls == [(1, 3), (2, 3), (3, 3)]  # progress counts frames: one per step


@pytest.mark.parametrize("batch", [1, 2])
def test_encode_matches_diffusers(pair, batch):
    ours, ref = pair
    g = torch.Generator().manual_seed(10 + batch)
    video = torch.rand(batch, 3, 3, 64, 64, generator=g) * 2 - 1
    expected = per_frame(lambda x: ref.encode(x).latent_dist.mean * SCALING_FACTOR, video)
    latent = ours.encode(video)
    assert latent.shape == (batch, 4, 3, 8, 8) and latent.dtype == torch.float32
    err = (latent - expected).abs().max().item()
    print(f"encode B={batch}: max abs err {err:.3g} (latent max {expected.abs().max():.3g})")
    assert err <= TOL


def test_decode_stream_yields_frames(pair):
    ours, _ = pair
    latent = torch.randn(2, 4, 3, 4, 4)
    pieces = list(ours.vae.decode_stream(latent))
    assert [k for k, _ in pieces] == [0, 1, 2]
    assert all(p.shape == (2, 3, 1, 32, 32) for _, p in pieces)
    with pytest.raises(VideoForgeError, match=r"expected latent \[B, 4"):
        next(ours.vae.decode_stream(torch.zeros(1, 16, 1, 4, 4)))


def test_tiled_decode_and_encode(pair):
    ours, ref = pair
    g = torch.Generator().manual_seed(7)
    latent = torch.randn(1, 4, 2, 8, 8, generator=g)
    full = ours.decode(latent)
    # one tile covering the frame: the very same numbers
    assert torch.equal(ours.decode(latent, plan=TilePlan(tile=64, overlap=16)), full)
    tiled = ours.decode(latent, plan=TilePlan(tile=32, overlap=16))
    # the corner that only the first tile covers is diffusers' decode of that tile's latent
    corner = per_frame(lambda z: ref.decode(z / SCALING_FACTOR).sample, latent[..., :4, :4])
    assert (tiled[..., :16, :16] - corner[..., :16, :16].clamp(-1, 1)).abs().max() <= TOL
    seams = ours.decode(latent, plan=TilePlan(tile=32, overlap=0))
    d, s = (tiled - full).abs(), (seams - full).abs()
    print(f"decode tile 32/16 on 64x64: max {d.max():.3f} mean {d.mean():.4f}; "
          f"32/0: max {s.max():.3f} mean {s.mean():.4f} (video std {full.std():.3f})")
    # Tiles cannot be exact: GroupNorm statistics, the mid attention and the convs' zero padding
    # all see only the tile (ComfyUI's tiled decode has the same limit). A random VAE on a
    # white-noise latent is the worst case: measured 32/16 max 1.46, mean 0.197; 32/0 max 1.53,
    # mean 0.236 (video std 0.34). Bounds: the measured figures plus margin.
    assert d.mean() <= 0.25 and d.max() <= 1.8
    assert s.mean() > d.mean()  # the overlap blend does reduce the error

    video = full.clone()
    lat_full = ours.encode(video)
    assert torch.equal(ours.encode(video, plan=TilePlan(tile=64, overlap=16)), lat_full)
    lat_tiled = ours.encode(video, plan=TilePlan(tile=32, overlap=16))
    corner = per_frame(lambda x: ref.encode(x).latent_dist.mean * SCALING_FACTOR, video[..., :32, :32])
    assert (lat_tiled[..., :2, :2] - corner[..., :2, :2]).abs().max() <= TOL
    e = (lat_tiled - lat_full).abs()
    print(f"encode tile 32/16 on 64x64: latent max {e.max():.4f} mean {e.mean():.4f} "
          f"(latent max {lat_full.abs().max():.3f}, std {lat_full.std():.3f})")
    # Measured: max 0.131, mean 0.028 on latents up to 0.19 (std 0.043).
    assert e.mean() <= 0.04 and e.max() <= 0.2


def test_detection(tmp_path, written):
    path, info = written
    ckpt = load_state_dict(path)
    ldm = strip_prefix(ckpt, ("first_stage_model.",))
    assert is_sd_vae(ldm) and is_sd_vae(info["state_dict"]) and is_sd_vae(ckpt)
    assert not is_wan_vae(ldm) and not is_wan_vae(info["state_dict"])
    wan = write_wan_vae(str(tmp_path / "wan_2.1_vae.safetensors"), dim=8)
    assert is_wan_vae(wan["official"])
    assert not is_sd_vae(wan["official"]) and not is_sd_vae(wan["state_dict"])
    # a VAE with 16 latent channels (SD3 / Flux-like) is not the SD1.5 VAE
    wide = tiny_sd_vae(seed=1, latent_channels=16)
    assert not is_sd_vae(sd_vae_to_ldm(wide.state_dict()))


def test_vae_inside_full_checkpoint(written):
    """A single-file SD1.5 checkpoint: the VAE is a minority of its keys, under first_stage_model."""
    path, info = written
    ckpt = {**load_state_dict(path),
            **{f"model.diffusion_model.input_blocks.{i}.0.weight": torch.zeros(1) for i in range(400)}}
    assert not is_sd_vae(ckpt)  # the file as a whole is not a VAE (the loader calls it a checkpoint)
    vae = load_sd_vae(ckpt, "v1-5-pruned-emaonly.safetensors")
    ref = load_sd_vae(info["ldm"], "vae.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(vae.vae.state_dict().values(), ref.vae.state_dict().values()))


def test_wrapper_interface(written):
    _, info = written
    vae = load_sd_vae(info["ldm"], "vae.safetensors")
    assert isinstance(vae, SDVideoVAE)
    assert vae.family == "sd15" and vae.latent is LATENT_FORMAT and vae.streams_time
    assert vae.to("cpu") is vae
    # tiny VAE: ch 32 -> a quarter of the real one's figure
    assert vae.bytes_per_pixel == pytest.approx(SDVideoVAE.BYTES_PER_PIXEL / 4)
    half = load_sd_vae(info["ldm"], "vae.safetensors", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.bytes_per_pixel == pytest.approx(vae.bytes_per_pixel / 2)
    latent = torch.randn(1, 4, 2, 4, 4)
    a, b = vae.decode(latent), half.decode(latent)
    assert b.dtype == torch.float32 and (a - b).abs().mean() < 0.05
    assert half.encode(a).shape == (1, 4, 2, 4, 4)


def test_bad_files(tmp_path, written):
    _, info = written
    broken = dict(info["ldm"])
    del broken["decoder.up.1.upsample.conv.weight"]
    with pytest.raises(VideoForgeError, match=r"broken_vae\.safetensors.*missing 1 keys.*decoder\.up\.1\.upsample\.conv\.weight"):
        load_sd_vae(broken, "broken_vae.safetensors")
    extra = {**info["ldm"], "encoder.mid.attn_2.q.weight": torch.zeros(64, 64, 1, 1)}
    with pytest.raises(VideoForgeError, match=r"extra\.safetensors.*unexpected 1 keys"):
        load_sd_vae(extra, "extra.safetensors")
    wan = write_wan_vae(str(tmp_path / "wan_2.1_vae.safetensors"), dim=8)
    with pytest.raises(VideoForgeError, match=r"wan_2\.1_vae\.safetensors: not a Stable Diffusion 1\.5 VAE"):
        load_sd_vae(wan["official"], "wan_2.1_vae.safetensors")
    wide = sd_vae_to_ldm(tiny_sd_vae(seed=1, latent_channels=16).state_dict())
    with pytest.raises(VideoForgeError, match=r"sd3\.safetensors: not a Stable Diffusion 1\.5 VAE.*post_quant_conv"):
        load_sd_vae(wide, "sd3.safetensors")
    with pytest.raises(VideoForgeError, match=r"fp8"):
        load_sd_vae(info["ldm"], "vae.safetensors", dtype=torch.float8_e4m3fn)
