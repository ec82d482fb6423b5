"""Our EasyAnimate V5.1 transformer, loaded from files in each real layout, against diffusers'
EasyAnimateTransformer3DModel (T2V, InP 33 ch, Control 48 ch)."""
import os

import numpy as np
import pytest
import torch

from models.common.checkpoint import load_state_dict
from models.common.errors import VideoForgeError
from models.easyanimate.convert import (dit_layout, from_diffusers, is_easyanimate_dit,
                                        normalize_dit_keys, to_diffusers)
from models.easyanimate.model import (EasyAnimateConfig, build_easyanimate_dit, crop_region,
                                      rope_cos_sin)
from tests_fixtures import (EA_TINY, ea_reference_dit, write_easyanimate_dit,  # noqa: F401
                            write_tiny_sd_unet, write_wan_dit)

TEXT_DIM = EA_TINY["text_embed_dim"]


def _inputs(variant, seed=0, b=2, f=3, h=6, w=10, text_len=7):
    """Latents of odd frame count and odd token grid (3 x 5); t as the pipelines pass it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 16, f, h, w, generator=g)
    t = torch.tensor([999.0, 412.5][:b])
    ctx = torch.randn(b, text_len, TEXT_DIM, generator=g)
    extra = {}
    if variant == "inp":
        mask = (torch.rand(b, 1, f, h, w, generator=g) > 0.5).float()
        extra["inpaint"] = torch.cat([mask, torch.randn(b, 16, f, h, w, generator=g)], 1)
    elif variant == "control":
        ref = torch.zeros(b, 16, f, h, w)
        ref[:, :, :1] = torch.randn(b, 16, 1, h, w, generator=g)
        extra["control"] = torch.cat([torch.randn(b, 16, f, h, w, generator=g), ref], 1)
    return x, t, ctx, extra


def _reference(ref, x, t, ctx, extra):
    kw = {"inpaint_latents": extra.get("inpaint"), "control_latents": extra.get("control")}
    with torch.no_grad():
        return ref(x, t, encoder_hidden_states=ctx, return_dict=False, **kw)[0]


def _load(path):
    return build_easyanimate_dit(load_state_dict(path), os.path.basename(path))


@pytest.mark.parametrize("variant,layout,shards", [
    ("t2v", "official", 2), ("t2v", "diffusers", 1), ("t2v", "comfy", 1), ("t2v", "comfy_diffusers", 1),
    ("inp", "official", 2), ("inp", "diffusers", 1),
    ("control", "official", 1), ("control", "diffusers", 2),
])
def test_dit_matches_diffusers(tmp_path, variant, layout, shards):
    dest = str(tmp_path / (f"{variant}_{layout}" + ("" if shards > 1 else ".safetensors")))
    ref, path = write_easyanimate_dit(dest, variant, layout, seed=1, shards=shards)
    dit = _load(path)
    assert dit.cfg.variant == variant and dit.cfg.in_channels == {"t2v": 16, "inp": 33, "control": 48}[variant]
    x, t, ctx, extra = _inputs(variant)
    want = _reference(ref, x, t, ctx, extra)
    # diffusers >= 0.32 places RoPE positions of non-2:3 grids differently from the released
    # code (see rope_positions); compare like with like here, the official grid below.
    dit.rope_grid = "diffusers"
    with torch.no_grad():
        got = dit(x, t, ctx, **extra)
    err = (got - want).abs().max().item()
    print(f"easyanimate {variant} {layout}: max abs err {err:.2e} (max |ref| {want.abs().max():.2f})")
    assert got.shape == (2, 16, 3, 6, 10) and err <= 1e-4
    # 2:3 token grid (crop starts at 0): both RoPE grids agree, default (official) matches.
    x, t, ctx, extra = _inputs(variant, seed=2, f=2, h=4, w=6, text_len=5)
    want = _reference(ref, x, t, ctx, extra)
    dit.rope_grid = "official"
    with torch.no_grad():
        err = (dit(x, t, ctx, **extra) - want).abs().max().item()
    print(f"easyanimate {variant} {layout} 2:3 grid, official rope: max abs err {err:.2e}")
    assert err <= 1e-4


def test_norm_options_match_diffusers(tmp_path):
    """after_norm (norm3) and add_norm_text_encoder (RMSNorm before text_proj), not used by
    the V5.1 releases, are read off the keys and match too."""
    ref, path = write_easyanimate_dit(str(tmp_path / "n.safetensors"), "t2v", "official", seed=4,
                                      after_norm=True, add_norm_text_encoder=True)
    dit = _load(path)
    assert dit.cfg.after_norm and dit.cfg.text_norm
    dit.rope_grid = "diffusers"
    x, t, ctx, extra = _inputs("t2v", seed=3)
    with torch.no_grad():
        err = (dit(x, t, ctx) - _reference(ref, x, t, ctx, extra)).abs().max().item()
    assert err <= 1e-4


def test_output_depends_on_every_input(tmp_path):
    """The parity above is not trivial: text, timestep and conditioning all move the output.
    (Text tokens carry no position in the DiT: their order does not matter.)"""
    _, path = write_easyanimate_dit(str(tmp_path / "c.safetensors"), "control", "official", seed=5)
    dit = _load(path)
    x, t, ctx, extra = _inputs("control")
    with torch.no_grad():
        base = dit(x, t, ctx, **extra)
        for changed in (dit(x, t * 0.5, ctx, **extra), dit(x, t, ctx[:, :5], **extra),
                        dit(x, t, ctx, control=extra["control"] * 0)):
            assert (changed - base).abs().max() > 1e-2
        assert (dit(x, t, ctx.flip(1), **extra) - base).abs().max() < 1e-5


def test_official_rope_grid_is_the_released_formula():
    """'official' = the aigc-apps pipeline on diffusers <= 0.31 (numpy endpoint=False
    linspace); diffusers' current torch version differs when the crop does not start at 0."""
    def numpy_reference(head_dim, f, gh, gw, patch):
        (t0, l0), (t1, l1) = crop_region(gh, gw, patch)
        grids = [np.linspace(0, f, f, endpoint=False, dtype=np.float32),
                 np.linspace(t0, t1, gh, endpoint=False, dtype=np.float32),
                 np.linspace(l0, l1, gw, endpoint=False, dtype=np.float32)]
        dims = (head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3)
        angs = []
        for pos, d in zip(grids, dims):
            inv = 1.0 / 10000 ** (np.arange(0, d, 2, dtype=np.float32) / d)
            angs.append(np.repeat(np.outer(pos, inv), 2, axis=1))
        a = np.concatenate([np.broadcast_to(angs[0][:, None, None], (f, gh, gw, dims[0])),
                            np.broadcast_to(angs[1][None, :, None], (f, gh, gw, dims[1])),
                            np.broadcast_to(angs[2][None, None, :], (f, gh, gw, dims[2]))], -1)
        return torch.from_numpy(np.cos(a).reshape(f * gh * gw, -1).astype(np.float32))

    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    for f, gh, gw in [(3, 3, 5), (2, 32, 32), (13, 30, 53), (1, 2, 3)]:
        cos, _ = rope_cos_sin(64, f, gh, gw, 2, "official")
        assert torch.allclose(cos, numpy_reference(64, f, gh, gw, 2), atol=2e-5)
        dcos, _ = rope_cos_sin(64, f, gh, gw, 2, "diffusers")
        want, _ = get_3d_rotary_pos_embed(64, crop_region(gh, gw, 2), (gh, gw), f, use_real=True)
        assert torch.allclose(dcos, want, atol=2e-5)
        starts_at_zero = crop_region(gh, gw, 2)[0] == (0, 0)
        assert torch.allclose(cos, dcos, atol=2e-5) == starts_at_zero
    # 512 x 512 video -> 32 x 32 tokens: cropped at left 8, the formulas drift apart by 0.25 px
    assert crop_region(32, 32, 2) == ((0, 8), (30, 38))


@pytest.mark.parametrize("dtype,bound", [("bf16", 0.03), ("fp16", 0.005), ("fp8_e4m3fn", 0.15)])
def test_low_precision_storage(tmp_path, dtype, bound):
    from models.common.ops import parse_dtype
    _, path = write_easyanimate_dit(str(tmp_path / "s.safetensors"), "inp", "diffusers", seed=6)
    sd = load_state_dict(path)
    full = build_easyanimate_dit(sd, "s.safetensors")
    low = build_easyanimate_dit(sd, "s.safetensors", storage=parse_dtype(dtype))
    assert low.transformer_blocks[0].attn2.to_q.weight.dtype == parse_dtype(dtype)
    assert low.proj.weight.dtype == parse_dtype(dtype)
    assert low.transformer_blocks[0].norm1.norm.weight.dtype == torch.float32
    x, t, ctx, extra = _inputs("inp", seed=7)
    with torch.no_grad():
        a, b = full(x, t, ctx, **extra), low(x, t, ctx, **extra)   # fp32 compute (CPU)
    rel = ((b - a).abs().max() / a.abs().max()).item()
    print(f"easyanimate {dtype} storage, fp32 compute: max rel err {rel:.2e}")
    assert 0 < rel < bound


def test_bf16_compute_runs(tmp_path):
    _, path = write_easyanimate_dit(str(tmp_path / "b.safetensors"), "t2v", "official", seed=8,
                                    dtype=torch.bfloat16)
    dit = _load(path)
    x, t, ctx, _ = _inputs("t2v", seed=9)
    with torch.no_grad():
        a = dit(x, t, ctx)
        b = dit(x.bfloat16(), t, ctx.bfloat16())
    assert b.dtype == torch.bfloat16
    rel = ((b.float() - a).abs().max() / a.abs().max()).item()
    print(f"easyanimate bf16 storage + bf16 compute vs fp32 compute: max rel err {rel:.2e}")
    assert rel < 0.1


def test_config_and_layouts():
    ref = ea_reference_dit("inp", 0)
    diff = ref.state_dict()
    off = from_diffusers(diff)
    assert dit_layout(diff) == "diffusers" and dit_layout(off) == "official"
    assert "transformer_blocks.0.attn2.norm_q.weight" in off
    assert off["transformer_blocks.1.attn2.norm_q.bias"].shape == (16,)      # [head_dim] LayerNorm
    assert to_diffusers(off).keys() == diff.keys()
    cfg = EasyAnimateConfig.infer(normalize_dit_keys(diff))
    assert (cfg.variant, cfg.dim, cfg.num_heads, cfg.head_dim, cfg.num_layers, cfg.text_dim,
            cfg.time_embed_dim, cfg.patch_size, cfg.ffn_dim) == ("inp", 32, 2, 16, 2, TEXT_DIM, 24, 2, 128)
    assert cfg.resize_inpaint_mask_directly and not cfg.after_norm and not cfg.text_norm
    assert EasyAnimateConfig().size_name == "12B" and EasyAnimateConfig().num_heads == 48
    for v, ch in (("t2v", 16), ("inp", 33), ("control", 48)):
        assert EasyAnimateConfig(in_channels=ch).variant == v


def test_unused_v5_branches_are_dropped(tmp_path):
    """A text_proj_t5 (V5 multi-encoder leftover) in an official file is ignored."""
    extra = {"text_proj_t5.weight": torch.randn(32, 64), "text_proj_t5.bias": torch.randn(32)}
    ref, path = write_easyanimate_dit(str(tmp_path / "t5.safetensors"), "t2v", "official", seed=1, extra=extra)
    dit = _load(path)
    x, t, ctx, e = _inputs("t2v", f=2, h=4, w=6)
    with torch.no_grad():
        assert (dit(x, t, ctx) - _reference(ref, x, t, ctx, e)).abs().max() <= 1e-4


def test_detection_negatives(tmp_path):
    from models.animatediff import family as sd_family
    from models.wan import convert as wan_convert
    others = []
    for layout in ("comfy", "diffusers"):
        p = str(tmp_path / f"wan_{layout}.safetensors")
        write_wan_dit(p, seed=0, layout=layout)
        others.append(load_state_dict(p))
    unet_path = str(tmp_path / "u.safetensors")
    write_tiny_sd_unet(unet_path)
    others.append(load_state_dict(unet_path))
    for other in others:
        assert not is_easyanimate_dit(other)
        with pytest.raises(VideoForgeError, match="not an EasyAnimate transformer"):
            build_easyanimate_dit(other, "other.safetensors")
    for layout in ("official", "diffusers", "comfy"):
        _, p = write_easyanimate_dit(str(tmp_path / f"e_{layout}.safetensors"), "control", layout)
        ea = load_state_dict(p)
        assert is_easyanimate_dit(ea)
        assert not wan_convert.is_wan_dit(wan_convert.normalize_dit_keys(ea))
        assert not sd_family.is_sd_unet_file(ea)


def test_bad_files_name_the_file(tmp_path):
    _, path = write_easyanimate_dit(str(tmp_path / "ea.safetensors"), "t2v", "diffusers", seed=2)
    sd = load_state_dict(path)
    cases = {
        "missing ff": {k: v for k, v in sd.items() if k != "transformer_blocks.1.ff.net.2.weight"},
        "no text norms (old diffusers)": {k: v for k, v in sd.items() if "norm_added" not in k},
        "truncated blocks": {k: v for k, v in sd.items() if not k.startswith("transformer_blocks.0.")},
        "no time embedding": {k: v for k, v in sd.items() if not k.startswith("time_embedding.")},
        "wrong shape": {**sd, "proj_out.bias": torch.zeros(5)},
        "mixed layouts": {**sd, **{k.replace("attn1.add_q_proj", "attn2.to_q"): v
                                   for k, v in sd.items() if "add_q_proj" in k}},
        "unexpected key": {**sd, "transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 32)},
    }
    for what, bad in cases.items():
        with pytest.raises(VideoForgeError, match="broken_file.safetensors") as e:
            build_easyanimate_dit(bad, "broken_file.safetensors")
        print(f"{what}: {e.value}")
    cut = str(tmp_path / "cut_ea.safetensors")
    with open(path, "rb") as f, open(cut, "wb") as g:
        g.write(f.read()[:-100])
    with pytest.raises(VideoForgeError, match="cut_ea.safetensors"):
        load_state_dict(cut)
    dit = build_easyanimate_dit(sd, "ea.safetensors")
    x, t, ctx, _ = _inputs("t2v")
    with pytest.raises(VideoForgeError, match="divisible by the patch"):
        dit(x[..., :5], t, ctx)
    with pytest.raises(VideoForgeError, match="takes no extra latents"):
        dit(x, t, ctx, inpaint=torch.zeros(2, 17, 3, 6, 10))
