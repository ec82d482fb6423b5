"""Our HunyuanVideo DiT, loaded from files in each real layout, against diffusers'
HunyuanVideoTransformer3DModel (T2V, I2V v1 "concat", I2V v2 "token replace"), plus the general
N-axis RoPE against Wan's and diffusers' tables.

Tolerances: the fp32 comparisons differ from the reference only in kernel choice and summation
order (fused vs split q/k/v linears, masked vs trimmed attention): measured ~4e-7 of the output
scale; the bound 1e-5 leaves ~25x for other CPUs / AVX2-capped kernels.
"""
import pytest
import torch

from models.common.checkpoint import load_state_dict
from models.common.errors import VideoForgeError
from models.common.ops import parse_dtype
from models.hunyuan.convert import (from_diffusers, is_hunyuan_dit, normalize_dit_keys,
                                    to_diffusers)
from models.hunyuan.model import HunyuanConfig, HunyuanDiT, build_dit
from tests_fixtures import (HY_TINY, hy_diffusers_to_official, hy_reference_dit,  # noqa: F401
                            write_hunyuan_dit, write_wan_dit)

TEXT_DIM, POOLED_DIM = HY_TINY["text_embed_dim"], HY_TINY["pooled_projection_dim"]
FP32_BOUND = 1e-5


def _inputs(in_channels=16, seed=0, b=2, f=3, h=8, w=12, text_len=7, lengths=(5, 3)):
    """Latents with a 3 x 4 x 6 token grid; right-padded text (random values in the padding)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, in_channels, f, h, w, generator=g)
    t = torch.tensor([999.0, 412.5][:b])
    txt = torch.randn(b, text_len, TEXT_DIM, generator=g)
    mask = (torch.arange(text_len)[None] < torch.tensor(lengths[:b])[:, None]).long()
    pooled = torch.randn(b, POOLED_DIM, generator=g)
    guidance = torch.tensor([6.0, 3.5][:b])
    return x, t, txt, mask, pooled, guidance


def _reference(ref, x, t, txt, mask, pooled, guidance):
    """diffusers takes the guidance already multiplied by 1000 (as its pipeline passes it)."""
    g = guidance * 1000 if ref.config.guidance_embeds else None
    with torch.no_grad():
        return ref(x, t, txt, mask, pooled, guidance=g, return_dict=False)[0]


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def _load(path, storage=None):
    return build_dit(load_state_dict(path), path.split("/")[-1], storage)


@pytest.mark.parametrize("variant,layout", [
    ("t2v", "official"), ("t2v", "comfy"), ("t2v", "diffusers"),
    ("i2v_concat", "official"), ("i2v_concat", "diffusers"), ("i2v_replace", "comfy"),
])
def test_dit_matches_diffusers(tmp_path, variant, layout):
    path = str(tmp_path / f"hy_{variant}_{layout}.safetensors")
    ref = write_hunyuan_dit(path, variant, layout, seed=1)
    dit = _load(path)
    cin = 33 if variant == "i2v_concat" else 16
    assert dit.cfg.in_channels == cin and dit.cfg.guidance_embed == (variant != "i2v_concat")
    assert dit.cfg.variant == ("i2v_concat" if variant == "i2v_concat" else "t2v")
    x, t, txt, mask, pooled, guidance = _inputs(cin)
    want = _reference(ref, x, t, txt, mask, pooled, guidance)
    replace = variant == "i2v_replace"
    with torch.no_grad():
        got = dit(x, t, txt, mask, pooled, guidance, token_replace=replace)
    err = _rel(got, want)
    print(f"hunyuan dit {variant} {layout}: max rel err {err:.2e} (max |ref| {want.abs().max():.2f})")
    assert got.shape == (2, 16, 3, 8, 12) and err <= FP32_BOUND
    if replace:
        # the hook matters: without it the first frame's tokens get the wrong modulation
        with torch.no_grad():
            plain = dit(x, t, txt, mask, pooled, guidance)
        assert _rel(plain, want) > 1e-3


def test_padding_does_not_change_valid_outputs(tmp_path):
    """Padded text tokens change nothing, whatever their values: a batch of two prompt lengths,
    padded with random values + mask, vs each prompt alone and unpadded."""
    path = str(tmp_path / "hy.safetensors")
    write_hunyuan_dit(path, seed=2)
    dit = _load(path)
    x, t, txt, _, pooled, guidance = _inputs(seed=3, text_len=9)
    lens = (6, 4)
    mask = (torch.arange(9)[None] < torch.tensor(lens)[:, None]).long()
    with torch.no_grad():
        both = dit(x, t, txt, mask, pooled, guidance)
        errs = []
        for i, n in enumerate(lens):
            alone = dit(x[i:i + 1], t[i:i + 1], txt[i:i + 1, :n], None, pooled[i:i + 1], guidance[i:i + 1])
            errs.append(_rel(both[i:i + 1], alone))
    print(f"hunyuan padded batch vs unpadded single prompts: max rel err {max(errs):.2e}")
    assert max(errs) <= FP32_BOUND
    # padding columns every prompt shares are dropped; an all-valid mask needs no mask at all
    trimmed, m = HunyuanDiT.text_tokens(txt, mask)
    assert trimmed.shape[1] == 6 and m is not None and m.shape == (2, 6)
    assert HunyuanDiT.text_tokens(txt, torch.ones(2, 9))[1] is None


def test_output_depends_on_every_input(tmp_path):
    """The parity is not trivial: guidance, CLIP pooled, text, timestep all move the output,
    and the text mask is honoured (masking a valid token changes it)."""
    path = str(tmp_path / "hy.safetensors")
    write_hunyuan_dit(path, seed=3)
    dit = _load(path)
    x, t, txt, mask, pooled, guidance = _inputs(seed=4)
    with torch.no_grad():
        base = dit(x, t, txt, mask, pooled, guidance)
        cases = {"guidance": dit(x, t, txt, mask, pooled, guidance * 0.5),
                 "pooled": dit(x, t, txt, mask, pooled.flip(0), guidance),
                 "text": dit(x, t, txt.flip(1), mask, pooled, guidance),
                 "timestep": dit(x, t * 0.5, txt, mask, pooled, guidance),
                 "mask": dit(x, t, txt, mask * (torch.arange(7) != 1), pooled, guidance)}
    for what, out in cases.items():
        assert _rel(out, base) > 1e-3, what


@pytest.mark.parametrize("dtype,bound", [("bf16", 0.02), ("fp16", 2e-3), ("fp8_e4m3fn", 0.15)])
def test_low_precision_storage(tmp_path, dtype, bound):
    """Weights stored in bf16 / fp16 / fp8, computed in fp32: close to the fp32 model. Each
    weight keeps 8 / 11 / 4 significant bits; measured 2.1e-3 / 2.5e-4 / 4.2e-2, bounds ~4-10x."""
    path = str(tmp_path / "hy.safetensors")
    write_hunyuan_dit(path, "t2v", "diffusers", seed=4)
    sd = load_state_dict(path)
    full, low = build_dit(sd, "hy"), build_dit(sd, "hy", parse_dtype(dtype))
    assert low.double_blocks[0].img_attn_qkv.weight.dtype == parse_dtype(dtype)
    assert low.img_in.proj.weight.dtype == parse_dtype(dtype)
    assert low.single_blocks[0].q_norm.weight.dtype == torch.float32
    x, t, txt, mask, pooled, guidance = _inputs(seed=5)
    with torch.no_grad():
        a, b = full(x, t, txt, mask, pooled, guidance), low(x, t, txt, mask, pooled, guidance)
    rel = _rel(b, a)
    print(f"hunyuan {dtype} storage, fp32 compute: max rel err {rel:.2e}")
    assert 0 < rel < bound


def test_scaled_fp8_file_and_bf16_compute(tmp_path):
    """A ComfyUI-style scaled fp8 file (fp8 weight + fp32 `scale_weight` per layer) and an fp8
    diffusers-layout file load and run; bf16 storage runs with bf16 activations."""
    path = str(tmp_path / "hy.safetensors")
    write_hunyuan_dit(path, "t2v", "official", seed=6)
    sd = load_state_dict(path)
    full = build_dit(sd, "hy")
    scaled = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    for k, v in sd.items():
        if k.endswith(".weight") and v.dim() >= 2:
            s = v.abs().max() / 448
            scaled[k] = (v / s).to(torch.float8_e4m3fn)
            scaled[k[: -len("weight")] + "scale_weight"] = s.reshape(())
        else:
            scaled[k] = v
    fp8 = build_dit(scaled, "hy_fp8_scaled")
    assert fp8.single_blocks[1].linear1.weight.dtype == torch.float8_e4m3fn
    assert fp8.single_blocks[1].linear1.scale_weight is not None
    # a diffusers-layout file stored in fp8: q / k / v are fused in fp8
    dpath = str(tmp_path / "hy_diffusers_fp8.safetensors")
    write_hunyuan_dit(dpath, "t2v", "diffusers", seed=6, dtype=torch.float8_e4m3fn)
    dfp8 = _load(dpath)
    assert dfp8.double_blocks[0].txt_attn_qkv.weight.dtype == torch.float8_e4m3fn
    x, t, txt, mask, pooled, guidance = _inputs(seed=7)
    with torch.no_grad():
        a = full(x, t, txt, mask, pooled, guidance)
        b = fp8(x, t, txt, mask, pooled, guidance)
        d8 = dfp8(x, t, txt, mask, pooled, guidance)
        bf = build_dit(sd, "hy", torch.bfloat16)(x.bfloat16(), t, txt.bfloat16(), mask,
                                                  pooled.bfloat16(), guidance)
    assert bf.dtype == torch.bfloat16
    e8, eb, ed = _rel(b, a), _rel(bf, a), _rel(d8, a)
    print(f"hunyuan scaled fp8 file: max rel err {e8:.2e}; unscaled fp8 diffusers file (norms and "
          f"biases in fp8 too): {ed:.2e}; bf16 storage + compute: {eb:.2e}")
    assert 0 < ed < 0.15                       # measured 3.2e-2
    assert 0 < e8 < 0.15 and 0 < eb < 0.05    # measured 2.9e-2 / 5.1e-3


def test_config_inference_and_detection(tmp_path):
    ref = hy_reference_dit("i2v_concat", 0)
    diff = ref.state_dict()
    off = hy_diffusers_to_official(diff)
    cfg = HunyuanConfig.infer(off)
    assert (cfg.hidden, cfg.heads, cfg.double_depth, cfg.single_depth, cfg.refiner_depth) == (256, 2, 2, 2, 2)
    assert (cfg.in_channels, cfg.out_channels, cfg.concat_channels, cfg.guidance_embed) == (33, 16, 17, False)
    assert (cfg.text_dim, cfg.pooled_dim, cfg.patch, cfg.mlp_dim, cfg.variant) == (
        TEXT_DIM, POOLED_DIM, (1, 2, 2), 1024, "i2v_concat")
    t2v = HunyuanConfig.infer(hy_diffusers_to_official(hy_reference_dit("t2v", 0).state_dict()))
    assert t2v.in_channels == 16 and t2v.guidance_embed and t2v.variant == "t2v"
    # defaults are the 13B release: same parameter count as diffusers' default config
    from accelerate import init_empty_weights
    from diffusers import HunyuanVideoTransformer3DModel
    with init_empty_weights():
        big = HunyuanVideoTransformer3DModel()
    with torch.device("meta"):
        ours = HunyuanDiT(HunyuanConfig())
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in big.parameters()) and HunyuanConfig().size_name == "13B"
    assert (HunyuanConfig().heads, HunyuanConfig().mlp_dim) == (24, 12288)
    print(f"hunyuan default config: {n / 1e9:.3f}B parameters")
    # detection on raw files of every layout, and against other families
    prefixed = {"model.diffusion_model." + k: v for k, v in off.items()}
    for sd in (off, diff, prefixed, {"module": off}):
        assert is_hunyuan_dit(normalize_dit_keys(sd))
    assert is_hunyuan_dit(diff) and is_hunyuan_dit(prefixed) and is_hunyuan_dit({"module": off})
    from models.wan.convert import is_wan_dit
    from models.wan.convert import normalize_dit_keys as wan_normalize
    assert not is_wan_dit(wan_normalize(off)) and not is_wan_dit(wan_normalize(diff))
    for layout in ("comfy", "diffusers"):
        p = str(tmp_path / f"wan_{layout}.safetensors")
        write_wan_dit(p, seed=0, layout=layout)
        wan = load_state_dict(p)
        assert not is_hunyuan_dit(wan)
        with pytest.raises(VideoForgeError, match="not a HunyuanVideo diffusion model"):
            build_dit(wan, "wan.safetensors")
    # relatives sharing the refiner marker are not taken for HunyuanVideo 1.0
    assert not is_hunyuan_dit({**off, "byt5_in.fc1.weight": torch.zeros(2, 2)})


def test_key_mapping_round_trips():
    """Pure renames / slicing / concatenation of the same values: exact equality is expected."""
    diff = hy_reference_dit("t2v", 0).state_dict()
    off = hy_diffusers_to_official(diff)
    ours = from_diffusers(diff)
    assert ours.keys() == off.keys() and all(torch.equal(ours[k], off[k]) for k in off)
    back = to_diffusers(off)
    assert back.keys() == diff.keys() and all(torch.equal(back[k], diff[k]) for k in diff)
    assert torch.equal(off["final_layer.adaLN_modulation.1.bias"][:256], diff["norm_out.linear.bias"][256:])
    # the fixture's official names are what diffusers' own single-file loader reads as official
    # (its single-block split hard-codes hidden 3072, so linear1 is left out here)
    from diffusers.loaders.single_file_utils import convert_hunyuan_video_transformer_to_diffusers
    conv = convert_hunyuan_video_transformer_to_diffusers({k: v for k, v in off.items() if ".linear1." not in k})
    split = {k for k in diff if k.startswith("single_transformer_blocks.")
             and (".attn.to_" in k or ".proj_mlp." in k)}
    assert conv.keys() == diff.keys() - split
    assert all(torch.equal(conv[k], diff[k]) for k in conv)


def wan_reference_freqs(grid, d: int, max_len: int = 1024) -> torch.Tensor:
    """Wan2.1's own rope (wan/modules/model.py `rope_params` + the per-axis expand of
    `rope_apply`): float64 tables per axis split (d - 4*(d//6), 2*(d//6), 2*(d//6)), complex128."""
    def params(dim):
        ang = torch.outer(torch.arange(max_len, dtype=torch.float64),
                          1.0 / torch.pow(10000.0, torch.arange(0, dim, 2, dtype=torch.float64).div(dim)))
        return torch.polar(torch.ones_like(ang), ang)
    f, h, w = grid
    c = d // 2
    ft, fh, fw = params(d - 4 * (d // 6)), params(2 * (d // 6)), params(2 * (d // 6))
    assert ft.shape[1] + fh.shape[1] + fw.shape[1] == c
    out = torch.cat([ft[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
                     fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                     fw[:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1)
    return out.reshape(f * h * w, 1, -1)


def test_general_rope_expresses_wan_and_hunyuan():
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoRotaryPosEmbed

    from models.common.rope import (apply_rope, apply_rope_interleaved, axes_split,
                                    nd_rope_complex, nd_rope_freqs)
    g = torch.Generator().manual_seed(0)
    # Wan: complex128, split 44 / 42 / 42, theta 10000 (same float64 formula: ~1 ulp apart)
    grid = (5, 7, 9)
    wan = wan_reference_freqs(grid, 128)
    nd = nd_rope_complex(grid, axes_split(128), 10000.0, torch.float64)
    assert (nd - wan[:, 0]).abs().max() < 1e-12
    x = torch.randn(2, 315, 3, 128, generator=g)
    ang = nd.angle()
    got = apply_rope_interleaved(x, ang.cos(), ang.sin())
    assert (got - apply_rope(x, wan)).abs().max() < 1e-5   # float64 math, fp32 out: 1 ulp of |x|<8
    # HunyuanVideo: float32, (16, 56, 56), theta 256, against diffusers' tables and rotation
    for f, h, w in ((3, 4, 6), (9, 30, 53)):
        cos, sin = nd_rope_freqs((f, h, w), (16, 56, 56), 256.0)
        dcos, dsin = HunyuanVideoRotaryPosEmbed(2, 1, [16, 56, 56], 256.0)(torch.zeros(1, 1, f, 2 * h, 2 * w))
        assert (cos.repeat_interleave(2, 1) - dcos).abs().max() < 1e-6
        assert (sin.repeat_interleave(2, 1) - dsin).abs().max() < 1e-6
        q = torch.randn(1, f * h * w, 2, 128, generator=g)
        err = (apply_rope_interleaved(q, cos, sin) - apply_rotary_emb(q, (dcos, dsin), sequence_dim=1)).abs().max()
        assert err < 1e-5


def test_bad_files_and_inputs_name_the_problem(tmp_path):
    path = str(tmp_path / "hy.safetensors")
    write_hunyuan_dit(path, seed=2)
    sd = normalize_dit_keys(load_state_dict(path))
    pe = sd["img_in.proj.weight"]
    cases = {
        "missing key": ({k: v for k, v in sd.items() if k != "single_blocks.1.linear2.weight"}, "missing 1 keys"),
        "truncated blocks": ({k: v for k, v in sd.items() if not k.startswith("double_blocks.0.")},
                             r"double_blocks \[0\] are missing"),
        "no patch embedding": ({k: v for k, v in sd.items() if not k.startswith("img_in.")}, "img_in.proj.weight"),
        "wrong shape": ({**sd, "final_layer.linear.bias": torch.zeros(5)}, "shape mismatches"),
        "width not 128-aligned": ({**sd, "img_in.proj.weight": pe[:200]}, "multiple of the 128"),
        "2-D patch": ({**sd, "img_in.proj.weight": pe[:, :, 0]}, "not a 3-D"),
        "hunyuan 1.5": ({**sd, "byt5_in.fc1.weight": torch.zeros(2, 2)}, "1.5"),
        "diffusers q/k/v incomplete": ({k: v for k, v in to_diffusers(sd).items()
                                        if k != "transformer_blocks.1.attn.to_k.weight"}, "incomplete"),
    }
    for what, (bad, msg) in cases.items():
        with pytest.raises(VideoForgeError, match=msg) as e:
            build_dit(bad, "broken_file.safetensors")
        assert "broken_file.safetensors" in str(e.value), what
        print(f"{what}: {e.value}")
    dit = build_dit(sd, "hy")
    x, t, txt, mask, pooled, guidance = _inputs()
    for bad, msg in (((x[:, :15], t, txt, mask, pooled, guidance), "16 input channels"),
                     ((x[..., :5], t, txt, mask, pooled, guidance), "divisible by the patch"),
                     ((x, t, txt, mask, pooled, None), "guidance-distilled"),
                     ((x, t, txt, mask * 0, pooled, guidance), "no valid text token")):
        with pytest.raises(VideoForgeError, match=msg):
            dit(*bad)
