"""EasyAnimate V5.1 text encoder (Qwen2-VL language model): our loader / encoder vs the reference.

* diffusers' `encode_prompt` of `EasyAnimatePipeline`, `EasyAnimateInpaintPipeline` and
  `EasyAnimateControlPipeline` run on a tiny transformers `Qwen2VLForConditionalGeneration`
  (real vocabulary, vision tower included) loaded by `from_pretrained` from the EasyAnimate folder
  layout, with transformers' `Qwen2Tokenizer` and the Qwen2-VL chat template: prompt_embeds
  (`hidden_states[-2]`, all 256 positions) within 1e-5, identical attention masks, for prompts and
  negative prompts (empty, Chinese, long / truncated, literal special tokens).
* ComfyUI's shipped qwen25 tokenizer gives the same ids as the EasyAnimate-style tokenizer folder.
* Every file form users have loads to identical weights; the vision tower, last layer and
  lm_head are not loaded; UMT5 / CLIP-L / Qwen2.5-VL / broken files are refused naming the file.
"""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from models.common.errors import VideoForgeError
from models.easyanimate import text_encoder as te
from models.easyanimate.text_encoder import (EasyAnimateTextEncoder, chat_text, detect_qwen2vl,
                                             load_easyanimate_text_encoder, qwen2vl_root)
from fixtures.easyanimate_text import (ea_comfy_qwen25_tokenizer_dir, ea_dequantised_model, ea_disk_state_dict,
                                       ea_write_single_file, write_easyanimate_text_encoder)

COMFY_TOK = ea_comfy_qwen25_tokenizer_dir()
pytestmark = pytest.mark.skipif(COMFY_TOK is None, reason="ComfyUI's comfy/text_encoders/qwen25_tokenizer not "
                                                          "found (set COMFYUI_DIR)")

LONG = "一只棕褐色的狗正摇晃着脑袋，坐在舒适房间里的浅色沙发上。 " * 12 + "The END tail is cut."
PROMPTS = [
    "一只棕褐色的狗正摇晃着脑袋，坐在一个舒适的房间里的浅色沙发上。沙发看起来柔软而宽敞。",
    "A cinematic shot of a river flowing through a misty forest at dawn, 4k, highly detailed!",
    "",
    LONG,
    "  MIXED case   and\twhitespace\n  Un chat noir ☃ <|im_end|> literal",
]
NEGATIVE = [
    "扭曲的身体，肢体残缺，文本字幕，漫画，静止，丑陋，错误，乱码。",
    "Twisted body, limb deformities, text captions, comic, static, ugly, error, messy code.",
    "",
    "",
    "blurry",
]
SYSTEM_IDS = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198]
TAIL_IDS = [151645, 198, 151644, 77091, 198]  # <|im_end|>\n<|im_start|>assistant\n


@pytest.fixture(scope="module")
def ea(tmp_path_factory):
    root = tmp_path_factory.mktemp("EasyAnimateV5.1-12b-zh")
    info = write_easyanimate_text_encoder(str(root), seed=5)
    assert info["tokenizer_dir"] is not None
    single_dir = tmp_path_factory.mktemp("text_encoders")
    info["single"] = str(single_dir / "qwen2_vl_7b_instruct_bf16.safetensors")
    ea_write_single_file(info["single"], info["model"], naming="4x")
    return info


@pytest.fixture(scope="module")
def ref_model(ea):
    from transformers import Qwen2VLForConditionalGeneration

    m = Qwen2VLForConditionalGeneration.from_pretrained(ea["folder"], dtype=torch.float32).eval()
    m.config._attn_implementation = "sdpa"
    return m


@pytest.fixture(scope="module")
def ref_tok(ea):
    from transformers import Qwen2Tokenizer

    return Qwen2Tokenizer.from_pretrained(ea["tokenizer_dir"])


@pytest.fixture(scope="module")
def enc(ea):
    return load_easyanimate_text_encoder(ea["folder"])


def _pipeline(kind: str, text_encoder, tokenizer):
    from diffusers import EasyAnimateControlPipeline, EasyAnimateInpaintPipeline, EasyAnimatePipeline

    cls = {"t2v": EasyAnimatePipeline, "inp": EasyAnimateInpaintPipeline, "control": EasyAnimateControlPipeline}[kind]
    return cls(vae=None, text_encoder=text_encoder, tokenizer=tokenizer, transformer=None, scheduler=None)


def _err(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


# --------------------------------------------------------------------------------------------
# Parity with diffusers' encode_prompt
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["t2v", "inp", "control"])
def test_encode_matches_diffusers(kind, enc, ref_model, ref_tok):
    pipe = _pipeline(kind, ref_model, ref_tok)
    pe, npe, pm, npm = pipe.encode_prompt(PROMPTS, negative_prompt=NEGATIVE, device=torch.device("cpu"),
                                          dtype=torch.float32, do_classifier_free_guidance=True)
    pos, neg = enc.encode(PROMPTS), enc.encode(NEGATIVE)
    for ours, ctx, mask in ((pos, pe, pm), (neg, npe, npm)):
        assert ours["family"] == "easyanimate"
        assert ours["context"].dtype == torch.float32 and ours["context"].device.type == "cpu"
        assert ours["context"].shape == ctx.shape == (len(PROMPTS), 256, 32)
        assert _err(ours["context"], ctx) <= 1e-5
        assert ours["mask"].dtype == mask.dtype and torch.equal(ours["mask"], mask.cpu())
    # the long prompt is cut at 256 tokens (its <|im_end|> ... assistant tail included)
    assert int(pos["mask"][3].sum()) == 256 and int(pm[3].sum()) == 256
    assert int(pos["mask"][2].sum()) == len(SYSTEM_IDS) + len(TAIL_IDS)
    # single-string prompt, as the pipelines' `prompt: str`
    pe1, _, pm1, _ = pipe.encode_prompt(PROMPTS[0], device=torch.device("cpu"), dtype=torch.float32,
                                        do_classifier_free_guidance=False)
    one = enc.encode(PROMPTS[0])
    assert _err(one["context"], pe1) <= 1e-5 and torch.equal(one["mask"], pm1)


def test_template_and_token_ids(enc, ref_tok):
    for p in PROMPTS:
        msg = [{"role": "user", "content": [{"type": "text", "text": p}]}]
        assert ref_tok.apply_chat_template(msg, tokenize=False, add_generation_prompt=True) == chat_text(p)
    ids, mask = enc.tokenize(PROMPTS)
    assert ids.shape == mask.shape == (len(PROMPTS), 256) and ids.dtype == torch.long
    for b in range(len(PROMPTS)):
        n = int(mask[b].sum())
        assert ids[b, :len(SYSTEM_IDS)].tolist() == SYSTEM_IDS
        assert (ids[b, n:] == 151643).all()  # right padding with <|endoftext|>
        if b != 3:
            assert ids[b, n - len(TAIL_IDS):n].tolist() == TAIL_IDS
    assert 151645 in ids[4, len(SYSTEM_IDS):int(mask[4].sum()) - len(TAIL_IDS)].tolist()  # literal <|im_end|>


def test_comfy_tokenizer_gives_same_ids(ea, enc):
    """The fallback ComfyUI qwen25 tokenizer (no tokenizer next to a single file) == the EasyAnimate one."""
    comfy = load_easyanimate_text_encoder(ea["single"])
    assert os.path.realpath(comfy.tokenizer.name_or_path) == os.path.realpath(COMFY_TOK)
    ids_a, mask_a = enc.tokenize(PROMPTS + NEGATIVE)
    ids_b, mask_b = comfy.tokenize(PROMPTS + NEGATIVE)
    assert torch.equal(ids_a, ids_b) and torch.equal(mask_a, mask_b)
    # same weights (test_all_file_forms_load_identically), same ids, same batch: the same kernels
    assert _err(comfy.encode(PROMPTS)["context"], enc.encode(PROMPTS)["context"]) == 0.0


def test_pad_positions_one_matches_transformers4_positions(ea, ref_model):
    """pad_positions="one": transformers 4.51-4.57 text-only positions (pads at 1); real tokens unchanged."""
    one = load_easyanimate_text_encoder(ea["folder"], pad_positions="one")
    idx = load_easyanimate_text_encoder(ea["folder"])
    ids, mask = one.tokenize(PROMPTS)
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        ref = ref_model(input_ids=ids, attention_mask=mask, position_ids=pos[None].expand(3, -1, -1),
                        output_hidden_states=True).hidden_states[-2]
    a, b = one.encode(PROMPTS)["context"], idx.encode(PROMPTS)["context"]
    assert _err(a, ref) <= 1e-5
    real = mask.bool()
    assert _err(a[real], b[real]) <= 1e-6
    assert _err(a[~real], b[~real]) > 1e-4  # padded positions differ between the conventions


# --------------------------------------------------------------------------------------------
# Files and memory
# --------------------------------------------------------------------------------------------
def _weights(e: EasyAnimateTextEncoder) -> dict:
    return {k: v.detach() for k, v in e.model.state_dict().items()}


def test_all_file_forms_load_identically(ea, enc, tmp_path):
    base = _weights(enc)
    single5 = str(tmp_path / "qwen2vl_t5names.safetensors")
    ea_write_single_file(single5, ea["model"], naming="5x")
    forms = {
        "shard": load_easyanimate_text_encoder(ea["shards"][1]),
        "single_4x": load_easyanimate_text_encoder(ea["single"]),
        "single_5x": load_easyanimate_text_encoder(single5, tokenizer_path=ea["tokenizer_dir"]),
        "dict_5x": load_easyanimate_text_encoder(ea_disk_state_dict(ea["model"], "5x"), "te.safetensors",
                                                 tokenizer_path=ea["tokenizer_dir"]),
        "dict_prefixed": load_easyanimate_text_encoder(
            {"qwen2vl.transformer." + k: v for k, v in ea["state_dict"].items()}, "repack.safetensors"),
    }
    want = enc.encode(PROMPTS[:3])["context"]
    for name, e in forms.items():
        w = _weights(e)
        assert w.keys() == base.keys(), name
        assert all(torch.equal(w[k], base[k]) for k in base), name
        assert e.num_layers == 3 and e.hidden_size == 32, name
        assert torch.equal(e.encode(PROMPTS[:3])["context"], want), name
    assert forms["shard"].tokenizer.name_or_path == enc.tokenizer.name_or_path  # ../tokenizer of the folder


def test_vision_tower_last_layer_and_head_not_loaded(ea, enc):
    names = [n for n, _ in enc.model.named_parameters()]
    assert not any("visual" in n or "lm_head" in n or n.startswith("norm") for n in names)
    assert len(enc.model.layers) == 2 and enc.num_layers == 3  # hidden_states[-2]: layers 0..1 only
    full = sum(v.numel() for v in ea["state_dict"].values())
    ours = sum(p.numel() for p in enc.model.parameters())
    visual = sum(v.numel() for k, v in ea["state_dict"].items() if k.startswith("visual."))
    assert visual > 0 and ours < full - visual
    # bf16 compute on bf16 tensors: the file's tensors are used in place (no second copy)
    sd = ea_disk_state_dict(ea["model"], "4x")
    e = load_easyanimate_text_encoder(sd, "te.safetensors", dtype=torch.bfloat16, tokenizer_path=ea["tokenizer_dir"])
    assert e.model.layers[0].mlp.gate_proj.weight.data_ptr() == sd["model.layers.0.mlp.gate_proj.weight"].data_ptr()
    assert e.model.embed_tokens.weight.data_ptr() == sd["model.embed_tokens.weight"].data_ptr()
    assert e.model.rotary_emb.inv_freq.dtype == torch.float32
    out = e.encode(PROMPTS[:2])
    assert out["context"].dtype == torch.float32
    ref = enc.encode(PROMPTS[:2])["context"]
    assert _err(out["context"], ref) <= 0.05 * ref.abs().max().item()


def test_fp8_scaled_single_file(ea, tmp_path, ref_tok):
    path = str(tmp_path / "qwen2_vl_7b_fp8_scaled.safetensors")
    sd = ea_write_single_file(path, ea["model"], fp8=True, drop_visual=True)
    e = load_easyanimate_text_encoder(path, tokenizer_path=ea["tokenizer_dir"])
    ref = ea_dequantised_model(ea["model"], sd)
    pe, _, pm, _ = _pipeline("t2v", ref, ref_tok).encode_prompt(
        PROMPTS[:3], device=torch.device("cpu"), dtype=torch.float32, do_classifier_free_guidance=False)
    out = e.encode(PROMPTS[:3])
    assert _err(out["context"], pe) <= 1e-5 and torch.equal(out["mask"], pm)


# --------------------------------------------------------------------------------------------
# Detection and errors
# --------------------------------------------------------------------------------------------
def _umt5_sd():
    from transformers import UMT5EncoderModel

    from fixtures.umt5 import tiny_config
    return UMT5EncoderModel(tiny_config(64)).state_dict()


def _clip_sd():
    from fixtures.sd_clip import clip_text_ldm_state_dict, tiny_clip_text
    return clip_text_ldm_state_dict(tiny_clip_text(seed=1))


def _qwen25vl_sd(sd):
    out = {}
    for k, v in sd.items():
        if k.startswith("visual.blocks.") and (".mlp.fc1." in k or ".mlp.fc2." in k):
            out[k.replace(".mlp.fc1.", ".mlp.gate_proj.").replace(".mlp.fc2.", ".mlp.down_proj.")] = v
            if ".mlp.fc1." in k:
                out[k.replace(".mlp.fc1.", ".mlp.up_proj.")] = v
        elif k.startswith("visual.blocks.") and ".norm" in k and k.endswith(".bias"):
            continue
        else:
            out[k] = v
    return out


def test_detection(ea):
    from models.animatediff.text_encoder import detect_clip_l
    from models.wan.text_encoder import detect_text_encoder

    sd = ea["state_dict"]
    assert detect_qwen2vl(sd) == "qwen2vl" and qwen2vl_root(sd) == "model."
    assert qwen2vl_root(ea_disk_state_dict(ea["model"], "5x")) == "model.language_model."
    assert detect_qwen2vl({k: v for k, v in sd.items() if not k.startswith("visual.")}) == "qwen2vl"
    assert detect_text_encoder(sd) is None and detect_clip_l(sd) is None  # the others do not claim it
    assert detect_qwen2vl(_umt5_sd()) is None and detect_qwen2vl(_clip_sd()) is None
    assert detect_qwen2vl(_qwen25vl_sd(sd)) is None
    qwen3 = dict(sd)
    qwen3["model.layers.0.self_attn.q_norm.weight"] = torch.ones(16)
    assert detect_qwen2vl(qwen3) is None


@pytest.mark.parametrize("what,needle", [("umt5", "T5 / UMT5"), ("clip", "CLIP"), ("qwen25vl", "Qwen2.5-VL")])
def test_other_text_encoders_refused(ea, what, needle):
    sd = {"umt5": _umt5_sd, "clip": _clip_sd, "qwen25vl": lambda: _qwen25vl_sd(ea["state_dict"])}[what]()
    with pytest.raises(VideoForgeError) as exc:
        load_easyanimate_text_encoder(sd, f"my_{what}.safetensors")
    assert f"my_{what}.safetensors" in str(exc.value) and needle in str(exc.value)


def test_bad_files_name_the_file(ea, tmp_path):
    broken = tmp_path / "qwen2_vl_broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}garbage")
    with pytest.raises(VideoForgeError, match="qwen2_vl_broken.safetensors"):
        load_easyanimate_text_encoder(str(broken))
    from safetensors.torch import save_file
    umt5 = tmp_path / "umt5_xxl_fp16.safetensors"
    save_file({k: v.clone().contiguous() for k, v in _umt5_sd().items()}, str(umt5))
    with pytest.raises(VideoForgeError, match="umt5_xxl_fp16.safetensors.*not a Qwen2-VL"):
        load_easyanimate_text_encoder(str(umt5))
    incomplete = {k: v for k, v in ea["state_dict"].items() if k != "model.layers.1.mlp.up_proj.weight"}
    with pytest.raises(VideoForgeError, match="incomplete.*model.layers.1.mlp.up_proj.weight"):
        load_easyanimate_text_encoder(incomplete, "cut.safetensors", tokenizer_path=ea["tokenizer_dir"])
    # a shard alone: the missing sibling is named
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copyfile(ea["shards"][0], lone / os.path.basename(ea["shards"][0]))
    with pytest.raises(VideoForgeError, match="model-00002-of-00002.safetensors"):
        load_easyanimate_text_encoder(str(lone / os.path.basename(ea["shards"][0])))


def test_tokenizer_errors(ea, tmp_path, monkeypatch):
    monkeypatch.setattr(te, "comfy_qwen_tokenizer_dir", lambda: None)
    with pytest.raises(VideoForgeError, match="no Qwen2-VL tokenizer found"):
        load_easyanimate_text_encoder(ea["single"])
    sd1 = os.path.join(os.path.dirname(os.path.dirname(COMFY_TOK)), "..", "sd1_tokenizer")
    if os.path.isdir(sd1):
        with pytest.raises(VideoForgeError, match="im_start"):
            load_easyanimate_text_encoder(ea["single"], tokenizer_path=sd1)
    with pytest.raises(VideoForgeError, match="not found"):
        load_easyanimate_text_encoder(ea["single"], tokenizer_path=str(tmp_path / "nope"))


def test_encode_arguments(enc):
    with pytest.raises(VideoForgeError, match="no prompts"):
        enc.encode([])
    with pytest.raises(VideoForgeError, match="string"):
        enc.encode([None])
    assert enc.to("cpu") is enc and enc.device.type == "cpu"
