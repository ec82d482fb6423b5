"""UMT5 text encoder: our loader vs transformers' UMT5EncoderModel (and an independent forward in
Wan's own formulation for the official layout), tokenizer ids vs transformers' T5Tokenizer, and
clear errors for wrong files."""
from __future__ import annotations

import math
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from models.common.errors import VideoForgeError
from models.wan.text_encoder import (TEXT_LEN, UMT5Tokenizer, clean_prompt, detect_text_encoder,
                                     load_text_encoder)
from fixtures.umt5 import hf_reference_tokenizer, reference_model, train_spm, write_umt5

FORMATS = {"comfy": "umt5_xxl_fp16.safetensors",
           "comfy_fp8_scaled": "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
           "official": "models_t5_umt5-xxl-enc-bf16.pth"}

PROMPTS = [
    "A red cat sits on the soft mat near window 3.",
    "",
    "  Camera   pans slowly,\n soft light &amp; high detail, 4k.  ",
    # > 128 tokens: exercises the log-spaced relative position buckets
    " ".join(["The quick brown fox jumps over the lazy dog."] * 12),
    "视频生成模型 一只猫在草地上奔跑 ☃",
]


@pytest.fixture(scope="module", params=list(FORMATS))
def umt5_file(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    return request.param, write_umt5(str(d / FORMATS[request.param]), fmt=request.param, seed=1)


def _reference_context(info, prompts):
    """What diffusers' WanPipeline does: HF tokenizer, pad to 512, encoder with mask, trim, zero-pad."""
    tok = hf_reference_tokenizer(info["spm_bytes"])
    enc = tok([clean_prompt(p) for p in prompts], padding="max_length", max_length=TEXT_LEN,
              truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    ids, mask = enc.input_ids, enc.attention_mask
    seq_lens = mask.gt(0).sum(dim=1).long()
    model = reference_model(info)
    with torch.no_grad():
        h = model(ids, mask).last_hidden_state
    out = torch.stack([torch.cat([u[:v], u.new_zeros(TEXT_LEN - v, u.size(1))]) for u, v in zip(h, seq_lens)])
    return out, seq_lens


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def test_parity_fp32(umt5_file):
    fmt, info = umt5_file
    enc = load_text_encoder(info["path"], dtype=torch.float32)
    assert enc.config.num_layers == 2 and enc.config.d_model == 32 and enc.config.num_heads == 4
    ctx, lens = enc.encode(PROMPTS)
    ref, ref_lens = _reference_context(info, PROMPTS)
    assert ctx.shape == (len(PROMPTS), TEXT_LEN, 32) and ctx.dtype == torch.float32
    assert lens.tolist() == ref_lens.tolist()
    assert lens[1].item() == 1  # empty prompt -> just EOS
    for i, n in enumerate(lens.tolist()):
        err = _rel_err(ctx[i, :n], ref[i, :n])
        print(f"{fmt} prompt {i} len {n}: max rel err {err:.2e}")
        assert err <= 1e-4, (fmt, i, err)
        assert ctx[i, n:].abs().max().item() == 0.0
        assert ctx[i, :n].abs().amax(-1).min().item() > 0  # valid rows are not zero


def _wan_forward(sd, ids, mask):
    """Independent forward of Wan's own T5 encoder (wan/modules/t5.py semantics) on Wan key names,
    used to check our name conversion of the official file (gate/fc1/fc2 in particular)."""
    W = {k: v.float() for k, v in sd.items()}
    n_blocks = 1 + max(int(k.split(".")[1]) for k in W if k.startswith("blocks."))
    x = W["token_embedding.weight"][ids]
    b, L, _ = x.shape

    def norm(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    def gelu_tanh(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))

    rel = torch.arange(L)[None, :] - torch.arange(L)[:, None]  # key - query
    nb, maxd = 16, 128  # bidirectional: 32 buckets split in two
    bucket = (rel > 0).long() * nb
    r = rel.abs()
    exact = nb // 2
    large = exact + (torch.log(r.float().clamp_min(1) / exact) / math.log(maxd / exact) * (nb - exact)).long()
    bucket = bucket + torch.where(r < exact, r, large.clamp(max=nb - 1))
    for i in range(n_blocks):
        p = f"blocks.{i}."
        nh = W[p + "pos_embedding.embedding.weight"].shape[1]
        h = norm(x, W[p + "norm1.weight"])
        q, k, v = (F.linear(h, W[p + f"attn.{t}.weight"]).view(b, L, nh, -1) for t in "qkv")
        bias = W[p + "pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)[None]
        bias = bias.masked_fill(mask.view(b, 1, 1, L) == 0, torch.finfo(torch.float32).min)
        a = torch.softmax(torch.einsum("binc,bjnc->bnij", q, k) + bias, -1)
        x = x + F.linear(torch.einsum("bnij,bjnc->binc", a, v).reshape(b, L, -1), W[p + "attn.o.weight"])
        h = norm(x, W[p + "norm2.weight"])
        ff = F.linear(h, W[p + "ffn.fc1.weight"]) * gelu_tanh(F.linear(h, W[p + "ffn.gate.0.weight"]))
        x = x + F.linear(ff, W[p + "ffn.fc2.weight"])
    return norm(x, W["norm.weight"])


def test_official_matches_wan_formulation(tmp_path):
    info = write_umt5(str(tmp_path / FORMATS["official"]), fmt="official", seed=2)
    enc = load_text_encoder(info["path"], dtype=torch.float32)
    ctx, lens = enc.encode(PROMPTS)
    ids, lens2 = enc.tokenizer(PROMPTS)
    mask = (torch.arange(ids.shape[1])[None] < lens2[:, None]).long()
    ref = _wan_forward(info["file_state_dict"], ids, mask)
    for i, n in enumerate(lens.tolist()):
        err = _rel_err(ctx[i, :n], ref[i, :n])
        print(f"official vs Wan formulation prompt {i}: max rel err {err:.2e}")
        assert err <= 1e-4


def test_tokenizer_matches_transformers():
    spm_bytes = train_spm()
    ours = UMT5Tokenizer(spm_bytes=spm_bytes)
    ref = hf_reference_tokenizer(spm_bytes)
    texts = PROMPTS + ["Ein Hund läuft über die grüne Wiese.", "Ａｂｃ　１２３", "</s> literal <pad> tokens<unk>",
                       "tab\tand\nnewline", " ".join(["word"] * 700)]
    for t in texts:
        c = clean_prompt(t)
        want = ref(c, max_length=TEXT_LEN, truncation=True, add_special_tokens=True)["input_ids"]
        got = ours.encode(t)
        assert got == want, t[:40]
        assert got[-1] == 1 and len(got) <= TEXT_LEN
    assert len(ours.encode(" ".join(["word"] * 700))) == TEXT_LEN
    assert clean_prompt("  a &amp;amp; b\n\t c ") == "a & b c"


def test_tokenizer_path_and_missing_tokenizer(tmp_path):
    info = write_umt5(str(tmp_path / "a" / FORMATS["official"]), fmt="official", seed=3)
    moved = str(tmp_path / "b" / "umt5.pth")
    os.makedirs(os.path.dirname(moved))
    shutil.copy(info["path"], moved)
    with pytest.raises(VideoForgeError, match="google/umt5-xxl"):
        load_text_encoder(moved)
    enc = load_text_encoder(moved, dtype=torch.float32, tokenizer_path=info["tokenizer_dir"])
    assert enc.tokenizer.encode("hello") == UMT5Tokenizer(spm_bytes=info["spm_bytes"]).encode("hello")
    with pytest.raises(VideoForgeError, match="not found"):
        load_text_encoder(moved, tokenizer_path=str(tmp_path / "nope"))


def test_detect(tmp_path):
    for fmt in FORMATS:
        info = write_umt5(str(tmp_path / fmt / FORMATS[fmt]), fmt=fmt)
        assert detect_text_encoder(info["file_state_dict"]) == "umt5"
        prefixed = {"text_encoders.umt5xxl.transformer." + k: v for k, v in info["file_state_dict"].items()}
        assert detect_text_encoder(prefixed) == "umt5"
    assert detect_text_encoder({"decoder.upsamples.0.weight": torch.zeros(1)}) is None


def _save(path, sd):
    from safetensors.torch import save_file
    save_file({k: v.clone() for k, v in sd.items()}, str(path))
    return str(path)


def test_wrong_files(tmp_path):
    z = torch.zeros(2, 2)
    vae = _save(tmp_path / "wan_2.1_vae.safetensors",
                {"encoder.conv1.weight": z, "encoder.downsamples.0.residual.0.gamma": z,
                 "decoder.upsamples.0.residual.0.gamma": z, "conv1.weight": z})
    with pytest.raises(VideoForgeError, match="Load Video VAE"):
        load_text_encoder(vae)
    dit = _save(tmp_path / "wan2.1_t2v_1.3B.safetensors",
                {"model.diffusion_model.blocks.0.self_attn.q.weight": z,
                 "model.diffusion_model.head.modulation": z, "model.diffusion_model.patch_embedding.weight": z})
    with pytest.raises(VideoForgeError, match="Load Video Model"):
        load_text_encoder(dit)

    # T5 v1.1 (Flux t5xxl): relative attention bias only in block 0
    info = write_umt5(str(tmp_path / "u" / FORMATS["comfy"]), fmt="comfy")
    t5 = {k: v for k, v in info["file_state_dict"].items()
          if not k.startswith("encoder.block.1.layer.0.SelfAttention.relative_attention_bias")}
    with pytest.raises(VideoForgeError, match="UMT5-XXL"):
        load_text_encoder(_save(tmp_path / "t5xxl_fp16.safetensors", t5))

    # incomplete state dict (a weight missing)
    part = {k: v for k, v in info["file_state_dict"].items() if "wi_1" not in k}
    with pytest.raises(VideoForgeError, match="missing"):
        load_text_encoder(_save(tmp_path / "part.safetensors", part))

    # truncated download
    data = open(info["path"], "rb").read()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoForgeError, match="truncated"):
        load_text_encoder(str(trunc))


def test_low_precision_dtypes(tmp_path):
    info = write_umt5(str(tmp_path / FORMATS["comfy"]), fmt="comfy", seed=4)
    ref, _ = load_text_encoder(info["path"], dtype=torch.float32).encode(PROMPTS[:3])
    for dt, tol in ((torch.bfloat16, 5e-2), (torch.float16, 1e-2)):
        enc = load_text_encoder(info["path"], dtype=dt)
        if dt == torch.float16:  # transformers' _keep_in_fp32_modules = ["wo"]
            assert enc.model.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
        ctx, lens = enc.encode(PROMPTS[:3])
        assert ctx.dtype == dt
        err = _rel_err(ctx.float(), ref)
        print(f"{dt}: max rel err vs fp32 {err:.2e}")
        assert err < tol
        assert ctx[0, lens[0]:].abs().max().item() == 0.0


def test_tokenizer_json_folder_and_fp8_fp16(tmp_path):
    """A google/umt5-xxl folder with only tokenizer.json (the `tokenizers` backend) gives the same ids;
    the scaled-fp8 file dequantises straight into float16 with `wo` kept in float32."""
    spm_bytes = train_spm()
    folder = tmp_path / "tok"
    folder.mkdir()
    hf_reference_tokenizer(spm_bytes)._tokenizer.save(str(folder / "tokenizer.json"))
    from_json = UMT5Tokenizer.from_folder(str(folder))
    ours = UMT5Tokenizer(spm_bytes=spm_bytes)
    for t in PROMPTS + ["</s> x", " ".join(["word"] * 700)]:
        assert from_json.encode(t) == ours.encode(t)

    info = write_umt5(str(tmp_path / FORMATS["comfy_fp8_scaled"]), fmt="comfy_fp8_scaled", seed=5)
    enc = load_text_encoder(info["path"], dtype=torch.float16)
    ffn = enc.model.encoder.block[1].layer[1].DenseReluDense
    assert ffn.wo.weight.dtype == torch.float32 and ffn.wi_0.weight.dtype == torch.float16
    ref, _ = _reference_context(info, PROMPTS[:1])
    ctx, lens = enc.encode(PROMPTS[:1])
    assert _rel_err(ctx.float()[0, :lens[0]], ref[0, :lens[0]]) < 1e-2
    with pytest.raises(VideoForgeError, match="not supported"):
        load_text_encoder(info["path"], dtype=torch.int8)
