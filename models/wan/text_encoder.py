"""UMT5-XXL text encoder for Wan 2.x (encoder only), built on `transformers.UMT5EncoderModel`.

Accepted files (the layout is detected from the keys, not the file name):

* ComfyUI repackaged `umt5_xxl_fp16.safetensors` / `umt5_xxl_bf16.safetensors`: transformers T5 key
  names (`shared.weight`, `encoder.block.N.layer.0.SelfAttention.q.weight`, ...), a
  `relative_attention_bias` in every block (that is what makes it UMT5 and not T5 v1.1), and the
  SentencePiece model embedded as a uint8 tensor `spiece_model`.
* ComfyUI `umt5_xxl_fp8_e4m3fn_scaled.safetensors`: same names, linear weights stored as
  float8_e4m3fn with a per-layer `<layer>.scale_weight` and a `scaled_fp8` marker tensor.
  The weights are DEQUANTISED AT LOAD (`weight.float() * scale_weight`, then cast to the compute
  dtype), so the file saves disk space but not memory; outputs match ComfyUI's scaled-fp8 matmul up
  to the compute dtype's rounding.
* The official Wan `models_t5_umt5-xxl-enc-bf16.pth` (Wan key names: `token_embedding.weight`,
  `blocks.N.attn.q.weight`, `blocks.N.ffn.gate.0.weight`, ...), converted to transformers names.
  It holds no tokenizer: a `google/umt5-xxl` folder (`spiece.model` or `tokenizer.json`) next to
  the file, or `tokenizer_path=`, is required.
* A transformers / diffusers `text_encoder` folder of safetensors shards (same names as ComfyUI's
  file); the tokenizer is looked up in a sibling `tokenizer/` folder.

Precision: UMT5 activations overflow float16 (the feed-forward outputs of the XXL model exceed
65504), so the default compute dtype is bfloat16 on CUDA and float32 on CPU. float16 can still be
asked for; then, like transformers' `_keep_in_fp32_modules`, the feed-forward output projections
(`wo`) stay in float32 and transformers clamps the residual stream.

Output (`encode`): exactly what diffusers' `WanPipeline._get_t5_prompt_embeds` gives the DiT:
`[B, 512, d_model]` where every position at or after the prompt's real token count (EOS included)
is zero. The encoder itself runs on the batch's longest real length with an attention mask; padded
keys are masked out, so the valid positions equal a run over the full 512-token padded batch.
"""
from __future__ import annotations

import html
import os
import re
from typing import Iterable

import torch
from torch import nn

from ..common.checkpoint import load_state_dict, strip_prefix
from ..common.errors import VideoForgeError

TEXT_LEN = 512
_SPECIAL = ("<pad>", "</s>", "<unk>")
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in _SPECIAL) + ")")

# Prefixes a text-encoder state dict may carry when extracted from a bigger checkpoint.
_PREFIXES = (
    "text_encoders.umt5xxl.transformer.", "umt5xxl.transformer.", "text_encoders.umt5xxl.",
    "umt5xxl.", "text_encoder.", "transformer.", "model.",
)
_HF_PROBE = "encoder.block.0.layer.0.SelfAttention.q.weight"
_WAN_PROBE = "blocks.0.attn.q.weight"
_TOKENIZER_DIRS = ("google/umt5-xxl", "umt5-xxl", "umt5_xxl", "tokenizer", "../tokenizer", ".")


# --------------------------------------------------------------------------------------------
# Text cleaning (Wan's `clean='whitespace'`; diffusers' `prompt_clean`)
# --------------------------------------------------------------------------------------------
try:  # optional, exactly as Wan / diffusers
    import ftfy as _ftfy  # type: ignore
except Exception:  # noqa: BLE001
    _ftfy = None


def clean_prompt(text: str) -> str:
    """ftfy.fix_text (when installed), html-unescape twice, collapse whitespace, strip."""
    if _ftfy is not None:
        text = _ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------
class UMT5Tokenizer:
    """google/umt5-xxl tokenisation: cleaned text -> SentencePiece ids, EOS `</s>` appended, no BOS,
    truncated to `max_length` tokens (EOS kept as the last one, like transformers' truncation).

    Backed by `sentencepiece` (the `spiece_model` bytes / `spiece.model`) or, when a folder only has
    a `tokenizer.json`, by the `tokenizers` library with special tokens added by us.
    """

    def __init__(self, *, spm_bytes: bytes | None = None, tokenizer_json: str | None = None,
                 max_length: int = TEXT_LEN, source: str = ""):
        self.max_length = max_length
        self.source = source
        self._sp = None
        self._tk = None
        if spm_bytes is not None:
            import sentencepiece
            try:
                self._sp = sentencepiece.SentencePieceProcessor(model_proto=spm_bytes)
            except Exception as e:  # noqa: BLE001
                raise VideoForgeError(f"{source or 'tokenizer'}: not a valid SentencePiece model ({e}).") from e
            self.eos_id = int(self._sp.eos_id())
            self.pad_id = max(int(self._sp.pad_id()), 0)
            self.vocab_size = int(self._sp.get_piece_size())
        elif tokenizer_json is not None:
            from tokenizers import Tokenizer
            try:
                self._tk = Tokenizer.from_file(tokenizer_json)
            except Exception as e:  # noqa: BLE001
                raise VideoForgeError(f"{tokenizer_json}: not a valid tokenizer.json ({e}).") from e
            eos = self._tk.token_to_id("</s>")
            if eos is None:
                raise VideoForgeError(f"{tokenizer_json}: has no '</s>' token; expected the google/umt5-xxl tokenizer.")
            self.eos_id = int(eos)
            self.pad_id = int(self._tk.token_to_id("<pad>") or 0)
            self.vocab_size = int(self._tk.get_vocab_size(with_added_tokens=True))
        else:
            raise VideoForgeError("UMT5Tokenizer needs SentencePiece model bytes or a tokenizer.json file.")
        if self.eos_id < 0:
            raise VideoForgeError(f"{source or 'tokenizer'}: the SentencePiece model has no EOS id; "
                                  "expected the google/umt5-xxl spiece.model.")

    @classmethod
    def from_folder(cls, folder: str, max_length: int = TEXT_LEN) -> "UMT5Tokenizer":
        """A `google/umt5-xxl` folder (`spiece.model` preferred, else `tokenizer.json`), or a file."""
        if os.path.isfile(folder):
            if folder.endswith(".json"):
                return cls(tokenizer_json=folder, max_length=max_length, source=folder)
            with open(folder, "rb") as f:
                return cls(spm_bytes=f.read(), max_length=max_length, source=folder)
        spm = os.path.join(folder, "spiece.model")
        if os.path.isfile(spm):
            with open(spm, "rb") as f:
                return cls(spm_bytes=f.read(), max_length=max_length, source=spm)
        tj = os.path.join(folder, "tokenizer.json")
        if os.path.isfile(tj):
            return cls(tokenizer_json=tj, max_length=max_length, source=tj)
        raise VideoForgeError(f"{folder}: no spiece.model or tokenizer.json in this folder; expected the "
                              "files of the google/umt5-xxl tokenizer.")

    def _ids(self, text: str) -> list[int]:
        if self._sp is not None:
            # transformers matches the special tokens literally in the text before SentencePiece
            # runs; do the same so a literal "</s>" gives the EOS id as with the HF tokenizer.
            out: list[int] = []
            for part in _SPECIAL_RE.split(text):
                if part in _SPECIAL:
                    pid = self._sp.piece_to_id(part)
                    if pid != self._sp.unk_id() or part == "<unk>":
                        out.append(int(pid))
                        continue
                if part:
                    out.extend(self._sp.encode(part))
            return out
        return list(self._tk.encode(text, add_special_tokens=False).ids)

    def encode(self, text: str, clean: bool = True) -> list[int]:
        ids = self._ids(clean_prompt(text) if clean else text)
        return ids[: self.max_length - 1] + [self.eos_id]

    def __call__(self, texts: Iterable[str], clean: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (ids LongTensor [B, L] padded with pad id to the longest, lengths LongTensor [B])."""
        seqs = [self.encode(t, clean) for t in texts]
        length = max((len(s) for s in seqs), default=1)
        ids = torch.full((len(seqs), length), self.pad_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return ids, torch.tensor([len(s) for s in seqs], dtype=torch.long)


# --------------------------------------------------------------------------------------------
# Layout detection and conversion
# --------------------------------------------------------------------------------------------
def _strip(sd: dict) -> dict:
    if _HF_PROBE in sd or _WAN_PROBE in sd:
        return sd
    out = strip_prefix(sd, _PREFIXES)
    # keep an embedded tokenizer that sat outside the prefix
    for k, v in sd.items():
        if k.endswith("spiece_model") and "spiece_model" not in out:
            out = dict(out)
            out["spiece_model"] = v
    return out


def _layout(sd: dict) -> str | None:
    """'hf' (transformers/ComfyUI names), 'wan' (official Wan names) or None."""
    if _HF_PROBE in sd and "encoder.final_layer_norm.weight" in sd:
        return "hf"
    if _WAN_PROBE in sd and "blocks.0.ffn.gate.0.weight" in sd and "token_embedding.weight" in sd:
        return "wan"
    return None


def _num_blocks(sd: dict, prefix: str) -> int:
    idx = [int(k[len(prefix):].split(".", 1)[0]) for k in sd
           if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0].isdigit()]
    return max(idx) + 1 if idx else 0


def detect_text_encoder(sd: dict) -> str | None:
    """"umt5" for a UMT5 encoder state dict (ComfyUI fp16/bf16, ComfyUI scaled fp8, official Wan
    .pth, transformers names), None for anything else (T5 v1.1 XXL included: it has a relative
    attention bias only in block 0)."""
    sd = _strip(sd)
    lay = _layout(sd)
    if lay == "hf":
        n = _num_blocks(sd, "encoder.block.")
        bias = "encoder.block.{}.layer.0.SelfAttention.relative_attention_bias.weight"
        if n >= 1 and all(bias.format(i) in sd for i in range(n)):
            return "umt5"
        return None
    if lay == "wan":
        n = _num_blocks(sd, "blocks.")
        if n >= 1 and all(f"blocks.{i}.pos_embedding.embedding.weight" in sd for i in range(n)):
            return "umt5"
    return None


def _what_is_it(sd: dict) -> str:
    """A hint for files that are not UMT5 encoders."""
    keys = list(sd.keys())

    def has(sub: str) -> bool:
        return any(sub in k for k in keys)

    if has("decoder.upsamples") or has("encoder.downsamples") or has("decoder.up_blocks"):
        return "this looks like a Wan video VAE; load it with Load Video VAE"
    if has("head.modulation") or has("self_attn.q.weight") or has("patch_embedding.weight"):
        return "this looks like a diffusion model (Wan DiT); use Load Video Model"
    if has("visual.transformer") or has("vision_model.") or has("visual.blocks"):
        return "this looks like a CLIP vision encoder (clip_vision_h), not the UMT5 text encoder"
    if _HF_PROBE in sd or has(".SelfAttention.q.weight"):
        return ("this is a T5 v1.1 encoder (e.g. Flux/SD3 t5xxl: relative attention bias only in block 0), "
                "but Wan needs UMT5-XXL (umt5_xxl_fp16.safetensors or umt5_xxl_fp8_e4m3fn_scaled.safetensors)")
    if has("text_model.encoder.layers") or has("transformer.resblocks"):
        return "this looks like a CLIP text encoder, not UMT5-XXL"
    return ("none of the expected keys (encoder.block.0.layer.0.SelfAttention.q.weight or "
            "blocks.0.attn.q.weight) are present")


def _wan_to_hf(sd: dict) -> dict:
    """Official Wan T5 names -> transformers UMT5 names (Wan: ffn = fc2(fc1(x) * gelu(gate(x)));
    transformers: wo(gelu(wi_0(x)) * wi_1(x)), so gate.0 -> wi_0, fc1 -> wi_1, fc2 -> wo)."""
    out: dict[str, torch.Tensor] = {}
    block = {
        "norm1.weight": "layer.0.layer_norm.weight",
        "attn.q.weight": "layer.0.SelfAttention.q.weight",
        "attn.k.weight": "layer.0.SelfAttention.k.weight",
        "attn.v.weight": "layer.0.SelfAttention.v.weight",
        "attn.o.weight": "layer.0.SelfAttention.o.weight",
        "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
        "norm2.weight": "layer.1.layer_norm.weight",
        "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
        "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
        "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
    }
    for k, v in sd.items():
        if k == "token_embedding.weight":
            out["shared.weight"] = v
        elif k == "norm.weight":
            out["encoder.final_layer_norm.weight"] = v
        elif k.startswith("blocks."):
            _, n, rest = k.split(".", 2)
            if rest in block:
                out[f"encoder.block.{n}.{block[rest]}"] = v
        elif k == "spiece_model":
            out[k] = v
    return out


def _target_dtype(key: str, dtype: torch.dtype) -> torch.dtype:
    """Compute dtype of one weight: float16 keeps the FFN output projections in float32."""
    return torch.float32 if dtype == torch.float16 and key.endswith("DenseReluDense.wo.weight") else dtype


def _dequant_scaled_fp8(sd: dict, dtype: torch.dtype) -> dict:
    """ComfyUI scaled fp8: `<layer>.weight` (float8) * `<layer>.scale_weight`, computed in float32
    one tensor at a time and stored in the compute dtype (peak memory: one float32 layer)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k == "scaled_fp8" or k.endswith(".scale_weight") or k.endswith(".scale_input"):
            continue
        if v.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            w = v.to(torch.float32)
            if k.endswith(".weight"):
                s = sd.get(k[: -len("weight")] + "scale_weight")
                if s is not None:
                    s = s.to(torch.float32)
                    if s.numel() > 1 and s.numel() == w.shape[0]:
                        s = s.reshape(-1, *([1] * (w.ndim - 1)))
                    w = w * s
            v = w.to(_target_dtype(k, dtype))
        out[k] = v
    return out


def _infer_config(sd: dict, where: str):
    from transformers import UMT5Config

    def need(k: str) -> torch.Tensor:
        if k not in sd:
            raise VideoForgeError(f"{where}: UMT5 encoder key '{k}' is missing; the file is incomplete or "
                                  "not a UMT5-XXL text encoder.")
        return sd[k]

    emb = need("shared.weight")
    vocab, d_model = emb.shape
    n = _num_blocks(sd, "encoder.block.")
    q = need("encoder.block.0.layer.0.SelfAttention.q.weight")
    rel = need("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    wi = need("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")
    num_buckets, num_heads = rel.shape
    inner = q.shape[0]
    if inner % num_heads:
        raise VideoForgeError(f"{where}: attention width {inner} is not a multiple of {num_heads} heads.")
    return UMT5Config(
        vocab_size=int(vocab), d_model=int(d_model), d_kv=inner // num_heads, d_ff=int(wi.shape[0]),
        num_layers=n, num_decoder_layers=0, num_heads=int(num_heads),
        relative_attention_num_buckets=int(num_buckets), relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
        dropout_rate=0.0, layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1,
        tie_word_embeddings=False,
    )


def default_dtype() -> torch.dtype:
    """bfloat16 on CUDA, float32 on CPU (float16 overflows in UMT5)."""
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
class UMT5TextEncoder(nn.Module):
    """transformers `UMT5EncoderModel` + tokenizer; `encode(prompts)` gives Wan's text context."""

    def __init__(self, model: nn.Module, tokenizer: UMT5Tokenizer, dtype: torch.dtype, text_len: int = TEXT_LEN):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.compute_dtype = dtype
        self.text_len = text_len

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @classmethod
    def from_state_dict(cls, sd: dict, tokenizer: UMT5Tokenizer, dtype: torch.dtype | None = None,
                        where: str = "state dict") -> "UMT5TextEncoder":
        """`sd` in transformers names (float or already dequantised)."""
        from transformers import UMT5EncoderModel

        dtype = dtype or default_dtype()
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise VideoForgeError(f"{where}: compute dtype {dtype} not supported; use float32, bfloat16 or float16.")
        config = _infer_config(sd, where)
        n = config.num_layers
        expected = ["shared.weight", "encoder.final_layer_norm.weight"]
        for i in range(n):
            p = f"encoder.block.{i}.layer."
            expected += [p + "0.layer_norm.weight", p + "1.layer_norm.weight",
                         p + "0.SelfAttention.relative_attention_bias.weight",
                         p + "1.DenseReluDense.wi_0.weight", p + "1.DenseReluDense.wi_1.weight",
                         p + "1.DenseReluDense.wo.weight"]
            expected += [f"{p}0.SelfAttention.{x}.weight" for x in "qkvo"]
        missing = [k for k in expected if k not in sd]
        if missing:
            raise VideoForgeError(f"{where}: UMT5 encoder is incomplete, {len(missing)} weights missing "
                                  f"(first: {missing[:3]}). Re-download the file.")
        if tokenizer.vocab_size > config.vocab_size:
            raise VideoForgeError(f"{where}: tokenizer has {tokenizer.vocab_size} tokens but the embedding only "
                                  f"{config.vocab_size}; the tokenizer does not belong to this encoder "
                                  "(expected google/umt5-xxl).")

        weights = {}
        for k in expected:
            v = sd[k]
            if not v.is_floating_point():
                raise VideoForgeError(f"{where}: '{k}' has dtype {v.dtype}; expected floating point weights.")
            weights[k] = v.to(_target_dtype(k, dtype)).contiguous()
        weights["encoder.embed_tokens.weight"] = weights["shared.weight"]

        config._attn_implementation = "eager"
        with torch.device("meta"):
            model = UMT5EncoderModel(config)
        model.load_state_dict(weights, strict=True, assign=True)
        model.encoder.embed_tokens = model.shared  # one tensor for both names
        model.eval().requires_grad_(False)
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if t.is_meta:
                raise VideoForgeError(f"{where}: internal error, '{name}' was not loaded.")
        return cls(model, tokenizer, dtype)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokenizer(prompts)

    @torch.no_grad()
    def encode_ids(self, ids: torch.Tensor, lengths: torch.Tensor, device=None) -> torch.Tensor:
        """ids [B, L] (L <= text_len), lengths [B] -> [B, text_len, d_model], zero past each length."""
        if device is not None and torch.device(device) != self.device:
            self.to(device)
        dev = self.device
        ids, lengths = ids.to(dev), lengths.to(dev)
        mask = (torch.arange(ids.shape[1], device=dev)[None] < lengths[:, None]).long()
        h = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        out = h.new_zeros(ids.shape[0], self.text_len, h.shape[-1])
        L = min(ids.shape[1], self.text_len)
        out[:, :L] = h[:, :L] * mask[:, :L, None].to(h.dtype)
        return out.to(self.compute_dtype)

    @torch.no_grad()
    def encode(self, prompts: list[str] | str, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (context [B, 512, d_model] in the compute dtype, lengths [B] incl. EOS).

        `device`: where to run; the model is moved there (and stays) when it is elsewhere.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        ids, lengths = self.tokenizer(prompts)
        out = self.encode_ids(ids, lengths, device)
        return out, lengths.to(out.device)


# --------------------------------------------------------------------------------------------
# Loader
# --------------------------------------------------------------------------------------------
def _find_tokenizer(path: str, tokenizer_path: str | None) -> UMT5Tokenizer | None:
    if tokenizer_path:
        if not os.path.exists(tokenizer_path):
            raise VideoForgeError(f"{tokenizer_path}: tokenizer path not found; expected a google/umt5-xxl folder "
                                  "with spiece.model or tokenizer.json.")
        return UMT5Tokenizer.from_folder(tokenizer_path)
    base = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    for d in _TOKENIZER_DIRS:
        folder = os.path.normpath(os.path.join(base, d))
        if os.path.isfile(os.path.join(folder, "spiece.model")) or os.path.isfile(os.path.join(folder, "tokenizer.json")):
            return UMT5Tokenizer.from_folder(folder)
    return None


def load_text_encoder(path: str, dtype: torch.dtype | None = None,
                      tokenizer_path: str | None = None,
                      state_dict: dict | None = None) -> UMT5TextEncoder:
    """Load a UMT5-XXL text encoder file (see the module docstring for the accepted layouts).

    dtype: compute dtype (None: bfloat16 on CUDA, float32 on CPU). The model stays on the CPU;
    move it with `.to(device)` or pass `device=` to `encode`. `state_dict`: the file's tensors
    when the caller has already read them (the file is then not read again).
    """
    path = os.fspath(path)
    if dtype is not None and dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise VideoForgeError(f"{path}: compute dtype {dtype} not supported; use float32, bfloat16 or float16 "
                              "(fp8 files are dequantised to one of these).")
    raw = state_dict if state_dict is not None else load_state_dict(path)
    sd = _strip(raw)
    if detect_text_encoder(sd) != "umt5":
        raise VideoForgeError(f"{path}: not a UMT5 text encoder: {_what_is_it(sd)}. Expected "
                              "umt5_xxl_fp16.safetensors, umt5_xxl_fp8_e4m3fn_scaled.safetensors or "
                              "models_t5_umt5-xxl-enc-bf16.pth.")
    if _layout(sd) == "wan":
        sd = _wan_to_hf(sd)
    if "scaled_fp8" in sd or any(k.endswith(".scale_weight") for k in sd) or any(
            v.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) for v in sd.values()):
        sd = _dequant_scaled_fp8(sd, dtype or default_dtype())

    tok = None
    if tokenizer_path is None and "spiece_model" in sd:
        t = sd["spiece_model"]
        tok = UMT5Tokenizer(spm_bytes=t.cpu().numpy().tobytes(), source=f"{path} (spiece_model)")
    if tok is None:
        tok = _find_tokenizer(path, tokenizer_path)
    if tok is None:
        folder = os.path.join(os.path.dirname(os.path.abspath(path)), "google", "umt5-xxl")
        raise VideoForgeError(
            f"{path}: this text encoder file has no tokenizer inside. Put the google/umt5-xxl tokenizer "
            f"(spiece.model or tokenizer.json from https://huggingface.co/google/umt5-xxl) in {folder}, "
            "or pass its folder as tokenizer_path, or use ComfyUI's umt5_xxl_fp16.safetensors, which "
            "embeds it.")
    return UMT5TextEncoder.from_state_dict(sd, tok, dtype, where=path)


__all__ = ["UMT5TextEncoder", "UMT5Tokenizer", "clean_prompt", "detect_text_encoder",
           "load_text_encoder", "default_dtype", "TEXT_LEN"]
