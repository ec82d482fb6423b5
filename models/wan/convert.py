"""Key layouts of Wan2.1 DiT files and detection of what a state dict is.

Official Wan-AI names (also ComfyUI's repackaged files, sometimes under a
`model.diffusion_model.` prefix) are the native layout; diffusers' `WanTransformer3DModel`
names are converted on load. `to_diffusers` exists for the parity tests and for users who
want to hand our files to diffusers.
"""
from __future__ import annotations

import re

import torch

from ..common.checkpoint import strip_prefix
from ..common.errors import VideoForgeError

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")

# official -> diffusers, in the order they must be tried (longest first within a block).
_BLOCK = [
    ("self_attn.q.", "attn1.to_q."), ("self_attn.k.", "attn1.to_k."), ("self_attn.v.", "attn1.to_v."),
    ("self_attn.o.", "attn1.to_out.0."), ("self_attn.norm_q.", "attn1.norm_q."),
    ("self_attn.norm_k.", "attn1.norm_k."),
    ("cross_attn.k_img.", "attn2.add_k_proj."), ("cross_attn.v_img.", "attn2.add_v_proj."),
    ("cross_attn.norm_k_img.", "attn2.norm_added_k."),
    ("cross_attn.q.", "attn2.to_q."), ("cross_attn.k.", "attn2.to_k."), ("cross_attn.v.", "attn2.to_v."),
    ("cross_attn.o.", "attn2.to_out.0."), ("cross_attn.norm_q.", "attn2.norm_q."),
    ("cross_attn.norm_k.", "attn2.norm_k."),
    ("norm3.", "norm2."), ("ffn.0.", "ffn.net.0.proj."), ("ffn.2.", "ffn.net.2."),
    ("modulation", "scale_shift_table"),
]
_TOP = [
    ("patch_embedding.", "patch_embedding."),
    ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
    ("text_embedding.2.", "condition_embedder.text_embedder.linear_2."),
    ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
    ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
    ("time_projection.1.", "condition_embedder.time_proj."),
    ("img_emb.proj.0.", "condition_embedder.image_embedder.norm1."),
    ("img_emb.proj.1.", "condition_embedder.image_embedder.ff.net.0.proj."),
    ("img_emb.proj.3.", "condition_embedder.image_embedder.ff.net.2."),
    ("img_emb.proj.4.", "condition_embedder.image_embedder.norm2."),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"),
    ("head.head.", "proj_out."), ("head.modulation", "scale_shift_table"),
]


def _rename(key: str, table_top, table_block, reverse: bool) -> str:
    src, dst = (1, 0) if reverse else (0, 1)
    if key.startswith("blocks."):
        head, idx, rest = key.split(".", 2)
        for pair in table_block:
            if rest.startswith(pair[src]):
                return f"{head}.{idx}.{pair[dst]}{rest[len(pair[src]):]}"
        return key
    for pair in table_top:
        if key.startswith(pair[src]):
            return pair[dst] + key[len(pair[src]):]
    return key


def to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_rename(k, _TOP, _BLOCK, reverse=False): v for k, v in sd.items()}


def from_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_rename(k, _TOP, _BLOCK, reverse=True): v for k, v in sd.items()}


def normalize_dit_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip Comfy prefixes and convert diffusers names; returns official names."""
    sd = strip_prefix(sd, PREFIXES)
    if "condition_embedder.time_proj.weight" in sd:
        sd = from_diffusers(sd)
    return sd


def is_wan_dit(sd: dict[str, torch.Tensor]) -> bool:
    """ComfyUI recognises Wan by `head.modulation`; official layout after normalisation."""
    return "head.modulation" in sd and "blocks.0.self_attn.q.weight" in sd \
        and "patch_embedding.weight" in sd


# ---------------------------------------------------------------- VAE (diffusers AutoencoderKLWan)
_VAE_RES = 2  # residual blocks per VAE stage (decoder stages have one more)

# diffusers residual-block parameter names -> index in the official `residual` Sequential
_RES = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3",
        "conv2": "residual.6", "conv_shortcut": "shortcut"}
_MID = {"resnets.0": "0", "attentions.0": "1", "resnets.1": "2"}


def _res(name: str) -> str:
    """`norm1.gamma` -> `residual.0.gamma` (a residual block's own parameter)."""
    head, _, tail = name.partition(".")
    return f"{_RES[head]}.{tail}"


def vae_key_from_diffusers(key: str) -> str:
    """Rename one diffusers `AutoencoderKLWan` key to the Wan-AI / ComfyUI layout."""
    for diff, off in (("quant_conv.", "conv1."), ("post_quant_conv.", "conv2.")):
        if key.startswith(diff):
            return off + key[len(diff):]
    part, _, rest = key.partition(".")  # encoder / decoder
    if m := re.fullmatch(r"conv_in\.(.+)", rest):
        return f"{part}.conv1.{m[1]}"
    if m := re.fullmatch(r"norm_out\.(.+)", rest):
        return f"{part}.head.0.{m[1]}"
    if m := re.fullmatch(r"conv_out\.(.+)", rest):
        return f"{part}.head.2.{m[1]}"
    if m := re.fullmatch(r"mid_block\.(resnets\.\d|attentions\.\d)\.(.+)", rest):
        inner = m[2] if m[1].startswith("attentions") else _res(m[2])
        return f"{part}.middle.{_MID[m[1]]}.{inner}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(.+)", rest):
        # encoder blocks are already flat: residual blocks and Resamples in one list
        inner = m[2] if m[2].startswith(("resample.", "time_conv.")) else _res(m[2])
        return f"{part}.downsamples.{m[1]}.{inner}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        # each decoder stage is _VAE_RES + 1 residual blocks then one Resample, flattened
        return f"{part}.upsamples.{int(m[1]) * (_VAE_RES + 2) + int(m[2])}.{_res(m[3])}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", rest):
        return f"{part}.upsamples.{int(m[1]) * (_VAE_RES + 2) + _VAE_RES + 1}.{m[2]}"
    raise KeyError(f"no official name for diffusers key {key!r}")


def vae_from_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers `AutoencoderKLWan` state dict in the official Wan VAE layout."""
    try:
        return {vae_key_from_diffusers(k): v for k, v in sd.items()}
    except KeyError as e:
        raise VideoForgeError(f"looks like a diffusers Wan VAE but: {e.args[0]}") from None
