"""SD1.5 CLIP-L text encoder: our loader / encoder vs the reference pipelines.

* diffusers' `encode_prompt` (AnimateDiffPipeline / StableDiffusionPipeline), reproduced with the
  same transformers `CLIPTokenizer` (ComfyUI's shipped sd1_tokenizer folder) and `CLIPTextModel`:
  `tokenizer(prompt, padding="max_length", max_length=77, truncation=True)`, `text_encoder(ids)[0]`;
  clip_skip via `hidden_states[-(n)]` + `final_layer_norm`.
* ComfyUI's own `SDTokenizer` / `SDClipModel` (run in a subprocess on the same tiny weights, skipped
  when ComfyUI is not installed or cannot be imported): token ids, long-prompt chunking, outputs.
* Every key layout users have, and clear errors for files that are not CLIP-L text encoders.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from models.animatediff import text_encoder as te
from models.animatediff.text_encoder import (CONTEXT_LEN, SDTextEncoder, detect_clip_l, is_clip_l,
                                             load_sd_text_encoder)
from models.common.checkpoint import load_state_dict
from models.common.clip_vision import detect_clip_vision
from models.common.errors import VideoForgeError
from models.wan.text_encoder import detect_text_encoder
from fixtures.sd_clip import (clip_text_ldm_state_dict, sd_clip_comfyui_dir, sd_clip_tokenizer_dir,
                              tiny_clip_text, tiny_clip_text_config, write_tiny_clip_l)

TOK_DIR = sd_clip_tokenizer_dir()
pytestmark = pytest.mark.skipif(TOK_DIR is None, reason="ComfyUI's comfy/sd1_tokenizer not found "
                                                       "(set COMFYUI_DIR)")

PROMPTS = [
    "a photo of an astronaut riding a horse on mars",
    "",
    "A cinematic shot of a river flowing through a misty forest at dawn, 4k, highly detailed!",
    "Un chat noir dort sur le canapé près de la fenêtre. 视频生成 ☃",
    "  MIXED case   and\twhitespace\n  ",
]
# 10 x 8 words + 9 commas = 89 tokens: two chunks (75 + 14)
LONG = ", ".join(["a red cat sits on the soft mat"] * 10)

LAYOUTS = {  # name -> (prefix, text_model level, expected detect_clip_l result)
    "sd15_ckpt": ("cond_stage_model.transformer.", True, "cond_stage_model.transformer.text_model."),
    "sd15_ckpt_old": ("cond_stage_model.transformer.", False, "cond_stage_model.transformer."),
    "clip_l": ("", True, "text_model."),
    "comfy_transformer": ("transformer.", True, "transformer.text_model."),
    "transformers5": ("", False, ""),
}


@pytest.fixture(scope="module")
def model():
    return tiny_clip_text(seed=3)


@pytest.fixture(scope="module")
def ref_tokenizer():
    from transformers import CLIPTokenizer
    return CLIPTokenizer.from_pretrained(TOK_DIR)


@pytest.fixture(scope="module")
def enc(model):
    return load_sd_text_encoder(clip_text_ldm_state_dict(model), "v1-5-pruned-emaonly.safetensors",
                                tokenizer_path=TOK_DIR)


def _assert_same_up_to_kernels(got, want) -> None:
    """The same rows computed in another batch (other GEMM shapes: the CPU's BLAS picks other
    kernels, summing in another order): max abs difference <= 2e-6 * max |want|. Measured up to
    1.9e-7 of max |want| (MKL in its generic code path), while cross-talk through batch padding
    or a misplaced chunk would change rows at the scale of the outputs."""
    assert got.shape == want.shape
    err, scale = (got - want).abs().max().item(), want.abs().max().item()
    assert err <= 2e-6 * scale, f"max abs diff {err:.3g} > 2e-6 * max |ref| {scale:.3g}"


def _diffusers_encode(model, tok, prompts, clip_skip=None):
    """diffusers `encode_prompt` (clip_skip in diffusers' numbering: layers skipped)."""
    ids = tok(prompts, padding="max_length", max_length=CONTEXT_LEN, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        if clip_skip is None:
            h = model(ids)[0]
        else:
            hs = model(ids, output_hidden_states=True)[-1]
            text = getattr(model, "text_model", model)
            h = text.final_layer_norm(hs[-(clip_skip + 1)])
    return h, ids


def test_diffusers_parity(model, ref_tokenizer, enc):
    ref, ref_ids = _diffusers_encode(model, ref_tokenizer, PROMPTS)
    ids = enc.tokenize(PROMPTS)
    assert ids.shape == (len(PROMPTS), 1, CONTEXT_LEN)
    assert torch.equal(ids[:, 0], ref_ids)
    assert ref_ids[1, :3].tolist() == [49406, 49407, 49407]  # empty prompt: BOS, EOS, pad = EOS
    out = enc.encode(PROMPTS)
    assert out["family"] == "sd15"
    ctx = out["context"]
    assert ctx.shape == (len(PROMPTS), CONTEXT_LEN, 32) and ctx.dtype == torch.float32
    assert ctx.device.type == "cpu"
    err = (ctx - ref).abs().max().item()
    print(f"diffusers parity: max abs err {err:.2e} (max |ref| {ref.abs().max().item():.2f})")
    assert err <= 1e-5
    # one prompt at a time gives the same rows (no cross-talk through batch padding)
    for i in (0, 1):
        _assert_same_up_to_kernels(enc.encode([PROMPTS[i]])["context"][0], ctx[i])


class _TextEncoderView:
    """What diffusers' encode_prompt touches on `self.text_encoder` (transformers 5's CLIPTextModel has
    no `.text_model` level any more; diffusers' clip_skip path still reads `text_model.final_layer_norm`)."""

    def __init__(self, m):
        self.m, self.config, self.dtype = m, m.config, m.dtype
        self.text_model = getattr(m, "text_model", m)

    def __call__(self, *a, **k):
        return self.m(*a, **k)


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_real_diffusers_encode_prompt(model, enc, clip_skip):
    """diffusers' own AnimateDiffPipeline.encode_prompt (called unbound: it only uses the tokenizer and
    the text encoder) with the runwayml SD1.5 tokenizer settings (model_max_length 77)."""
    from types import SimpleNamespace

    from diffusers import AnimateDiffPipeline
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(TOK_DIR, model_max_length=CONTEXT_LEN)
    pipe = SimpleNamespace(tokenizer=tok, text_encoder=_TextEncoderView(model), unet=None)
    pos, neg = AnimateDiffPipeline.encode_prompt(
        pipe, PROMPTS, torch.device("cpu"), 1, True, negative_prompt=[""] * len(PROMPTS),
        clip_skip=None if clip_skip == 1 else clip_skip - 1)
    ours = enc.encode(PROMPTS, clip_skip=clip_skip)["context"]
    err = (ours - pos).abs().max().item()
    print(f"diffusers AnimateDiffPipeline.encode_prompt, clip_skip={clip_skip}: max abs err {err:.2e}")
    assert err <= 1e-5
    # diffusers' negative prompt path (uncond tokens padded to the prompt length, 77). diffusers ignores
    # clip_skip there (always the last layer); ComfyUI's CLIPSetLastLayer applies to both prompts, as we do.
    assert (enc.encode([""], clip_skip=1)["context"][0] - neg[0]).abs().max().item() <= 1e-5


def test_pad_token_is_end_token(ref_tokenizer, enc):
    # the runwayml SD1.5 tokenizer diffusers uses and ComfyUI's sd1_tokenizer pad with <|endoftext|>
    assert ref_tokenizer.pad_token == "<|endoftext|>" and ref_tokenizer.pad_token_id == 49407
    assert enc.pad_id == enc.eos_id == 49407 and enc.bos_id == 49406


def test_long_prompt_chunks(model, ref_tokenizer, enc):
    toks = enc.token_ids(LONG)
    assert 75 < len(toks) <= 150
    ctx = enc.encode([LONG])["context"]
    assert ctx.shape == (1, 2 * CONTEXT_LEN, 32)
    # chunk 0 == the first 75 tokens alone == diffusers' (truncating) output of the long prompt
    first = ref_tokenizer.decode(toks[:75])
    alone = enc.encode([first])["context"]
    assert enc.token_ids(first) == toks[:75]
    _assert_same_up_to_kernels(ctx[:, :CONTEXT_LEN], alone)
    ref, _ = _diffusers_encode(model, ref_tokenizer, [LONG])
    assert (ctx[:, :CONTEXT_LEN] - ref).abs().max().item() <= 1e-5
    # chunk 1 == BOS + the remaining tokens + EOS, padded with EOS, through the reference model
    rest = toks[75:]
    ids = torch.tensor([[49406] + rest + [49407] * (CONTEXT_LEN - 1 - len(rest))])
    with torch.no_grad():
        ref1 = model(ids)[0]
    assert (ctx[:, CONTEXT_LEN:] - ref1).abs().max().item() <= 1e-5
    # a batch is padded to the same chunk count with empty-prompt chunks
    both = enc.encode([LONG, "a cat"])["context"]
    assert both.shape == (2, 2 * CONTEXT_LEN, 32)
    _assert_same_up_to_kernels(both[0], ctx[0])
    _assert_same_up_to_kernels(both[1, :CONTEXT_LEN], enc.encode(["a cat"])["context"][0])
    _assert_same_up_to_kernels(both[1, CONTEXT_LEN:], enc.encode([""])["context"][0])
    # exactly 75 tokens is still one chunk; 76 is two
    assert enc.tokenize([first]).shape[1] == 1
    assert enc.tokenize([ref_tokenizer.decode(toks[:76])]).shape[1] == 2


def test_clip_skip(model, ref_tokenizer, enc):
    ref2, _ = _diffusers_encode(model, ref_tokenizer, PROMPTS, clip_skip=1)  # diffusers 1 == ours 2
    out2 = enc.encode(PROMPTS, clip_skip=2)["context"]
    err = (out2 - ref2).abs().max().item()
    print(f"clip_skip=2 parity: max abs err {err:.2e}")
    assert err <= 1e-5
    assert (out2 - enc.encode(PROMPTS)["context"]).abs().max().item() > 1e-2  # really another layer
    assert torch.equal(enc.encode(PROMPTS, clip_skip=1)["context"], enc.encode(PROMPTS)["context"])
    for bad in (0, 3, -1, 1.5, True):
        with pytest.raises(VideoForgeError, match="clip_skip"):
            enc.encode(["x"], clip_skip=bad)
    e2 = load_sd_text_encoder(clip_text_ldm_state_dict(model), "m", tokenizer_path=TOK_DIR,
                              clip_skip=2)
    assert torch.equal(e2.encode(PROMPTS)["context"], out2)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layouts(tmp_path, model, enc, layout):
    prefix, text_model, root = LAYOUTS[layout]
    base = enc.encode(PROMPTS + [LONG])["context"]
    extra = {"model.diffusion_model.input_blocks.0.0.weight": torch.randn(8, 4, 3, 3),
             "first_stage_model.decoder.conv_in.weight": torch.randn(8, 4, 3, 3)} \
        if layout.startswith("sd15") else {}
    if layout == "clip_l":  # ComfyUI's clip_l.safetensors / HF CLIPModel extras
        extra = {"text_projection.weight": torch.randn(32, 32), "logit_scale": torch.tensor(4.6)}
    for ext, pos in ((".safetensors", False), (".ckpt", True)):
        path = str(tmp_path / f"{layout}{ext}")
        write_tiny_clip_l(path, seed=3, prefix=prefix, text_model=text_model, position_ids=pos, extra=extra)
        sd = load_state_dict(path)
        assert detect_clip_l(sd) == root and is_clip_l(sd)
        assert detect_clip_vision(sd) is None and detect_text_encoder(sd) is None
        e = load_sd_text_encoder(sd, os.path.basename(path), tokenizer_path=TOK_DIR)
        assert isinstance(e, SDTextEncoder) and e.family == "sd15" and e.root == root
        assert e.config.hidden_act == "quick_gelu" and e.config.vocab_size == 49408
        assert e.config.num_hidden_layers == 2 and e.config.intermediate_size == 37
        assert torch.equal(e.encode(PROMPTS + [LONG])["context"], base), (layout, ext)


def test_config_inference_clip_l_shapes():
    # the real CLIP-L shapes on the meta device: 768 wide -> 12 heads, 12 layers, 3072 MLP, quick_gelu
    from transformers import CLIPTextModel

    cfg = tiny_clip_text_config(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12)
    with torch.device("meta"):
        sd = clip_text_ldm_state_dict(CLIPTextModel(cfg))
    root = detect_clip_l(sd)
    cfg = te.infer_config(sd, root)  # no num_heads: 768 / 64
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers, cfg.intermediate_size,
            cfg.hidden_act, cfg.vocab_size, cfg.max_position_embeddings) == \
        (768, 12, 12, 3072, "quick_gelu", 49408, 77)


def test_rejects_other_files(tmp_path, model):
    from fixtures.clip_vision import write_clip_vision
    from fixtures.umt5 import random_weights, tiny_config

    for fmt in ("comfy", "open_clip", "wan"):
        info = write_clip_vision(str(tmp_path / f"cv_{fmt}.pth"), fmt=fmt)
        assert detect_clip_l(info["file_state_dict"]) is None, fmt
        with pytest.raises(VideoForgeError, match=f"cv_{fmt}.pth"):
            load_sd_text_encoder(info["file_state_dict"], f"cv_{fmt}.pth", tokenizer_path=TOK_DIR)
    umt5 = random_weights(tiny_config(150), seed=0)
    assert detect_text_encoder(umt5) == "umt5" and detect_clip_l(umt5) is None
    with pytest.raises(VideoForgeError, match="umt5_xxl_fp16.safetensors.*T5"):
        load_sd_text_encoder(umt5, "umt5_xxl_fp16.safetensors", tokenizer_path=TOK_DIR)
    with pytest.raises(VideoForgeError, match="junk.safetensors.*no CLIP-L"):
        load_sd_text_encoder({"foo.weight": torch.zeros(2, 2)}, "junk.safetensors", tokenizer_path=TOK_DIR)
    # a truncated text model: detected, then refused with the missing key named
    sd = clip_text_ldm_state_dict(model)
    del sd["cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.weight"]
    with pytest.raises(VideoForgeError, match=r"broken.ckpt.*layers\.1\.mlp\.fc2\.weight"):
        load_sd_text_encoder(sd, "broken.ckpt", tokenizer_path=TOK_DIR)
    sd = clip_text_ldm_state_dict(model)
    sd["cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc2.weight"] = torch.zeros(32, 36)
    with pytest.raises(VideoForgeError, match="shape"):
        load_sd_text_encoder(sd, "bad_shape.safetensors", tokenizer_path=TOK_DIR)
    # head count: width // 64 (test widths below 64: // 16); otherwise it must be given
    odd = clip_text_ldm_state_dict(tiny_clip_text(seed=1, hidden_size=40, num_attention_heads=2))
    with pytest.raises(VideoForgeError, match="odd.safetensors.*num_heads"):
        load_sd_text_encoder(odd, "odd.safetensors", tokenizer_path=TOK_DIR)
    assert load_sd_text_encoder(odd, "odd.safetensors", tokenizer_path=TOK_DIR, num_heads=2).config.hidden_size == 40
    with pytest.raises(VideoForgeError, match="num_heads"):
        load_sd_text_encoder(clip_text_ldm_state_dict(model), "m", tokenizer_path=TOK_DIR, num_heads=3)
    e4 = load_sd_text_encoder(clip_text_ldm_state_dict(model), "m", tokenizer_path=TOK_DIR, num_heads=4)
    assert e4.config.num_attention_heads == 4


def test_tokenizer_lookup(monkeypatch, tmp_path, model):
    sd = clip_text_ldm_state_dict(model)
    # default: ComfyUI's comfy/sd1_tokenizer through importlib.util.find_spec("comfy")
    monkeypatch.syspath_prepend(sd_clip_comfyui_dir())
    assert os.path.samefile(te.comfy_tokenizer_dir(), TOK_DIR)
    e = load_sd_text_encoder(sd, "m.safetensors")
    assert e.tokenize(["a photo"])[0, 0, :4].tolist() == [49406, 320, 1125, 49407]
    monkeypatch.setattr(te, "comfy_tokenizer_dir", lambda: None)
    with pytest.raises(VideoForgeError, match="m.safetensors.*tokenizer_path"):
        load_sd_text_encoder(sd, "m.safetensors")
    with pytest.raises(VideoForgeError, match="not found"):
        load_sd_text_encoder(sd, "m.safetensors", tokenizer_path=str(tmp_path / "nope"))
    with pytest.raises(VideoForgeError, match="vocab.json"):
        load_sd_text_encoder(sd, "m.safetensors", tokenizer_path=str(tmp_path))


def test_dtypes_and_zero_copy(model, ref_tokenizer):
    sd16 = clip_text_ldm_state_dict(model, dtype=torch.float16)
    ref16 = tiny_clip_text(seed=3)
    ref16.load_state_dict({k: v.to(torch.float16).float() for k, v in model.state_dict().items()})
    want, _ = _diffusers_encode(ref16, ref_tokenizer, PROMPTS)
    auto = load_sd_text_encoder(sd16, "fp16.safetensors", tokenizer_path=TOK_DIR)
    if not torch.cuda.is_available():
        assert auto.dtype == torch.float32
    assert (auto.encode(PROMPTS)["context"] - want).abs().max().item() <= 1e-5
    keep = load_sd_text_encoder(sd16, "fp16.safetensors", dtype="fp16", tokenizer_path=TOK_DIR)
    w = keep.model.state_dict()
    name = [k for k in w if k.endswith("encoder.layers.0.mlp.fc1.weight")][0]
    src = sd16["cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"]
    assert w[name].dtype == torch.float16 and w[name].data_ptr() == src.data_ptr()  # no second copy
    rel16 = ((keep.encode(PROMPTS)["context"] - want).abs().max() / want.abs().max()).item()
    print(f"fp16 compute: max rel err {rel16:.2e}")
    assert rel16 <= 1e-2
    bf = load_sd_text_encoder(sd16, "fp16.safetensors", dtype=torch.bfloat16, tokenizer_path=TOK_DIR)
    out = bf.encode(PROMPTS)["context"]
    assert bf.dtype == torch.bfloat16 and out.dtype == torch.float32
    rel = ((out - want).abs().max() / want.abs().max()).item()
    print(f"bf16 compute: max rel err {rel:.2e}")
    assert rel <= 0.1
    bf.to(torch.float32)  # cast in place (the bf16 rounding of the weights stays)
    assert bf.dtype == torch.float32
    assert ((bf.encode(PROMPTS)["context"] - want).abs().max() / want.abs().max()).item() <= 0.1
    # fp8 is a UNet storage choice (loader.load_checkpoint passes one dtype to all parts): "auto" here
    for d in ("fp8_e4m3fn", torch.float8_e4m3fn):
        e8 = load_sd_text_encoder(sd16, "x", dtype=d, tokenizer_path=TOK_DIR)
        assert e8.dtype == te.default_dtype(sd16)
    for d in ("int8", torch.float64, torch.int8):
        with pytest.raises(VideoForgeError, match="dtype"):
            load_sd_text_encoder(sd16, "x", dtype=d, tokenizer_path=TOK_DIR)


def test_fp8_scaled_file(model, ref_tokenizer):
    sd = clip_text_ldm_state_dict(model, prefix="")
    deq = {}
    for k in list(sd):
        if k.endswith(".weight") and ("_proj." in k or ".mlp.fc" in k):
            s = sd[k].abs().max() / 448.0
            q = (sd[k] / s).to(torch.float8_e4m3fn)
            sd[k], sd[k[:-len("weight")] + "scale_weight"] = q, s.reshape(1)
            deq[k] = q.float() * s
    ref = tiny_clip_text(seed=3)
    ref.load_state_dict({k: deq.get("text_model." + k.removeprefix("text_model."), v)
                         for k, v in model.state_dict().items()})
    want, _ = _diffusers_encode(ref, ref_tokenizer, PROMPTS)
    e = load_sd_text_encoder(sd, "clip_l_fp8_scaled.safetensors", dtype="fp32", tokenizer_path=TOK_DIR)
    assert (e.encode(PROMPTS)["context"] - want).abs().max().item() <= 1e-5


# --------------------------------------------------------------------------------------------
# ComfyUI's own tokenizer and CLIP (subprocess: ComfyUI's model_management has import-time state)
# --------------------------------------------------------------------------------------------
_COMFY_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    try:
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        import torch
        import comfy.sd1_clip as sd1
        from safetensors.torch import load_file, save_file
    except Exception as e:
        print("IMPORT-FAILED", repr(e)); sys.exit(3)
    cfg, prompts = json.load(open(sys.argv[3]))
    tok = sd1.SDTokenizer()
    clip = sd1.SDClipModel(textmodel_json_config=cfg, dtype=torch.float32)
    missing, unexpected = clip.load_sd(load_file(sys.argv[2]))
    assert not unexpected and all("text_projection" in k for k in missing), (missing, unexpected)
    out = {}
    for i, p in enumerate(prompts):
        t = tok.tokenize_with_weights(p)
        out[f"ids{i}"] = torch.tensor([[x[0] for x in chunk] for chunk in t])
        with torch.no_grad():
            clip.reset_clip_options()
            out[f"last{i}"] = clip.encode_token_weights(t)[0].float().contiguous()
            clip.set_clip_options({"layer": -2})
            out[f"pen{i}"] = clip.encode_token_weights(t)[0].float().contiguous()
    save_file(out, sys.argv[4])
    """)


@pytest.fixture(scope="module")
def comfy_outputs(model, tmp_path_factory):
    from safetensors.torch import load_file, save_file

    d = tmp_path_factory.mktemp("comfy_clip")
    save_file({k: v.contiguous() for k, v in clip_text_ldm_state_dict(model, prefix="").items()},
              str(d / "clip_l.safetensors"))
    c = model.config
    cfg = dict(num_hidden_layers=c.num_hidden_layers, hidden_size=c.hidden_size,
               num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
               hidden_act=c.hidden_act, max_position_embeddings=c.max_position_embeddings,
               eos_token_id=49407, vocab_size=c.vocab_size, projection_dim=c.hidden_size)
    prompts = [p for p in PROMPTS] + [LONG]
    (d / "in.json").write_text(json.dumps([cfg, prompts]))
    r = subprocess.run([sys.executable, "-c", _COMFY_SCRIPT, sd_clip_comfyui_dir(), str(d / "clip_l.safetensors"),
                        str(d / "in.json"), str(d / "out.safetensors")],
                       capture_output=True, text=True, timeout=300)
    if r.returncode == 3:
        pytest.skip(f"ComfyUI cannot be imported here: {r.stdout.strip()[-300:]}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return prompts, load_file(str(d / "out.safetensors"))


def test_comfyui_tokenizer_ids(enc, comfy_outputs):
    prompts, out = comfy_outputs
    for i, p in enumerate(prompts):
        assert torch.equal(enc.tokenize([p])[0], out[f"ids{i}"]), p[:40]
    assert out[f"ids{len(prompts) - 1}"].shape == (2, CONTEXT_LEN)


def test_comfyui_encoder_parity(enc, comfy_outputs):
    prompts, out = comfy_outputs
    worst = {"last": 0.0, "pen": 0.0}
    for i, p in enumerate(prompts):
        for kind, skip in (("last", 1), ("pen", 2)):
            ours = enc.encode([p], clip_skip=skip)["context"]
            assert ours.shape == out[f"{kind}{i}"].shape
            worst[kind] = max(worst[kind], (ours - out[f"{kind}{i}"]).abs().max().item())
    print(f"ComfyUI SDClipModel parity: max abs err last {worst['last']:.2e}, clip_skip=2 {worst['pen']:.2e}")
    assert worst["last"] <= 1e-5 and worst["pen"] <= 1e-5
