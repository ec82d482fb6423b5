"""CLIP vision encoder: our loader (every file layout) vs transformers' CLIPVisionModel
`hidden_states[-2]`, an independent forward in official Wan's formulation on Wan key names,
preprocessing vs hand-written references of official Wan's and ComfyUI's, config inference for the
real towers, and clear errors for wrong files and images."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from models.common.checkpoint import load_state_dict
from models.common.clip_vision import (ClipVisionEncoder, detect_clip_vision, infer_config, load_clip_vision,
                                       preprocess)
from models.common.errors import VideoForgeError
from models.loader import identify, load_video_vae
from fixtures.clip_vision import CLIP_VISION_FORMATS, CLIP_VISION_TINY, write_clip_vision

# Official values, written out here on purpose (wan/modules/clip.py `_clip`, ComfyUI clip_preprocess).
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
TOKENS = (224 // CLIP_VISION_TINY["patch_size"]) ** 2 + 1
WIDTH = CLIP_VISION_TINY["hidden_size"]


def _images(n=2, h=96, w=136, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, c, generator=g)


def _wan_reference_pixels(images):
    """Official Wan `CLIPModel.visual` preprocessing, written independently: image in [-1, 1]
    ([3, H, W] per image), each interpolated as [1, 3, H, W] bicubic to 224 (align_corners=False),
    mapped back with mul(0.5).add(0.5), then Normalize(mean, std)."""
    out = []
    for img in images:  # [H, W, 3] in 0..1
        x = img.permute(2, 0, 1).sub(0.5).div(0.5)  # TF.to_tensor(img).sub_(0.5).div_(0.5)
        u = x[:, None]  # [3, 1, H, W]  (img[:, None, :, :])
        out.append(F.interpolate(u.transpose(0, 1), size=(224, 224), mode="bicubic", align_corners=False))
    x = torch.cat(out).mul(0.5).add(0.5)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("clip_vision")
    return {fmt: write_clip_vision(str(d / name), fmt=fmt, seed=3) for fmt, name in CLIP_VISION_FORMATS.items()}


def _reference(info, pixels):
    with torch.no_grad():
        out = info["model"](pixel_values=pixels, output_hidden_states=True)
    return out.hidden_states, out.last_hidden_state


@pytest.mark.parametrize("fmt", ["comfy", "wan", "open_clip"])
def test_parity_fp32(files, fmt):
    info = files[fmt]
    enc = load_clip_vision(info["path"], dtype=torch.float32)
    assert isinstance(enc, ClipVisionEncoder) and enc.family == "clip_vision"
    assert enc.hidden_size == WIDTH and enc.num_layers == 3 and enc.image_size == 224
    assert enc.config.num_attention_heads == 4 and enc.config.hidden_act == "gelu"
    assert enc.name == os.path.basename(info["path"]) and enc.projection_dim == CLIP_VISION_TINY["projection_dim"]
    images = _images()
    out = enc.encode(images)
    hs, last = _reference(info, preprocess(images, 224))
    assert len(hs) == 4  # embeddings + 3 blocks
    assert out.shape == (2, TOKENS, WIDTH) and out.dtype == torch.float32
    err = (out - hs[-2]).abs().max().item()
    print(f"{fmt}: penultimate max abs err {err:.2e} (|ref| max {hs[-2].abs().max().item():.2f})")
    assert err <= 1e-4
    assert (hs[-2] - hs[-1]).abs().max().item() > 0.1  # the test can tell the blocks apart
    full = enc.encode(images, penultimate=False)
    err_last = (full - last).abs().max().item()
    print(f"{fmt}: last block max abs err {err_last:.2e}")
    assert err_last <= 1e-4
    # the projection is kept in transformers orientation [projection_dim, hidden]
    torch.testing.assert_close(enc.projection, info["model"].visual_projection.weight.detach(), rtol=0, atol=0)


def _wan_visual_forward(sd, pixels):
    """Official Wan `VisionTransformer.forward(x, use_31_block=True)` on Wan key names, written
    independently of the loader: conv (no bias), cls token, pos embedding, pre_norm, blocks[:-1] with
    to_qkv viewed as [b, s, 3, heads, head_dim], exact gelu MLP (mlp.0 / mlp.2)."""
    W = {k: v.float() for k, v in sd.items() if k.startswith("visual.")}
    heads = CLIP_VISION_TINY["num_attention_heads"]
    x = F.conv2d(pixels, W["visual.patch_embedding.weight"], stride=CLIP_VISION_TINY["patch_size"])
    x = x.flatten(2).permute(0, 2, 1)
    b, _, c = x.shape
    x = torch.cat([W["visual.cls_embedding"].expand(b, -1, -1), x], dim=1) + W["visual.pos_embedding"]
    x = F.layer_norm(x, (c,), W["visual.pre_norm.weight"], W["visual.pre_norm.bias"], 1e-5)
    n_blocks = 1 + max(int(k.split(".")[2]) for k in W if k.startswith("visual.transformer."))
    for i in range(n_blocks - 1):
        p = f"visual.transformer.{i}."
        h = F.layer_norm(x, (c,), W[p + "norm1.weight"], W[p + "norm1.bias"], 1e-5)
        s = h.shape[1]
        q, k, v = F.linear(h, W[p + "attn.to_qkv.weight"], W[p + "attn.to_qkv.bias"]).view(
            b, s, 3, heads, c // heads).unbind(2)
        a = torch.softmax(torch.einsum("bind,bjnd->bnij", q, k) * (c // heads) ** -0.5, dim=-1)
        o = torch.einsum("bnij,bjnd->bind", a, v).reshape(b, s, c)
        x = x + F.linear(o, W[p + "attn.proj.weight"], W[p + "attn.proj.bias"])
        h = F.layer_norm(x, (c,), W[p + "norm2.weight"], W[p + "norm2.bias"], 1e-5)
        x = x + F.linear(F.gelu(F.linear(h, W[p + "mlp.0.weight"], W[p + "mlp.0.bias"])),
                         W[p + "mlp.2.weight"], W[p + "mlp.2.bias"])
    return x


def test_official_wan_file_matches_wan_formulation(files):
    """Official file + official preprocessing, end to end, against Wan's own formulation."""
    info = files["wan"]
    enc = load_clip_vision(info["path"], dtype=torch.float32)
    images = _images(n=2, h=180, w=120, seed=1)
    ref = _wan_visual_forward(info["file_state_dict"], _wan_reference_pixels(images))
    out = enc.encode(images)
    err = (out - ref).abs().max().item()
    print(f"wan file vs Wan formulation: max abs err {err:.2e}")
    assert err <= 1e-4


@pytest.mark.parametrize("hw", [(96, 136), (300, 200), (224, 224), (31, 47)])
def test_preprocess_matches_official_wan(hw):
    images = _images(n=3, h=hw[0], w=hw[1], seed=2)
    ours = preprocess(images, 224)  # crop="none" is the default
    ref = _wan_reference_pixels(images)
    assert ours.shape == (3, 3, 224, 224) and ours.dtype == torch.float32
    err = (ours - ref).abs().max().item()
    # the same operation without Wan's [-1, 1] round trip: equal up to float rounding
    x = F.interpolate(images.permute(0, 3, 1, 2), size=(224, 224), mode="bicubic", align_corners=False)
    plain = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    err_plain = (ours - plain).abs().max().item()
    print(f"preprocess {hw}: max abs err vs official Wan {err:.2e}, vs plain 0..1 interpolation {err_plain:.2e}")
    assert err <= 1e-6 and err_plain <= 1e-5
    if hw == (224, 224):  # same size: only the normalisation
        manual = (images.permute(0, 3, 1, 2) - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
        assert (ours - manual).abs().max().item() <= 1e-6


def _comfy_center_reference(images, size=224):
    """ComfyUI clip_preprocess(crop=True), written independently: short side to `size` (bicubic,
    antialias), centre crop, 8-bit rounding, normalise."""
    x = images.permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        f = size / min(h, w)
        nh, nw = round(f * h), round(f * w)
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True)
        t, l = (nh - size) // 2, (nw - size) // 2
        x = x[:, :, t:t + size, l:l + size]
    x = torch.clip(x * 255.0, 0, 255).round() / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("hw", [(96, 136), (400, 250), (224, 224)])
def test_center_crop_matches_comfyui(hw):
    images = _images(n=2, h=hw[0], w=hw[1], seed=4)
    ours = preprocess(images, 224, crop="center")
    assert ours.shape == (2, 3, 224, 224)
    assert (ours - _comfy_center_reference(images)).abs().max().item() <= 1e-6
    if hw != (224, 224):  # really a different operation from the default
        assert (ours - preprocess(images, 224)).abs().max().item() > 1e-2


def test_crop_option_on_encoder(files):
    enc = load_clip_vision(files["comfy"]["path"], dtype=torch.float32)
    images = _images(h=120, w=200, seed=5)
    hs, _ = _reference(files["comfy"], _comfy_center_reference(images))
    assert (enc.encode(images, crop="center") - hs[-2]).abs().max().item() <= 1e-4
    enc_c = load_clip_vision(files["comfy"]["path"], dtype=torch.float32, crop="center")
    # the same weights, pixels and kernels, the crop chosen at load instead: bit-identical
    torch.testing.assert_close(enc_c.encode(images), enc.encode(images, crop="center"), rtol=0, atol=0)
    with pytest.raises(VideoForgeError, match="crop"):
        enc.encode(images, crop="left")


@pytest.mark.parametrize("fmt", ["comfy_fp16", "comfy_bf16"])
def test_half_precision_files(files, fmt):
    info = files[fmt]
    images = _images(seed=6)
    hs, _ = _reference(info, preprocess(images, 224))  # reference holds the file's rounded weights
    enc = load_clip_vision(info["path"])  # auto: float32 on CPU
    if not torch.cuda.is_available():
        assert enc.dtype == torch.float32
    enc.to("cpu", torch.float32)
    err32 = (enc.encode(images) - hs[-2]).abs().max().item()
    print(f"{fmt} file, fp32 compute: max abs err {err32:.2e}")
    assert err32 <= 1e-4
    # the file's own dtype as compute dtype: loose bound
    dt = torch.float16 if fmt == "comfy_fp16" else torch.bfloat16
    low = load_clip_vision(info["path"], dtype=dt)
    assert low.dtype == dt and low._vit.encoder.layers[0].mlp.fc1.weight.dtype == dt
    out = low.encode(images)
    assert out.dtype == torch.float32
    rel = ((out - hs[-2]).abs().max() / hs[-2].abs().max()).item()
    print(f"{fmt} file, {dt} compute: max rel err {rel:.2e}")
    assert rel <= (2e-2 if dt == torch.float16 else 6e-2)
    low.to(dtype=torch.float32)  # back to full precision in place
    assert (low.encode(images) - hs[-2]).abs().max().item() <= 1e-4


def test_zero_copy_and_position_ids(tmp_path):
    info = write_clip_vision(str(tmp_path / "clip_vision_h.safetensors"), "comfy", seed=7, position_ids=True)
    sd = load_state_dict(info["path"])
    assert "vision_model.embeddings.position_ids" in sd
    enc = load_clip_vision(sd, dtype=torch.float32, name="clip_vision_h.safetensors")
    w = enc._vit.encoder.layers[1].self_attn.q_proj.weight
    assert w.data_ptr() == sd["vision_model.encoder.layers.1.self_attn.q_proj.weight"].data_ptr()
    hs, _ = _reference(info, preprocess(_images(), 224))
    assert (enc.encode(_images()) - hs[-2]).abs().max().item() <= 1e-4

    wan = write_clip_vision(str(tmp_path / "wan.pth"), "wan", seed=7)
    sd = load_state_dict(wan["path"])
    enc = load_clip_vision(sd, dtype=torch.float32)
    qkv = sd["visual.transformer.0.attn.to_qkv.weight"]
    attn = enc._vit.encoder.layers[0].self_attn
    assert attn.q_proj.weight.data_ptr() == qkv.data_ptr()  # views of the stacked tensor
    assert attn.k_proj.weight.data_ptr() == qkv.data_ptr() + WIDTH * WIDTH * qkv.element_size()


def _assert_same_up_to_kernels(got, want):
    """The same computation through other fp32 kernels (another batch size, or the pixels in
    another memory layout, for which the CPU picks other GEMM / interpolation kernels): equal up
    to summation-order rounding, max abs difference <= 2e-6 * max |want| (measured <= 3.3e-7 of
    it on this 3-block tower with MKL limited to AVX2; other channel contents move the output by
    more than 1e-3, see the gray-vs-RGB check below)."""
    assert got.shape == want.shape
    err, scale = (got - want).abs().max().item(), want.abs().max().item()
    assert err <= 2e-6 * scale, f"max abs diff {err:.3g} > 2e-6 * max |ref| {scale:.3g}"


def test_image_channels(files):
    enc = load_clip_vision(files["comfy"]["path"], dtype=torch.float32)
    rgb = _images(n=2, seed=8)
    ref = enc.encode(rgb)
    # RGBA: alpha is ignored (ComfyUI's clip_preprocess does the same). The RGB view is
    # materialised by preprocess's first op in the same layout as plain RGB: the very same kernels
    # on the same numbers, bit-identical.
    rgba = torch.cat([rgb, torch.rand(2, rgb.shape[1], rgb.shape[2], 1)], dim=-1)
    torch.testing.assert_close(enc.encode(rgba), ref, rtol=0, atol=0)
    # grayscale: replicated to RGB; gray + alpha likewise. The replicated (expanded) view becomes
    # channels-first where a contiguous RGB copy stays channels-last: other kernels.
    gray = rgb[..., :1]
    want = enc.encode(gray.expand(-1, -1, -1, 3).contiguous())
    _assert_same_up_to_kernels(enc.encode(gray), want)
    _assert_same_up_to_kernels(enc.encode(torch.cat([gray, torch.ones_like(gray)], -1)), want)
    assert (want - ref).abs().max().item() > 1e-3
    # one image without the batch dimension (batch 1 against batch 2: other GEMM shapes)
    _assert_same_up_to_kernels(enc.encode(rgb[0]), ref[:1])
    # uint8 pixels: converted by the same float() / 255 as here, then the same kernels: bit-identical
    u8 = (rgb * 255).round().to(torch.uint8)
    torch.testing.assert_close(enc.encode(u8), enc.encode(u8.float() / 255), rtol=0, atol=0)
    with pytest.raises(VideoForgeError, match="channels-first"):
        enc.encode(rgb.permute(0, 3, 1, 2).contiguous())
    with pytest.raises(VideoForgeError, match="channels"):
        enc.encode(torch.rand(1, 8, 8, 5))
    with pytest.raises(VideoForgeError, match="IMAGE batch"):
        enc.encode(torch.rand(2, 1, 8, 8, 3))
    with pytest.raises(VideoForgeError, match="empty"):
        enc.encode(torch.rand(0, 8, 8, 3))


def test_identify_and_detect(files):
    for fmt, info in files.items():
        assert identify(info["file_state_dict"]) == ("a CLIP vision encoder", "clip_vision"), fmt
    assert detect_clip_vision(files["comfy"]["file_state_dict"]) == "transformers"
    assert detect_clip_vision(files["wan"]["file_state_dict"]) == "wan"
    assert detect_clip_vision(files["open_clip"]["file_state_dict"]) == "open_clip"
    # a diffusers image_encoder inside a pipeline-style dict, and a CLIPModel with a text tower
    sd = files["comfy"]["file_state_dict"]
    assert detect_clip_vision({"image_encoder." + k: v for k, v in sd.items()}) == "transformers"
    full = dict(sd, **{"text_model.embeddings.token_embedding.weight": torch.zeros(10, 4),
                       "text_projection.weight": torch.zeros(4, 4), "logit_scale": torch.tensor(1.0)})
    enc = load_clip_vision(full, dtype=torch.float32)
    assert enc.num_layers == 3
    # a bigger checkpoint that merely embeds a vision tower is not called a CLIP vision file
    big = {f"model.diffusion_model.x{i}.weight": torch.zeros(1) for i in range(2000)}
    big.update({"embedder." + k: v for k, v in sd.items()})
    assert detect_clip_vision(big) is None
    # a Wan DiT has patch_embedding.weight too, at its root
    assert detect_clip_vision({"patch_embedding.weight": torch.zeros(4, 3, 2, 2),
                               "head.modulation": torch.zeros(1), "cls_embedding": torch.zeros(1)}) is None


def _save(path, sd):
    from safetensors.torch import save_file
    save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(path))
    return str(path)


def test_wrong_files(files, tmp_path):
    z = torch.zeros(2, 2)
    vae = _save(tmp_path / "wan_2.1_vae.safetensors",
                {"encoder.conv1.weight": torch.zeros(96, 3, 3, 3, 3), "conv1.weight": torch.zeros(32, 32, 1, 1, 1),
                 "conv2.weight": torch.zeros(16, 16, 1, 1, 1), "decoder.conv1.weight": z,
                 "decoder.upsamples.0.residual.0.gamma": z, "decoder.head.2.weight": z})
    assert identify(load_state_dict(vae)) == ("a Wan2.1 VAE", "vae")
    with pytest.raises(VideoForgeError, match=r"wan_2\.1_vae\.safetensors: not a CLIP vision encoder: "
                                              r"this is a Wan2\.1 VAE: load it with Load Video VAE"):
        load_clip_vision(vae)
    dit = _save(tmp_path / "wan2.1_i2v.safetensors",
                {"model.diffusion_model.blocks.0.self_attn.q.weight": z,
                 "model.diffusion_model.head.modulation": z, "model.diffusion_model.patch_embedding.weight": z})
    with pytest.raises(VideoForgeError, match="Wan2.1 diffusion model: load it with Load Video Model"):
        load_clip_vision(dit)
    with pytest.raises(VideoForgeError, match="not a CLIP vision encoder"):
        load_clip_vision({"foo.weight": z})

    # a CLIP vision file handed to another loader names it
    with pytest.raises(VideoForgeError, match="is a CLIP vision encoder.*Load CLIP Vision"):
        load_video_vae(files["comfy"]["path"])

    sd = files["comfy"]["file_state_dict"]
    # truncated key set: the missing keys are named in the file's own naming
    part = {k: v for k, v in sd.items() if not k.startswith("vision_model.encoder.layers.1.mlp.fc2")}
    with pytest.raises(VideoForgeError, match=r"missing.*vision_model\.encoder\.layers\.1\.mlp\.fc2"):
        load_clip_vision(_save(tmp_path / "part.safetensors", part))
    wsd = files["wan"]["file_state_dict"]
    part = {k: v for k, v in wsd.items() if k != "visual.transformer.2.attn.to_qkv.bias"}
    with pytest.raises(VideoForgeError, match=r"visual\.transformer\.2\.attn\.to_qkv\.bias"):
        load_clip_vision(part)
    # a whole middle block gone
    part = {k: v for k, v in sd.items() if ".layers.1." not in k}
    with pytest.raises(VideoForgeError, match=r"missing.*layers\.1\."):
        load_clip_vision(part)
    # unknown key inside the vision tower
    extra = dict(sd, **{"vision_model.encoder.layers.0.self_attn.rel_bias": torch.zeros(4)})
    with pytest.raises(VideoForgeError, match=r"unexpected.*self_attn\.rel_bias"):
        load_clip_vision(extra)
    # shape mismatch, named
    bad = dict(sd)
    bad["vision_model.encoder.layers.2.mlp.fc1.weight"] = torch.zeros(300, WIDTH)
    with pytest.raises(VideoForgeError, match=r"shape.*layers\.2\.mlp\.fc1\.weight"):
        load_clip_vision(bad)
    bad = dict(wsd)
    bad["visual.transformer.1.attn.to_qkv.weight"] = torch.zeros(3 * WIDTH, WIDTH + 1)
    with pytest.raises(VideoForgeError, match=r"visual\.transformer\.1\.attn\.to_qkv\.weight"):
        load_clip_vision(bad)
    # not a square patch grid + class token
    bad = dict(sd)
    bad["vision_model.embeddings.position_embedding.weight"] = torch.zeros(TOKENS - 1, WIDTH)
    with pytest.raises(VideoForgeError, match="class token"):
        load_clip_vision(bad)
    with pytest.raises(VideoForgeError, match="not supported"):
        load_clip_vision(sd, dtype=torch.float8_e4m3fn)
    # truncated download
    data = open(files["comfy"]["path"], "rb").read()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoForgeError, match="truncated"):
        load_clip_vision(str(trunc))


def test_wrong_head_count_is_detectable(files):
    """The head count is not in the weights; a wrong one changes the output (so the parity tests
    above do check the inference rule)."""
    images = _images(seed=9)
    right = load_clip_vision(files["comfy"]["path"], dtype=torch.float32).encode(images)
    wrong = load_clip_vision(files["comfy"]["path"], dtype=torch.float32, num_heads=2).encode(images)
    assert (right - wrong).abs().max().item() > 1e-2
    act = load_clip_vision(files["comfy"]["path"], dtype=torch.float32, hidden_act="quick_gelu")
    assert (act.encode(images) - right).abs().max().item() > 1e-3


def _meta_tower(width, layers, patch, tokens, mlp):
    m = "meta"
    sd = {"embeddings.patch_embedding.weight": torch.empty(width, 3, patch, patch, device=m),
          "embeddings.position_embedding.weight": torch.empty(tokens, width, device=m)}
    for i in range(layers):
        sd[f"encoder.layers.{i}.mlp.fc1.weight"] = torch.empty(mlp, width, device=m)
    return sd


@pytest.mark.parametrize("name,width,layers,patch,tokens,mlp,heads,act,image", [
    ("ViT-H/14 (clip_vision_h, Wan)", 1280, 32, 14, 257, 5120, 16, "gelu", 224),
    ("ViT-L/14 (OpenAI)", 1024, 24, 14, 257, 4096, 16, "quick_gelu", 224),
    ("ViT-L/14-336", 1024, 24, 14, 577, 4096, 16, "quick_gelu", 336),
    ("ViT-bigG/14", 1664, 48, 14, 257, 8192, 16, "gelu", 224),
    ("ViT-B/32", 768, 12, 32, 50, 3072, 12, "quick_gelu", 224),
])
def test_config_inference_real_towers(name, width, layers, patch, tokens, mlp, heads, act, image):
    cfg = infer_config(_meta_tower(width, layers, patch, tokens, mlp), name)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.patch_size, cfg.image_size) == (width, layers, patch, image)
    assert (cfg.num_attention_heads, cfg.hidden_act, cfg.intermediate_size) == (heads, act, mlp)
    assert cfg.layer_norm_eps == 1e-5
    if width == 1280:  # Wan's CLIP-H: head width 80, 257 tokens
        assert width // cfg.num_attention_heads == 80
