"""Key layouts of EasyAnimate V5.1 transformer files and detection of what a state dict is.

Two layouts exist for the same weights:

* official (aigc-apps/EasyAnimate `EasyAnimateTransformer3DModel`, the files in
  `alibaba-pai/EasyAnimateV5.1-12b-zh*/transformer/diffusion_pytorch_model*.safetensors`):
  each block holds TWO diffusers-0.31 `Attention` modules, `attn1` for the video tokens and
  `attn2` for the text tokens, each with its own `to_q/to_k/to_v/to_out.0` and its own per-head
  LayerNorms `norm_q/norm_k` ([head_dim] weight + bias, eps 1e-6).
* diffusers (`EasyAnimateTransformer3DModel` in diffusers >= 0.33, the `...-diffusers` repos):
  ONE joint `Attention` per block; the text branch is `attn1.add_{q,k,v}_proj`,
  `attn1.to_add_out`, and its q/k norms are `attn1.norm_added_{q,k}`. Those norms only exist
  for `qk_norm="layer_norm"` since diffusers PR #10626 (before it diffusers had no LayerNorm
  `norm_added_q`, which is why the diffusers weights were re-uploaded); the tensors are the
  official `attn2.norm_{q,k}` ones unchanged ([head_dim] weight + bias).

Our model uses the official names (`attn1` video, `attn2` text); diffusers names are renamed
on load. Everything else (`proj`, `text_proj`, `time_embedding.linear_{1,2}`,
`norm1/norm2.{linear,norm}`, `ff/txt_ff.net.{0.proj,2}`, `norm_final`, `norm_out.{linear,norm}`,
`proj_out`) is named alike in both. Keys V5.1 inference never uses (`text_proj_t5.*` of the
V5 multi-encoder setup, `ref_proj.*`, `clip_proj.*`) are dropped.
"""
from __future__ import annotations

import torch

from ..common.checkpoint import strip_prefix
from ..common.errors import VideoForgeError

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")

# diffusers -> official, inside `transformer_blocks.N.`
_DIFFUSERS_TO_OFFICIAL = (
    ("attn1.add_q_proj.", "attn2.to_q."),
    ("attn1.add_k_proj.", "attn2.to_k."),
    ("attn1.add_v_proj.", "attn2.to_v."),
    ("attn1.to_add_out.", "attn2.to_out.0."),
    ("attn1.norm_added_q.", "attn2.norm_q."),
    ("attn1.norm_added_k.", "attn2.norm_k."),
)
# Weights of V5 / training-only branches that V5.1 inference never calls.
UNUSED = ("text_proj_t5.", "ref_proj.", "clip_proj.")


def _block_rest(key: str) -> tuple[str, str] | None:
    """'transformer_blocks.3.attn1.to_q.weight' -> ('transformer_blocks.3.', 'attn1.to_q.weight')."""
    if not key.startswith("transformer_blocks."):
        return None
    head, idx, rest = (key.split(".", 2) + ["", ""])[:3]
    return f"{head}.{idx}.", rest


def dit_layout(sd: dict[str, torch.Tensor]) -> str | None:
    """'diffusers', 'official' or None (no EasyAnimate-style joint-attention blocks)."""
    diffusers = official = False
    for k in sd:
        br = _block_rest(k)
        if br is None:
            continue
        rest = br[1]
        if rest.startswith(("attn1.add_q_proj.", "attn1.to_add_out.", "attn1.norm_added_q.")):
            diffusers = True
        elif rest.startswith("attn2."):
            official = True
    if diffusers and official:
        return "mixed"
    return "diffusers" if diffusers else "official" if official else None


def _rename(key: str, pairs, reverse: bool) -> str:
    br = _block_rest(key)
    if br is None:
        return key
    head, rest = br
    for a, b in pairs:
        src, dst = (b, a) if reverse else (a, b)
        if rest.startswith(src):
            return head + dst + rest[len(src):]
    return key


def from_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers `EasyAnimateTransformer3DModel` names -> official names."""
    return {_rename(k, _DIFFUSERS_TO_OFFICIAL, False): v for k, v in sd.items()}


def to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official names -> diffusers names (to hand our files to diffusers)."""
    return {_rename(k, _DIFFUSERS_TO_OFFICIAL, True): v for k, v in sd.items()}


def normalize_dit_keys(sd: dict[str, torch.Tensor], name: str = "") -> dict[str, torch.Tensor]:
    """Strip ComfyUI prefixes, rename diffusers keys, drop unused branches; official names out.

    Raises VideoForgeError (naming `name`) for a file mixing both layouts.
    """
    sd = strip_prefix(sd, PREFIXES)
    layout = dit_layout(sd)
    if layout == "mixed":
        raise VideoForgeError(f"{name or 'checkpoint'}: mixes the official EasyAnimate key layout "
                              "(attn2.*) with the diffusers one (attn1.add_q_proj / norm_added_q); "
                              "the file is not a single EasyAnimate transformer.")
    if layout == "diffusers":
        sd = from_diffusers(sd)
    return {k: v for k, v in sd.items() if not k.startswith(UNUSED)}


def is_easyanimate_dit(sd: dict[str, torch.Tensor]) -> bool:
    """True for an EasyAnimate V5/V5.1 MMDiT transformer in either layout (prefixes allowed).

    Keys are normalised here (cheap: renaming only), so raw file dicts can be passed.
    Wan (`blocks.N`, `patch_embedding`), SD UNets (`input_blocks`), CogVideoX (`patch_embed.*`)
    and other diffusers DiTs lack the top-level `proj` Conv2d + `text_proj` pair next to
    `transformer_blocks.N.norm1.linear` / `attn1.to_q`.
    """
    try:
        sd = normalize_dit_keys(sd)
    except VideoForgeError:
        return False
    proj = sd.get("proj.weight")
    if proj is None or proj.dim() != 4 or not ("text_proj.weight" in sd or "text_proj.1.weight" in sd):
        return False
    # any block (a truncated file is still recognised, and then refused naming what is missing)
    blocks = {k.split(".")[1] for k in sd if k.startswith("transformer_blocks.")}
    return any(f"transformer_blocks.{i}.norm1.linear.weight" in sd
               and f"transformer_blocks.{i}.attn1.to_q.weight" in sd for i in blocks)
