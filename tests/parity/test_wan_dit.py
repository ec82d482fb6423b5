"""Our Wan DiT, loaded from files in each real layout, against diffusers' WanTransformer3DModel."""
import pytest
import torch

from models.loader import load_video_model
from models.wan.convert import from_diffusers, to_diffusers
from tests_fixtures import write_wan_dit  # noqa: F401  (see conftest)


def _inputs(seed=0, b=2, f=3, h=8, w=12, text_dim=32, text_len=7):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 16, f, h, w, generator=g)
    t = torch.tensor([999.0, 412.5][:b])
    ctx = torch.randn(b, text_len, text_dim, generator=g)
    return x, t, ctx


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("layout", ["comfy", "official", "diffusers"])
def test_dit_matches_diffusers(tmp_path, layout):
    path = str(tmp_path / f"wan_{layout}.safetensors")
    ref = write_wan_dit(path, seed=1, layout=layout)
    model = load_video_model(path)
    assert model.variant == "t2v-dim256" and model.family == "wan"
    x, t, ctx = _inputs()
    # diffusers expects the text already padded to 512 tokens, as WanPipeline does.
    ctx512 = torch.cat([ctx, ctx.new_zeros(ctx.shape[0], 512 - ctx.shape[1], ctx.shape[2])], 1)
    with torch.no_grad():
        want = ref(x, t, ctx512, return_dict=False)[0]
    got = model.denoise(x, t / 1000, {"context": ctx})
    err = _rel(got, want)
    print(f"wan dit {layout}: max rel err {err:.2e}")
    assert err <= 1e-4


def test_key_mapping_round_trips():
    from tests_fixtures import reference_dit
    sd = reference_dit(0, image_dim=64, added_kv_proj_dim=256).state_dict()
    off = from_diffusers(sd)
    assert "img_emb.proj.1.weight" in off and "blocks.0.cross_attn.k_img.weight" in off
    assert "head.modulation" in off and "blocks.1.modulation" in off
    assert to_diffusers(off).keys() == sd.keys()


def test_fp8_storage_close_to_fp32(tmp_path):
    path = str(tmp_path / "wan.safetensors")
    write_wan_dit(path, seed=2)
    full, fp8 = load_video_model(path), load_video_model(path, dtype="fp8_e4m3fn")
    assert fp8.dit.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
    x, t, ctx = _inputs(1)
    a = full.denoise(x, t / 1000, {"context": ctx})
    b = fp8.denoise(x, t / 1000, {"context": ctx})
    # fp8 keeps ~2 significant digits per weight: close, but not equal.
    assert 0 < _rel(b, a) < 0.1


def test_collapsed_padding_equals_full_512_context(tmp_path):
    """Padding collapse (one key with a log-count bias) == attending all 512 padded tokens,
    also for a batch whose prompts have different lengths."""
    path = str(tmp_path / "wan.safetensors")
    write_wan_dit(path, seed=5)
    dit = load_video_model(path).dit
    x, t, _ = _inputs(2)
    g = torch.Generator().manual_seed(9)
    lens = torch.tensor([5, 12])
    full = torch.zeros(2, 512, 32)
    for i, n in enumerate(lens):
        full[i, :n] = torch.randn(int(n), 32, generator=g)
    with torch.no_grad():
        ref = dit(x, t, full)                                  # 512 tokens, no lengths
        got = dit(x, t, full[:, :12], context_lens=lens)       # collapsed
        ctx_c, bias = dit.text_context(full[:, :12], lens)
    assert ctx_c.shape[1] == 13 and bias is not None and torch.isinf(bias[0, 5:12]).all()
    assert _rel(got, ref) <= 1e-5
