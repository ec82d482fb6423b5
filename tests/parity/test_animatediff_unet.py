"""SD1.5 UNet (LDM single-file layout) and AnimateDiff motion modules / MotionLoRA vs diffusers.

References: `UNet2DConditionModel` loaded from the same LDM-layout file with diffusers' own
converter, `UNetMotionModel.from_unet2d(unet, MotionAdapter)`. Diffusers normalises inside the
motion module over all frames while the official AnimateDiff code normalises per frame
(models/animatediff/motion.py); our default follows the official code, `temporal_norm="clip"`
follows diffusers, and the reference is patched to the official behaviour to check the default.
"""
from __future__ import annotations

import os

import pytest
import torch

import tests_fixtures as fx
from models import loader
from models.animatediff.motion import MotionSet, build_motion_model, inspect_motion
from models.common.errors import VideoForgeError

B, T = 2, 5


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ad")
    unet_path = str(d / "sd15_unet.safetensors")
    ref_unet = fx.write_tiny_sd_unet(unet_path, seed=0)
    paths, adapters = {}, {}
    for version, (mid, pe) in {"v1": (False, 24), "v2": (True, 32), "v3": (False, 32)}.items():
        paths[version] = str(d / f"mm_{version}.safetensors")
        adapters[version] = fx.write_tiny_motion_module(paths[version], seed=3, mid=mid, pe_len=pe)
    return unet_path, ref_unet, paths, adapters


def _inputs(seed=0, h=8, w=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, T, h, w, generator=g)
    t = torch.tensor([37.0, 801.0])
    ctx = torch.randn(B, 7, 32, generator=g)
    return x, t, ctx


def _ours(model, x, t, ctx):
    return model.denoise(x, t, {"context": ctx})


def _ref(ref, x, t, ctx):
    with torch.no_grad():
        return ref(x, t, ctx.repeat_interleave(x.shape[2], 0)).sample


def test_unet_matches_diffusers_from_the_same_ldm_file(files):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    from models.common.checkpoint import load_state_dict
    unet_path, ref_unet, _, _ = files
    ref = UNet2DConditionModel(**fx.TINY_UNET).eval()
    ref.load_state_dict(convert_ldm_unet_checkpoint(load_state_dict(unet_path), ref.config))
    model = loader.load_video_model(unet_path)
    assert model.family == "sd15" and model.prediction == "eps" and model.max_frames is None
    for h, w in ((8, 8), (6, 10)):  # 6 / 10 latent px: odd sizes after downsampling
        x, t, ctx = _inputs(1, h, w)
        with torch.no_grad():
            want = torch.stack([ref(x[:, :, f], t, ctx).sample for f in range(T)], dim=2)
        err = (_ours(model, x, t, ctx) - want).abs().max().item()
        print(f"PARITY unet {h}x{w}: {err:.2e}")  # pytest -s
        assert err <= 1e-4, (h, w, err)
        assert want.abs().max() > 0.1


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_motion_modules_match_unet_motion_model(files, version):
    from diffusers import UNetMotionModel
    unet_path, ref_unet, paths, adapters = files
    base = loader.load_video_model(unet_path)
    mm = loader.load_motion_module(paths[version])
    assert mm.info.version == version
    x, t, ctx = _inputs(2)
    ref = UNetMotionModel.from_unet2d(ref_unet, adapters[version]).eval()
    want = _ref(ref, x, t, ctx)
    diffusers_way = _ours(base.with_motion(MotionSet(mm, "mm", temporal_norm="clip")), x, t, ctx)
    official = _ours(base.with_motion(MotionSet(mm, "mm")), x, t, ctx)
    want_official = _ref(fx.official_motion_norms(ref), x, t, ctx)
    errs = ((diffusers_way - want).abs().max().item(), (official - want_official).abs().max().item())
    print(f"PARITY motion {version}: diffusers norm {errs[0]:.2e}, official norm {errs[1]:.2e}")
    assert max(errs) <= 1e-4
    # the two normalisations really differ (so the checks above can tell them apart)
    assert (official - diffusers_way).abs().max().item() > 1e-2
    # and the motion module matters: frames mix
    plain = _ours(base, x, t, ctx)
    assert (official - plain).abs().max().item() > 1e-2


def test_v1_normalises_resblocks_over_the_clip(files):
    from diffusers import UNetMotionModel
    unet_path, ref_unet, paths, adapters = files
    model = loader.load_video_model(unet_path).with_motion(
        MotionSet(loader.load_motion_module(paths["v1"]), "mm_v1"))
    assert model.motion.joint_norm and model.max_frames == 24
    x, t, ctx = _inputs(3)
    ref = fx.official_motion_norms(UNetMotionModel.from_unet2d(ref_unet, adapters["v1"]).eval(), v1_frames=T)
    err = (_ours(model, x, t, ctx) - _ref(ref, x, t, ctx)).abs().max().item()
    print(f"PARITY motion v1: {err:.2e}")
    assert err <= 1e-4


def test_diffusers_layout_motion_file_loads_the_same(files, tmp_path):
    from safetensors.torch import save_file
    _, _, paths, adapters = files
    p = str(tmp_path / "diffusion_pytorch_model.safetensors")
    save_file({k: v.contiguous() for k, v in adapters["v2"].state_dict().items()}, p)
    a, b = loader.load_motion_module(paths["v2"]), loader.load_motion_module(p)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_motion_lora_matches_merged_weights(files, tmp_path):
    from diffusers import UNetMotionModel
    from safetensors.torch import save_file
    unet_path, ref_unet, paths, adapters = files
    official = fx.motion_to_official(adapters["v2"].state_dict())
    lora_files = []
    for i in range(2):
        p = str(tmp_path / f"lora{i}.safetensors")
        save_file(fx.tiny_motion_lora(official, rank=4, seed=10 + i), p)
        lora_files.append(p)
    strengths = (0.7, -0.4)
    loras = [(loader.load_motion_lora(p), s) for p, s in zip(lora_files, strengths)]
    base = loader.load_video_model(unet_path)
    mm = loader.load_motion_module(paths["v2"])
    model = base.with_motion(MotionSet(mm, "mm", loras=loras, temporal_norm="clip"))
    # reference: the adapter with W + strength * up @ down merged into every projection
    merged = fx.tiny_motion_adapter(3, mid=True, pe_len=32)
    sd = merged.state_dict()
    official_to_diffusers = {}
    for k in sd:
        for ok in fx.motion_to_official({k: sd[k]}):
            official_to_diffusers[ok] = k
    with torch.no_grad():
        for lora, s in loras:
            for key, (down, up) in lora.items():
                sd[official_to_diffusers[key + ".weight"]] += s * (up @ down)
    merged.load_state_dict(sd)
    x, t, ctx = _inputs(4)
    want = _ref(UNetMotionModel.from_unet2d(ref_unet, merged).eval(), x, t, ctx)
    got = _ours(model, x, t, ctx)
    err = (got - want).abs().max().item()
    print(f"PARITY motion lora: {err:.2e}")
    assert err <= 1e-4
    no_lora = _ours(base.with_motion(MotionSet(mm, "mm", temporal_norm="clip")), x, t, ctx)
    assert (got - no_lora).abs().max().item() > 1e-3


def test_motion_scale_scales_temporal_attention_logits(files):
    _, _, paths, _ = files
    mm = loader.load_motion_module(paths["v2"])
    attn = mm.down_blocks[0].motion_modules[0].temporal_transformer.transformer_blocks[0].attention_blocks[0]
    x = torch.randn(3, T, 32)
    none = lambda a, n, y, h: y  # noqa: E731  (no LoRA)
    with torch.no_grad():
        flat = attn(x, 0.0, none)
        xp = x + attn.pos_encoder.pe[:, :T]
        mean_v = attn.to_v(xp).mean(dim=1, keepdim=True)  # scale 0: uniform weights over frames
        assert torch.allclose(flat, attn.to_out[0](mean_v).expand_as(flat), atol=1e-5)
        assert not torch.allclose(attn(x, 1.0, none), flat, atol=1e-3)


def test_version_detection_and_clear_errors(files, tmp_path):
    from safetensors.torch import save_file
    unet_path, _, paths, adapters = files
    assert [loader.load_motion_module(paths[v]).info.version for v in ("v1", "v2", "v3")] == ["v1", "v2", "v3"]
    assert inspect_motion(fx.motion_to_official(adapters["v1"].state_dict())).pe_len == 24
    base = loader.load_video_model(unet_path)
    # SDXL motion module: 3 down blocks
    sdxl = fx.tiny_motion_adapter(0, mid=False, block_out_channels=(32, 64, 64), motion_layers_per_block=2)
    p = str(tmp_path / "mm_sdxl_v10_beta.safetensors")
    save_file({k: v.contiguous() for k, v in fx.motion_to_official(sdxl.state_dict()).items()}, p)
    with pytest.raises(VideoForgeError, match="SDXL motion module"):
        loader.load_motion_module(p)
    # HotShot-XL naming
    hs = {"down_blocks.0.temporal_attentions.0.pos_encoder.positional_encoding": torch.zeros(1, 8, 32)}
    p = str(tmp_path / "hsxl_temporal_layers.safetensors")
    save_file(hs, p)
    with pytest.raises(VideoForgeError, match="HotShot"):
        loader.load_motion_module(p)
    # a module whose channels do not fit the base model
    wide = fx.tiny_motion_adapter(0, mid=True, block_out_channels=(64, 128))
    p = str(tmp_path / "mm_wide.safetensors")
    save_file({k: v.contiguous() for k, v in fx.motion_to_official(wide.state_dict()).items()}, p)
    with pytest.raises(VideoForgeError, match=r"mm_wide.*does not fit.*sd15_unet"):
        base.with_motion(MotionSet(loader.load_motion_module(p), os.path.basename(p)))
    # motion module handed to the model loader / the other way round
    with pytest.raises(VideoForgeError, match="motion module.*Apply Motion Module"):
        loader.load_video_model(paths["v2"])
    with pytest.raises(VideoForgeError, match="Stable Diffusion UNet"):
        loader.load_motion_module(unet_path)
    # two motion modules on one model
    with_mm = base.with_motion(MotionSet(loader.load_motion_module(paths["v2"]), "a"))
    with pytest.raises(VideoForgeError, match="already has motion module"):
        with_mm.with_motion(MotionSet(loader.load_motion_module(paths["v3"]), "b"))


def test_frame_limits_and_context_windows(files):
    from models.sampling.context import ContextOptions
    from models.sampling.video import generate
    unet_path, _, paths, _ = files
    model = loader.load_video_model(unet_path).with_motion(
        MotionSet(loader.load_motion_module(paths["v1"]), "mm_sd_v15.ckpt"))  # 24-frame PE
    with pytest.raises(VideoForgeError, match="at least 1 frame"):
        model.latent.shape(1, 0, 64, 64)
    ctx = {"context": torch.randn(1, 7, 32)}
    long = torch.zeros(model.latent.shape(1, 30, 64, 64))
    run = dict(seed=1, steps=2, cfg=1.0, solver="ddim")
    with pytest.raises(VideoForgeError, match="30 frames exceed this model's 24-frame motion module; connect Context Options"):
        generate(model, long, ctx, None, **run)
    with pytest.raises(VideoForgeError, match="length 32 exceeds"):
        generate(model, long, ctx, None, context=ContextOptions(length=32, overlap=4), **run)
    windowed = generate(model, long, ctx, None, context=ContextOptions(length=16, overlap=4), **run)
    assert windowed.shape == long.shape and torch.isfinite(windowed).all()
    # a window covering the whole clip is exactly no windows
    short = torch.zeros(model.latent.shape(1, 12, 64, 64))
    assert torch.equal(generate(model, short, ctx, None, **run),
                       generate(model, short, ctx, None, context=ContextOptions(length=16), **run))
