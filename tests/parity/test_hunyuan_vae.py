"""Parity of models/hunyuan/vae.py (the HunyuanVideo causal 3-D VAE) with diffusers'
AutoencoderKLHunyuanVideo on tiny random checkpoints, read from ComfyUI's LDM file layout and from
the official / diffusers one; ComfyUI's own model checks the LDM names and a single frame."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from models.animatediff.vae import is_sd_vae
from models.common.checkpoint import load_state_dict
from models.common.errors import VideoForgeError
from models.common.tiling import TilePlan
from models.easyanimate.vae import is_easyanimate_vae
from models.hunyuan.vae import (LATENT_FORMAT, SCALING_FACTOR, HunyuanVAE, HunyuanVideoVAE,
                                is_hunyuan_vae, layout_of, load_hunyuan_vae, to_internal)
from models.wan.vae import is_wan_vae
from tests_fixtures import (HY_SMALL_VAE_CONFIG, ea_tiny_vae, hy_tiny_vae, hy_vae_to_ldm,
                            sd_clip_comfyui_dir, sd_vae_to_ldm, tiny_sd_vae, write_hunyuan_vae,
                            write_wan_vae)

# Max abs error against diffusers, fp32. Both run the same math in another order: group-norm
# statistics (ours: per-channel var_mean over slabs of frames combined by the law of total
# variance; torch's group_norm: Welford per group), the norm's affine folded into one scale and
# shift, convolutions over slabs of frames (other kernel shapes), the frame-causal attention as
# one unmasked attention per query frame (diffusers: a -inf mask over all keys). Each step is
# exact up to fp32 rounding (~1e-7 relative); ~30 random layers amplify it. Measured at most
# 1.6e-5 (decode, batch of 2; outputs up to ~1.6) and 2e-6 (encode) on this CPU's default
# kernels, 2.3e-5 / 4.9e-6 with ATEN_CPU_CAPABILITY / MKL / oneDNN limited to AVX2: 4x margin.
TOL = 1e-4
FILE = {"comfy": "hunyuan_video_vae_bf16.safetensors",
        "diffusers": "diffusion_pytorch_model.safetensors"}


@pytest.fixture(scope="module", params=["comfy", "diffusers"])
def pair(request, tmp_path_factory):
    """(ours loaded from a file in that layout, diffusers reference)."""
    path = str(tmp_path_factory.mktemp("hyvae") / FILE[request.param])
    info = write_hunyuan_vae(path, layout=request.param, seed=0)
    sd = load_state_dict(path)
    assert layout_of(sd) == request.param and is_hunyuan_vae(sd)
    return load_hunyuan_vae(sd, FILE[request.param]), info["model"]


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    """(ours from the ComfyUI layout, diffusers reference), for the tests where the file layout
    does not matter (both load the very same weights: test_layouts_load_the_same_weights)."""
    path = str(tmp_path_factory.mktemp("hyvae1") / FILE["comfy"])
    info = write_hunyuan_vae(path, layout="comfy", seed=0)
    return load_hunyuan_vae(load_state_dict(path), FILE["comfy"]), info["model"]


def test_constants_match_diffusers(pair):
    ours, ref = pair
    assert SCALING_FACTOR == ref.config.scaling_factor == 0.476986
    assert LATENT_FORMAT.channels == ref.config.latent_channels == 16
    assert LATENT_FORMAT.space_ratio == ref.spatial_compression_ratio == 8
    assert LATENT_FORMAT.time_ratio == ref.temporal_compression_ratio == 4
    assert LATENT_FORMAT.first_frame_alone and LATENT_FORMAT.size_multiple == 16
    cfg = ours.vae.cfg
    assert cfg.widths == tuple(ref.config.block_out_channels) and cfg.layers == ref.config.layers_per_block
    assert cfg.groups == ref.config.norm_num_groups and cfg.mid_attention


def check_encode(ours, ref, batch: int, frames: int, size: int) -> float:
    g = torch.Generator().manual_seed(batch * 100 + frames)
    video = torch.rand(batch, 3, frames, size, size, generator=g) * 2 - 1
    with torch.no_grad():
        post = ref.encode(video).latent_dist
        expected = post.mode() * SCALING_FACTOR
    assert torch.equal(post.mode(), post.mean)  # the posterior mode is its mean
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
    n = 4 * (t - 1) + 1
    assert calls == [(n, n)]  # one window, decoded in one pass
    return err


def test_encode_matches_diffusers(pair):
    """9 frames at 32x32 (two temporal downsamples, frame 0 alone), from either file layout."""
    assert check_encode(*pair, batch=1, frames=9, size=32) <= TOL


def test_decode_matches_diffusers(pair):
    """3 latent frames -> 9 frames at 32x32 (the frame-causal mid attention over 3 frames),
    from either file layout."""
    assert check_decode(*pair, batch=1, t=3, size=32) <= TOL


@pytest.mark.parametrize("batch,n", [(2, 2), (1, 1)])
def test_batch_and_single_frame_match_diffusers(one, batch, n):
    assert check_encode(*one, batch=batch, frames=4 * (n - 1) + 1, size=16) <= TOL
    assert check_decode(*one, batch=batch, t=n, size=16) <= TOL


def test_small_config_with_4_groups_matches_diffusers(tmp_path):
    """HUNYUAN.md section 8's tiny config (1 layer per block, 4 norm groups, widths 8 / 16), 16
    latent channels: the layer count comes from the keys, the group count (not stored) is passed."""
    ref = hy_tiny_vae(seed=4, **HY_SMALL_VAE_CONFIG)
    for sd in (ref.state_dict(), hy_vae_to_ldm(ref.state_dict())):
        vae = HunyuanVideoVAE(HunyuanVAE.from_state_dict(sd, name="small.safetensors", groups=4))
        assert vae.vae.cfg.layers == 1 and vae.vae.cfg.widths == (8, 8, 16, 16)
        assert check_encode(vae, ref, batch=1, frames=5, size=16) <= TOL
        assert check_decode(vae, ref, batch=1, t=2, size=16) <= TOL
    # the default 32 groups do not divide these widths: a clear error, not a wrong model
    with pytest.raises(VideoForgeError, match=r"small\.safetensors: channel widths \(8, 8, 16, 16\) "
                                              r"are not multiples of the VAE's 32 norm groups"):
        load_hunyuan_vae(ref.state_dict(), "small.safetensors")


def test_time_does_not_stream(one):
    """Why `streams_time` is False: the group norms take statistics over every frame, so the
    decode of the first latent frames is not the start of the whole decode (unlike Wan /
    EasyAnimate); `decode_stream` yields the window once, and a temporal window covering the
    video is the untiled computation."""
    ours, _ = one
    assert not ours.streams_time
    g = torch.Generator().manual_seed(5)
    latent = torch.randn(1, 16, 3, 2, 2, generator=g)
    full = ours.decode(latent)
    pieces = list(ours.vae.decode_stream(latent))
    assert [(k, p.shape[2]) for k, p in pieces] == [(0, 9)]
    # decode() is this very stream, untiled (weights exactly 1): bit-identical
    assert torch.equal(pieces[0][1], full)
    assert torch.equal(ours.decode(latent, plan=TilePlan(t_tile=12, t_overlap=4)), full)
    prefix = (ours.decode(latent[:, :, :2]) - full[:, :, :5]).abs().max().item()
    print(f"decode of 2 of 3 latent frames vs the first 5 frames of the whole: max {prefix:.3f}")
    assert prefix > 1e-3  # far above rounding: later frames move earlier ones through the norms


def test_temporal_chunks_are_warm_up_approximations(one):
    """Temporal windows (for long videos under a memory budget) restart the causal convs with a
    one-latent-frame warm-up and take norm statistics over their own frames only: an
    approximation. Measured on this random VAE with a white-noise latent (the worst case: no
    temporal coherence) and reported; bounded by what two clamped videos can differ."""
    ours, _ = one
    assert ours.latent.first_frame_alone
    g = torch.Generator().manual_seed(9)
    latent = torch.randn(1, 16, 5, 2, 2, generator=g)
    full = ours.decode(latent)
    chunked = ours.decode(latent, plan=TilePlan(t_tile=8, t_overlap=4))
    assert chunked.shape == full.shape and torch.isfinite(chunked).all()
    # What the chunks are: latent windows [0, 2), [1, 3), [2, 4), [3, 5) decoded on their own;
    # the first keeps its 5 frames, each later one drops its warm-up frame (the lone first frame
    # of its window, frame 4i of the video) and keeps 4. The very same computations: bit-identical.
    assert torch.equal(chunked[:, :, :5], ours.decode(latent[:, :, :2]))
    for i in range(1, 4):
        assert torch.equal(chunked[:, :, 4 * i + 1:4 * i + 5], ours.decode(latent[:, :, i:i + 2])[:, :, 1:])
    e = (chunked - full).abs()
    print(f"decode temporal 8/4 on 17 frames: max {e.max():.3f} mean {e.mean():.4f} "
          f"(video std {full.std():.3f})")
    assert e.max() <= 2.0
    video = full.clone()
    lat = ours.encode(video)
    lat_chunked = ours.encode(video, plan=TilePlan(t_tile=8, t_overlap=4))
    # encode windows: frames 0-4, then 4i-4i+4 with frame 4i encoded as a lone first frame whose
    # latent (warm-up) is dropped
    assert torch.equal(lat_chunked[:, :, :2], ours.encode(video[:, :, :5]))
    for i in range(1, 4):
        assert torch.equal(lat_chunked[:, :, i + 1], ours.encode(video[:, :, 4 * i:4 * i + 5])[:, :, 1])
    e = (lat_chunked - lat).abs()
    print(f"encode temporal 8/4 on 17 frames: latent max {e.max():.4f} mean {e.mean():.4f} "
          f"(latent max {lat.abs().max():.3f})")
    assert lat_chunked.shape == lat.shape and torch.isfinite(lat_chunked).all()


# Mean abs error of 32 px tiles with 16 px overlap against the untiled pass, 48x48 px, 5 frames,
# this random VAE, white-noise latent / its decoded video. Measured: decode mean 0.305 (max 1.80,
# video std 0.36), encode mean 0.073 (max 0.35, latent std 0.10); bounds = measured + ~20%
# (the figures are deterministic up to fp32 rounding, ~1e-5).
TILE_DEC_MEAN, TILE_ENC_MEAN = 0.36, 0.09


def test_tiled_decode_and_encode(one):
    ours, ref = one
    g = torch.Generator().manual_seed(7)
    latent = torch.randn(1, 16, 2, 6, 6, generator=g)
    full = ours.decode(latent)
    # one tile covering the frame: the untiled computation (weights exactly 1), the very same numbers
    assert torch.equal(ours.decode(latent, plan=TilePlan(tile=48, overlap=16)), full)
    tiled = ours.decode(latent, plan=TilePlan(tile=32, overlap=16))
    # the corner that only the first tile covers is diffusers' decode of that tile's latent
    with torch.no_grad():
        corner = ref.decode(latent[..., :4, :4] / SCALING_FACTOR).sample.clamp(-1, 1)
    assert (tiled[..., :16, :16] - corner[..., :16, :16]).abs().max() <= TOL
    seams = ours.decode(latent, plan=TilePlan(tile=24, overlap=0))
    d, s = (tiled - full).abs(), (seams - full).abs()
    print(f"decode tile 32/16 on 48x48x5: max {d.max():.3f} mean {d.mean():.4f}; "
          f"24/0: max {s.max():.3f} mean {s.mean():.4f} (video std {full.std():.3f})")
    # Tiles cannot be exact: the group norms, the mid attention and the replicate padding see only
    # the tile. A random VAE on a white-noise latent is the worst case (its receptive field is the
    # whole frame). Bounds: the measured figures (see the printout) plus margin.
    assert d.mean() <= TILE_DEC_MEAN and d.max() <= 2.0
    assert s.mean() > d.mean()  # the overlap blend does reduce the error

    video = full.clone()
    lat_full = ours.encode(video)
    assert torch.equal(ours.encode(video, plan=TilePlan(tile=48, overlap=16)), lat_full)
    lat_tiled = ours.encode(video, plan=TilePlan(tile=32, overlap=16))
    with torch.no_grad():
        corner = ref.encode(video[..., :32, :32]).latent_dist.mode() * SCALING_FACTOR
    assert (lat_tiled[..., :2, :2] - corner[..., :2, :2]).abs().max() <= TOL
    e = (lat_tiled - lat_full).abs()
    print(f"encode tile 32/16 on 48x48x5: latent max {e.max():.4f} mean {e.mean():.4f} "
          f"(latent max {lat_full.abs().max():.3f}, std {lat_full.std():.3f})")
    assert e.mean() <= TILE_ENC_MEAN


def test_detection(tmp_path):
    ref = hy_tiny_vae(seed=1)
    sd = ref.state_dict()
    for s in (sd, hy_vae_to_ldm(sd), {"vae." + k: v for k, v in hy_vae_to_ldm(sd).items()},
              {"first_stage_model." + k: v for k, v in sd.items()}):
        assert is_hunyuan_vae(s)
        assert not is_wan_vae(s) and not is_sd_vae(s) and not is_easyanimate_vae(s)
    wan = write_wan_vae(str(tmp_path / "wan_2.1_vae.safetensors"), dim=8)
    assert not is_hunyuan_vae(wan["official"]) and not is_hunyuan_vae(wan["state_dict"])
    sd_vae = tiny_sd_vae(seed=1).state_dict()
    assert not is_hunyuan_vae(sd_vae) and not is_hunyuan_vae(sd_vae_to_ldm(sd_vae))
    assert not is_hunyuan_vae(ea_tiny_vae(seed=1).state_dict())
    # diffusers' own tiny test VAE has 4 latent channels: not a HunyuanVideo latent
    four = hy_tiny_vae(seed=2, latent_channels=4).state_dict()
    assert not is_hunyuan_vae(four) and not is_hunyuan_vae(hy_vae_to_ldm(four))


def test_layouts_load_the_same_weights():
    ref = hy_tiny_vae(seed=3)
    sd = ref.state_dict()
    ldm = hy_vae_to_ldm(sd)
    assert set(to_internal(ldm)) == set(sd)
    assert set(to_internal({"vae." + k: v for k, v in sd.items()})) == set(sd)
    a = load_hunyuan_vae(sd, "diffusers.safetensors")
    b = load_hunyuan_vae({"vae." + k: v for k, v in ldm.items()}, "comfy.safetensors")
    assert a.vae.state_dict().keys() == b.vae.state_dict().keys() == sd.keys()
    # same values; the LDM attention projections are [C, C, 1, 1, 1] conv weights, ours Linear
    assert all(torch.equal(a.vae.state_dict()[k], b.vae.state_dict()[k]) for k in sd)
    assert ldm["decoder.mid.attn_1.q.weight"].shape == (64, 64, 1, 1, 1)
    assert torch.equal(ldm["decoder.up.0.block.2.conv2.conv.weight"],
                       sd["decoder.up_blocks.3.resnets.2.conv2.conv.weight"])


# ComfyUI's own HunyuanVideo VAE model (what comfy/sd.py builds for a file with
# `decoder.conv_in.conv.weight`: AutoencoderKL, ddconfig conv3d=True, time_compress=4; its ch /
# ch_mult are fixed to the real widths there, set to the tiny ones here). Run in a subprocess:
# ComfyUI's model_management has import-time state.
_COMFY_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    try:
        import comfy.options
        comfy.options.enable_args_parsing(False)
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        import torch
        from comfy import diffusers_convert
        from comfy.ldm.models.autoencoder import AutoencoderKL
        from safetensors.torch import load_file, save_file
    except Exception as e:
        print("IMPORT-FAILED", repr(e)); sys.exit(3)
    x = torch.rand(1, 3, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = torch.randn(1, 16, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    out = {"x": x, "z": z}
    for i, path in enumerate(sys.argv[2:-1]):
        sd = load_file(path)
        if "decoder.up_blocks.0.resnets.0.norm1.weight" in sd:  # comfy/sd.py: diffusers format
            sd = diffusers_convert.convert_vae_state_dict(sd)
        assert "decoder.conv_in.conv.weight" in sd  # comfy/sd.py's HunyuanVideo VAE branch
        ch = sd["encoder.conv_in.conv.weight"].shape[0]
        mult = [sd[f"encoder.down.{j}.block.0.conv1.conv.weight"].shape[0] // ch for j in range(4)]
        dd = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3,
              "out_ch": 3, "ch": ch, "ch_mult": mult, "num_res_blocks": 2, "attn_resolutions": [],
              "dropout": 0.0, "conv3d": True, "time_compress": 4}
        m = AutoencoderKL(ddconfig=dd, embed_dim=sd["post_quant_conv.weight"].shape[1]).float().eval()
        missing, unexpected = m.load_state_dict(sd, strict=False)
        bad = [k for k, v in m.state_dict().items() if k in sd and sd[k].shape != v.shape]
        assert not missing and not unexpected and not bad, (path, missing, unexpected, bad)
        with torch.no_grad():
            out[f"enc{i}"] = m.encode(x).float().contiguous()   # posterior mode, unscaled
            out[f"dec{i}"] = m.decode(z).float().contiguous()
    save_file(out, sys.argv[-1])
    """)


def test_comfyui_model_takes_both_layouts_and_agrees_on_a_frame(tmp_path):
    """ComfyUI's own model loads the LDM file (and the diffusers one after ComfyUI's conversion)
    with no missing, unexpected or mis-shaped key, and on a single frame (where its non-causal
    mid attention equals the frame-causal one) encodes and decodes as we do."""
    from safetensors.torch import load_file

    comfy = sd_clip_comfyui_dir()
    if comfy is None:
        pytest.skip("ComfyUI is not installed here")
    paths = [str(tmp_path / "comfy.safetensors"), str(tmp_path / "diffusers.safetensors")]
    write_hunyuan_vae(paths[0], layout="comfy", seed=0)
    write_hunyuan_vae(paths[1], layout="diffusers", seed=0)
    r = subprocess.run([sys.executable, "-c", _COMFY_SCRIPT, comfy, *paths,
                        str(tmp_path / "out.safetensors")], capture_output=True, text=True, timeout=300)
    if r.returncode == 3:
        pytest.skip(f"ComfyUI cannot be imported here: {r.stdout.strip()[-300:]}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    out = load_file(str(tmp_path / "out.safetensors"))
    for i, p in enumerate(paths):
        ours = load_hunyuan_vae(load_state_dict(p), p)
        e = (ours.encode(out["x"]) / SCALING_FACTOR - out[f"enc{i}"]).abs().max().item()
        d = (ours.decode(out["z"] * SCALING_FACTOR) - out[f"dec{i}"].clamp(-1, 1)).abs().max().item()
        print(f"ComfyUI model, {p.rsplit('/', 1)[-1]}: encode max err {e:.3g}, decode {d:.3g}")
        # the same math in another order (ComfyUI's attention and norms): see TOL
        assert e <= TOL and d <= TOL


def test_wrapper_interface(one):
    ours, ref = one
    assert isinstance(ours, HunyuanVideoVAE)
    assert ours.family == "hunyuan" and ours.latent is LATENT_FORMAT and not ours.streams_time
    assert ours.to("cpu") is ours
    assert ours.width == 32  # tiny VAE: a quarter of the real one's 128
    assert HunyuanVideoVAE.BYTES_PER_PIXEL > 0 and HunyuanVideoVAE.REF_WIDTH == 128
    sd = ref.state_dict()
    half = load_hunyuan_vae(sd, "vae.safetensors", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.bytes_per_pixel == pytest.approx(ours.bytes_per_pixel / 2)
    latent = torch.randn(1, 16, 2, 2, 2, generator=torch.Generator().manual_seed(1))
    a, b = ours.decode(latent), half.decode(latent)
    assert b.dtype == torch.float32 and (a - b).abs().mean() < 0.05
    assert half.encode(a).shape == (1, 16, 2, 2, 2)
    with pytest.raises(VideoForgeError, match=r"expected latent \[B, 16"):
        next(ours.vae.decode_stream(torch.zeros(1, 4, 1, 4, 4)))


def test_rejects_frame_count_not_4k_plus_1(one):
    ours, _ = one
    with pytest.raises(VideoForgeError, match=r"frames=8.*4k\+1.*use 5 or 9"):
        ours.encode(torch.zeros(1, 3, 8, 16, 16))


def test_bad_files(tmp_path):
    from safetensors.torch import save_file

    path = str(tmp_path / "not_a_vae.safetensors")
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(4, 4), "head.head.bias": torch.zeros(4)}, path)
    sd = load_state_dict(path)
    assert not is_hunyuan_vae(sd)
    with pytest.raises(VideoForgeError, match=r"not_a_vae\.safetensors: not a HunyuanVideo VAE "
                                              r"\(missing \['encoder\.conv_in\.conv\.weight'"):
        load_hunyuan_vae(sd, "not_a_vae.safetensors")

    ldm = hy_vae_to_ldm(hy_tiny_vae(seed=0).state_dict())
    broken = dict(ldm)
    del broken["decoder.up.1.upsample.conv.conv.weight"]
    with pytest.raises(VideoForgeError, match=r"broken\.safetensors.*missing 1 keys.*"
                                              r"decoder\.up_blocks\.2\.upsamplers\.0\.conv\.conv\.weight"):
        load_hunyuan_vae(broken, "broken.safetensors")
    four = hy_vae_to_ldm(hy_tiny_vae(seed=2, latent_channels=4).state_dict())
    with pytest.raises(VideoForgeError, match=r"four\.safetensors: not a HunyuanVideo VAE.*"
                                              r"post_quant_conv \(4, 4, 1, 1, 1\)"):
        load_hunyuan_vae(four, "four.safetensors")
    with pytest.raises(VideoForgeError, match=r"hy\.safetensors: fp8 storage is not offered"):
        load_hunyuan_vae(ldm, "hy.safetensors", dtype=torch.float8_e4m3fn)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from /proc (Linux)")
def test_vae_estimate_covers_a_measured_decode():
    """The stated bytes per pixel (scaled to a half-width module: widths 64, 128, 256, 256) plus
    the output copies cover a real whole-window decode's peak, without more than 2.5x margin
    (tests/unit/test_memory.py's bound for the Wan VAE)."""
    from models.common.memory import peak_rss_growth, vae_estimate
    from models.hunyuan.vae import HunyuanVAEConfig

    torch.manual_seed(0)
    vae = HunyuanVideoVAE(HunyuanVAE(HunyuanVAEConfig(widths=(64, 128, 256, 256))))
    latent = torch.randn(1, 16, 3, 16, 16)           # 9 frames of 128x128
    plan = TilePlan()
    vae.decode(latent[:, :, :1, :4, :4], plan=plan)  # warm-up
    # the larger of two runs, as tests/unit/test_memory.py (glibc's heap reuse varies per run)
    measured = max(peak_rss_growth(lambda: vae.decode(latent, plan=plan)) for _ in range(2))
    est = vae_estimate("Decode Video", vae, plan, 9, 128, 128, torch.device("cpu"), 1, "")
    print(f"hunyuan vae (width 64): measured {measured / 2**20:.0f} MB, "
          f"estimated {est.total / 2**20:.0f} MB (x{est.total / measured:.2f})")
    assert measured <= est.total <= 2.5 * measured
