"""HunyuanVideo text encoders (llava-llama-3 + CLIP-L): our loader / encoder vs diffusers.

* diffusers 0.42 `HunyuanVideoPipeline.encode_prompt` (`_get_llama_prompt_embeds` with the
  default template, crop 95, 256 tokens, `hidden_states[-3]`; `_get_clip_prompt_embeds`'
  `pooler_output`) on a tiny 4-layer transformers `LlamaModel` (real vocabulary size, GQA) and a
  tiny `CLIPTextModel`, with the REAL tokenizers: ComfyUI's shipped llama_tokenizer opened with
  transformers `AutoTokenizer` (as a hub folder would be) and the sd1 CLIP tokenizer. Our side
  loads the ComfyUI files (fp16, fp8 scaled old `scale_weight` / new `weight_scale` layouts, a
  per-row fp8 variant) through `load_hunyuan_text_encoder`, which builds only 2 of the 4 layers.
* The template / crop against diffusers' and ComfyUI's sources and the raw `tokenizers` library.
* Detection against Qwen2-VL / CLIP, errors for wrong files and a missing tokenizer.
"""
from __future__ import annotations

import ast
import logging
import os

import pytest
import torch

from models.common.errors import VideoForgeError
from models.hunyuan import text_encoder as te
from models.hunyuan.text_encoder import (CROP_START, PROMPT_TEMPLATE, HunyuanTextEncoder, detect_llama,
                                         llama_root, load_hunyuan_text_encoder, template_crop)
from fixtures.hunyuan_text import (HY_LLAMA_LAYOUTS, hy_comfy_dir, hy_dequantised_llama, hy_llama_state_dict,
                                   hy_llama_tokenizer_dir, hy_tiny_clip, hy_tiny_llama, hy_write_clip_l,
                                   hy_write_llama)

LLAMA_TOK = hy_llama_tokenizer_dir()
pytestmark = pytest.mark.skipif(LLAMA_TOK is None, reason="ComfyUI's comfy/text_encoders/llama_tokenizer not "
                                                          "found (set COMFYUI_DIR)")
CLIP_TOK = os.path.join(hy_comfy_dir(), "comfy", "sd1_tokenizer") if LLAMA_TOK else None

LONG = "A slow dolly shot along a neon street at night, rain on the asphalt, reflections. " * 20  # > 256 tokens
PROMPTS = [
    "A cat walks on the grass, realistic style.",
    "",
    LONG,
    "一只棕褐色的狗正摇晃着脑袋，坐在一个舒适的房间里的浅色沙发上。 Un chat noir ☃",
    "\nstarts with a newline and has a literal <|eot_id|> inside",
    "  MIXED case   and\twhitespace  ",
]
HEADER_USER = [128006, 882, 128007, 271]  # <|start_header_id|>user<|end_header_id|>\n\n

# Both sides run the same transformers Llama / CLIP layers on identical float32 weights (fp16
# rounded, or fp8 x scale computed in float32 on both sides). Ours runs only up to the batch's
# longest real sequence (not all 351 positions) and 2 layers instead of 4, so the GEMMs have other
# row counts: MKL / oneDNN may block them differently, which moves results by float32 rounding
# (~1e-7 relative). 1e-5 of the reference's largest magnitude leaves ~100x room for that and is
# still ~1000x below what a wrong layer (hidden_states[-2] / [-4]), a shifted crop or a missing
# fp8 scale changes (O(1) relative).
REL_TOL = 1e-5


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("text_encoders")
    llama, clip = hy_tiny_llama(seed=11), hy_tiny_clip(seed=12)
    out = {"llama": llama, "clip": clip, "clip_path": str(d / "clip_l.safetensors")}
    hy_write_clip_l(out["clip_path"], clip)
    for layout in HY_LLAMA_LAYOUTS:
        path = str(d / f"llava_llama3_{layout}.safetensors")
        sd = hy_write_llama(path, llama, layout, extra=True)
        out[layout] = (path, sd)
    return out


@pytest.fixture(scope="module")
def ref_tok():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(LLAMA_TOK)


@pytest.fixture(scope="module")
def ref_tok2():
    from transformers import CLIPTokenizer
    return CLIPTokenizer.from_pretrained(CLIP_TOK)


@pytest.fixture(scope="module")
def enc(files):
    return load_hunyuan_text_encoder(files["fp16"][0], files["clip_path"], "llava_llama3_fp16.safetensors")


def _reference(files, layout, ref_tok, ref_tok2, prompts):
    """diffusers' encode_prompt on the tiny reference models (weights as the `layout` file holds them)."""
    from diffusers import HunyuanVideoPipeline

    llama = files["llama"] if layout == "fp16" else hy_dequantised_llama(files["llama"], files[layout][1])
    pipe = HunyuanVideoPipeline(text_encoder=llama, tokenizer=ref_tok, transformer=None, vae=None, scheduler=None,
                                text_encoder_2=files["clip"], tokenizer_2=ref_tok2)
    log = logging.getLogger("diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video")
    level = log.level
    log.setLevel(logging.ERROR)  # its CLIP truncation warning prints every token of LONG
    try:
        with torch.no_grad():
            return pipe.encode_prompt(prompts, device=torch.device("cpu"), dtype=torch.float32)
    finally:
        log.setLevel(level)


def _rel(a, b) -> tuple[float, float]:
    err, scale = (a.float() - b.float()).abs().max().item(), b.float().abs().max().item()
    return err, scale


# --------------------------------------------------------------------------------------------
# Parity with diffusers
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", HY_LLAMA_LAYOUTS)
def test_encode_matches_diffusers(layout, files, ref_tok, ref_tok2):
    enc = load_hunyuan_text_encoder(files[layout][0], files["clip_path"], f"llava_llama3_{layout}.safetensors")
    pe, pooled, pm = _reference(files, layout, ref_tok, ref_tok2, PROMPTS)
    out = enc.encode(PROMPTS)
    assert set(out) == {"family", "context", "mask", "pooled"} and out["family"] == "hunyuan"
    assert out["context"].shape == pe.shape == (len(PROMPTS), 256, 256) and out["context"].dtype == torch.float32
    assert out["mask"].dtype == pm.dtype == torch.int64 and torch.equal(out["mask"], pm)
    assert out["pooled"].shape == pooled.shape == (len(PROMPTS), 32)
    valid = pm.bool()
    err, scale = _rel(out["context"][valid], pe[valid])
    perr, pscale = _rel(out["pooled"], pooled)
    print(f"\n[{layout}] context (valid tokens) max abs err {err:.3g} (max |ref| {scale:.3g}); "
          f"pooled max abs err {perr:.3g} (max |ref| {pscale:.3g})")
    assert err <= REL_TOL * scale and perr <= REL_TOL * pscale
    assert (out["context"][~valid] == 0).all()  # padded="zero"
    # 256-token cut: LONG fills all 256 (its <|eot_id|> cut), "" keeps only <|eot_id|>
    assert pm[2].sum() == 256 and pm[1].sum() == 1


def test_padded_compute_matches_diffusers_everywhere(files, ref_tok, ref_tok2):
    """padded="compute" runs all 95 + 256 positions: the pad-token states equal diffusers' too."""
    enc = load_hunyuan_text_encoder(files["fp16"][0], files["clip_path"], padded="compute")
    pe, _, pm = _reference(files, "fp16", ref_tok, ref_tok2, PROMPTS[:2])
    out = enc.encode(PROMPTS[:2])
    err, scale = _rel(out["context"], pe)
    print(f"\n[padded=compute] context (all 256 positions) max abs err {err:.3g} (max |ref| {scale:.3g})")
    assert err <= REL_TOL * scale and torch.equal(out["mask"], pm)


def test_single_prompt_and_batch_agree(enc):
    """A prompt alone = the same prompt in a batch (other GEMM shapes: same float32 bound)."""
    one = enc.encode(PROMPTS[0])
    many = enc.encode(PROMPTS)
    n = int(one["mask"].sum())
    err, scale = _rel(one["context"][0, :n], many["context"][0, :n])
    assert err <= REL_TOL * scale and torch.equal(one["mask"][0], many["mask"][0])
    perr, pscale = _rel(one["pooled"][0], many["pooled"][0])
    assert perr <= REL_TOL * pscale


# --------------------------------------------------------------------------------------------
# Template, crop, tokens
# --------------------------------------------------------------------------------------------
def _comfy_template() -> str:
    """`HunyuanVideoTokenizer.llama_template` read from ComfyUI's hunyuan_video.py (not imported)."""
    path = os.path.join(hy_comfy_dir(), "comfy", "text_encoders", "hunyuan_video.py")
    tree = ast.parse(open(path, encoding="utf-8").read())
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "HunyuanVideoTokenizer"):
        for node in ast.walk(cls):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Attribute) and t.attr == "llama_template"
                                                    for t in node.targets):
                return ast.literal_eval(node.value)
    raise AssertionError("llama_template not found in ComfyUI's hunyuan_video.py")


def test_template_and_crop(enc, ref_tok):
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    assert PROMPT_TEMPLATE == DEFAULT_PROMPT_TEMPLATE["template"] == _comfy_template()
    assert CROP_START == DEFAULT_PROMPT_TEMPLATE["crop_start"] == 95
    assert template_crop(enc.tokenizer) == template_crop(ref_tok) == enc.crop == 95
    prefix = enc.tokenizer(PROMPT_TEMPLATE.split("{}")[0])["input_ids"]
    assert prefix[:5] == [128000, 128006, 9125, 128007, 271] and prefix[-4:] == HEADER_USER
    assert enc.tokenizer("Hello world")["input_ids"] == [128000, 9906, 1917]  # Llama-3 byte-level ids


def test_token_ids_match_references(enc, ref_tok):
    """Our ids = diffusers' tokenizer call = the raw `tokenizers` library on tokenizer.json; kept span
    = prompt + <|eot_id|>, the same span ComfyUI's header search keeps."""
    import tokenizers

    ids, mask = enc.tokenize(PROMPTS)
    texts = [PROMPT_TEMPLATE.format(p) for p in PROMPTS]
    ref = ref_tok(texts, max_length=95 + 256, padding="max_length", truncation=True, return_tensors="pt")
    assert ids.shape == (len(PROMPTS), 351)
    assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"])
    raw = tokenizers.Tokenizer.from_file(os.path.join(LLAMA_TOK, "tokenizer.json"))
    for b, t in enumerate(texts):
        r = raw.encode(t).ids[:351]
        n = int(mask[b].sum())
        assert ids[b, :n].tolist() == r and (ids[b, n:] == 128258).all()  # right padding with <pad>
        if b != 2:  # LONG is cut before its <|eot_id|>
            assert ids[b, n - 1] == 128009
        if b in (0, 1, 3, 5):
            # ComfyUI's crop: from after <|start_header_id|>user<|end_header_id|> "\n\n" to after the
            # first <|eot_id|>: the same span as the fixed crop of 95 for ordinary prompts
            row = ids[b, :n].tolist()
            i = next(j for j in range(n - 2) if row[j:j + 3] == HEADER_USER[:3])
            start = i + 2 + (2 if row[i + 3] == 271 else 0)
            assert start == 95 and row.index(128009, start) + 1 == n
    # Edge cases where the fixed crop (diffusers, official, here) and ComfyUI's search differ: a
    # prompt starting with "\n" merges with the template's "\n\n" into one token (1432 "\n\n\n") at
    # position 94, which the crop drops; a literal <|eot_id|> in the prompt ends ComfyUI's span early.
    assert ids[4, 94] == 1432 and ids[4, 95] != 271
    prompt_ids = enc.tokenizer("A cat walks on the grass, realistic style.", add_special_tokens=False)["input_ids"]
    assert ids[0, 95:95 + len(prompt_ids) + 1].tolist() == prompt_ids + [128009]
    assert int(mask[0, 95:].sum()) == len(prompt_ids) + 1
    # CLIP: 77 ids, BOS ... EOS, padded with EOS (diffusers' tokenizer_2 call)
    cids = enc.clip_tokenize(PROMPTS)
    assert cids.shape == (len(PROMPTS), 77) and (cids[:, 0] == 49406).all()


# --------------------------------------------------------------------------------------------
# What is built
# --------------------------------------------------------------------------------------------
def test_builds_only_what_is_needed(files, enc):
    assert isinstance(enc, HunyuanTextEncoder) and enc.family == "hunyuan" and enc.ROLE == "text_encoder"
    assert enc.networks == [enc.llama, enc.clip.model]
    assert enc.llama.config.num_hidden_layers == 2 and len(enc.llama.layers) == 2 and enc.num_layers == 4
    assert isinstance(enc.llama.norm, torch.nn.Identity)
    names = set(dict(enc.llama.named_parameters()))
    assert not any(k.startswith(("lm_head", "vision", "multi_modal")) or "layers.2." in k for k in names)
    assert enc.llama.embed_tokens.weight.dtype == torch.float16  # storage kept, rows cast on use
    assert enc.dtype == torch.float32 and enc.llama.layers[0].input_layernorm.weight.dtype == torch.float32
    fp8 = load_hunyuan_text_encoder(files["fp8_old"][0], files["clip_path"])
    q = fp8.llama.layers[1].mlp.down_proj
    assert q.weight.dtype == torch.float8_e4m3fn and q.scale_weight is not None and q.scale_weight.dim() == 0
    # the fp16 file's tensors are used in place (memory-mapped, no copy)
    assert enc.llama.layers[0].self_attn.q_proj.weight.dtype == torch.float16


def test_compute_dtype_switch(files):
    """to(bf16) computes in bf16 (the Llama's fp16 / fp8 storage untouched); back to fp32 the Llama
    gives the same numbers as before (storage kept, norms re-cast from float32 copies: same kernels,
    same data, exact). CLIP-L's weights are cast like SDTextEncoder's, so its round trip re-rounds them."""
    enc = load_hunyuan_text_encoder(files["fp8_old"][0], files["clip_path"])
    before = enc.encode(PROMPTS[:2])
    enc.to(dtype=torch.bfloat16)
    assert enc.dtype == torch.bfloat16 and enc.clip.dtype == torch.bfloat16
    assert enc.llama.layers[0].self_attn.q_proj.weight.dtype == torch.float8_e4m3fn
    low = enc.encode(PROMPTS[:2])
    valid = before["mask"].bool()
    err, scale = _rel(low["context"][valid], before["context"][valid])
    perr, pscale = _rel(low["pooled"], before["pooled"])
    print(f"\n[bf16 vs fp32] context max abs err {err:.3g} (max |ref| {scale:.3g}); pooled {perr:.3g} "
          f"(max |ref| {pscale:.3g})")
    assert err <= 0.05 * scale and perr <= 0.05 * pscale  # bf16: 8-bit mantissa, measured ~1%
    enc.to(dtype=torch.float32)
    after = enc.encode(PROMPTS[:2])
    assert torch.equal(after["context"], before["context"])


# --------------------------------------------------------------------------------------------
# Detection and errors
# --------------------------------------------------------------------------------------------
def test_detection(files):
    from fixtures.easyanimate_text import ea_disk_state_dict, ea_tiny_qwen2vl
    from models.animatediff.text_encoder import detect_clip_l
    from models.common.checkpoint import load_state_dict
    from models.easyanimate.text_encoder import detect_qwen2vl

    for layout in HY_LLAMA_LAYOUTS:
        sd = load_state_dict(files[layout][0])
        assert detect_llama(sd) == "llama" and llama_root(sd) == "model."
        assert detect_qwen2vl(sd) is None and detect_clip_l(sd) is None
    for prefix in ("", "language_model.model.", "model.language_model."):
        assert llama_root(hy_llama_state_dict(files["llama"], "fp16", prefix=prefix)) == prefix
    qwen = ea_disk_state_dict(ea_tiny_qwen2vl(0))
    assert detect_qwen2vl(qwen) == "qwen2vl" and detect_llama(qwen) is None
    clip = load_state_dict(files["clip_path"])
    assert detect_llama(clip) is None and detect_clip_l(clip) is not None


def test_files_in_either_order_and_errors(files, enc, monkeypatch):
    from fixtures.easyanimate_text import ea_disk_state_dict, ea_tiny_qwen2vl

    swapped = load_hunyuan_text_encoder(files["clip_path"], files["fp16"][0])
    ids, mask = enc.tokenize(PROMPTS[:1])
    assert torch.equal(swapped.encode_ids(ids, mask)[0], enc.encode_ids(ids, mask)[0])  # same kernels, same data
    # ComfyUI's load_clip puts the header's quantisation metadata into the state dict as a string
    meta = dict(files["fp8_new"][1], _quantization_metadata='{"format_version": "1.0", "layers": {}}')
    ours = load_hunyuan_text_encoder(meta, files["clip_path"], "llava_llama3_fp8_scaled.safetensors")
    assert detect_llama(meta) == "llama" and ours.llama.layers[0].mlp.up_proj.scale_weight is not None
    with pytest.raises(VideoForgeError, match="CLIP text encoder"):
        load_hunyuan_text_encoder(files["clip_path"], files["clip_path"], "clip_l.safetensors")
    with pytest.raises(VideoForgeError, match="no CLIP-L"):
        load_hunyuan_text_encoder(files["fp16"][0], files["fp16"][0])
    with pytest.raises(VideoForgeError, match="Qwen2"):
        load_hunyuan_text_encoder(ea_disk_state_dict(ea_tiny_qwen2vl(0)), files["clip_path"], "qwen.safetensors")
    broken = dict(files["fp16"][1])
    del broken["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(VideoForgeError, match="model.layers.1.mlp.up_proj.weight"):
        load_hunyuan_text_encoder(broken, files["clip_path"], "broken.safetensors")
    two = {k: v for k, v in files["fp16"][1].items() if ".layers.2." not in k and ".layers.3." not in k}
    with pytest.raises(VideoForgeError, match="at least 3"):
        load_hunyuan_text_encoder(two, files["clip_path"], "short.safetensors")
    with pytest.raises(VideoForgeError, match="tokenizer.json"):
        load_hunyuan_text_encoder(files["fp16"][0], files["clip_path"], tokenizer_path=CLIP_TOK)
    monkeypatch.setattr(te, "comfy_llama_tokenizer_dir", lambda: None)
    with pytest.raises(VideoForgeError, match="no llava-llama-3 tokenizer found"):
        load_hunyuan_text_encoder(files["fp16"][0], files["clip_path"])
    with pytest.raises(VideoForgeError, match="prompt must be a string"):
        enc.encode([None])
