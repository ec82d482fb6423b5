"""Route a checkpoint file to the family and part that can load it.

Every loader first identifies what the file is (from its keys), so that a VAE handed to the
model loader gets "this is a Wan2.1 VAE: load it with Load Video VAE" instead of a key error.
"""
from __future__ import annotations

import os
from typing import Callable

import torch

from .common.checkpoint import load_state_dict, strip_prefix
from .common.errors import VideoForgeError
from .common.ops import parse_dtype
from .wan import convert as wan_convert
from .wan import family as wan

# part -> node that loads it, for error messages.
LOADER_OF = {"model": "Load Video Model", "vae": "Load Video VAE",
             "text_encoder": "Load Text Encoder", "clip_vision": "Load CLIP Vision"}


def _is_wan_vae(sd: dict) -> bool:
    from .wan.vae import is_wan_vae
    return is_wan_vae(strip_prefix(sd, ("first_stage_model.", "vae.")))


def _is_umt5(sd: dict) -> bool:
    from .wan.text_encoder import detect_text_encoder
    return detect_text_encoder(sd) is not None


def _is_clip_vision(sd: dict) -> bool:
    from .common.clip_vision import detect_clip_vision
    return detect_clip_vision(sd) is not None


# (description, part, test) in order; the first match names the file.
_KINDS: list[tuple[str, str, Callable[[dict], bool]]] = [
    ("a Wan2.1 diffusion model", "model", lambda sd: wan_convert.is_wan_dit(wan_convert.normalize_dit_keys(sd))),
    ("a Wan2.1 VAE", "vae", _is_wan_vae),
    ("a UMT5 text encoder (Wan2.1)", "text_encoder", _is_umt5),
    ("a CLIP vision encoder", "clip_vision", _is_clip_vision),
]


def identify(sd: dict[str, torch.Tensor]) -> tuple[str, str] | None:
    """(description, part) of a state dict, or None when no family recognises it."""
    for desc, part, test in _KINDS:
        try:
            if test(sd):
                return desc, part
        except (KeyError, IndexError, ValueError):
            continue
    return None


def _read(path: str, part: str) -> dict[str, torch.Tensor]:
    sd = load_state_dict(path)
    kind = identify(sd)
    name = os.path.basename(path)
    if kind is None:
        raise VideoForgeError(f"{name}: not a checkpoint VideoForge recognises as a "
                              f"{part.replace('_', ' ')} ({len(sd)} tensors, e.g. {list(sd)[:3]}).")
    if kind[1] != part:
        raise VideoForgeError(f"{name} is {kind[0]}, not a {part.replace('_', ' ')}: "
                              f"load it with {LOADER_OF[kind[1]]}.")
    return sd


def load_video_model(path: str, dtype: str = "auto", attention: str = "auto") -> wan.WanVideoModel:
    """Diffusion model file -> family model (weights on CPU, stored in `dtype`)."""
    sd = _read(path, "model")
    model = wan.build_dit(sd, os.path.basename(path), parse_dtype(dtype))
    model.dit.set_attention(attention)
    return model


def load_video_vae(path: str, dtype: str = "auto") -> wan.WanVideoVAE:
    from .wan.vae import WanVAE
    sd = strip_prefix(_read(path, "vae"), ("first_stage_model.", "vae."))
    dt = parse_dtype(dtype)
    if dt is None:  # the VAE is small: full precision on CPU, bf16 where a GPU runs it
        dt = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    elif dt == torch.float8_e4m3fn:
        raise VideoForgeError("fp8 storage is not offered for VAEs (their convolutions need "
                              "real precision); choose auto, bf16, fp16 or fp32.")
    try:
        vae = WanVAE.from_state_dict(sd, dtype=dt)
    except VideoForgeError as e:
        raise VideoForgeError(f"{os.path.basename(path)}: {e}") from e
    return wan.WanVideoVAE(vae, os.path.basename(path))


def load_text_encoder(path: str, dtype: str = "auto") -> wan.WanTextEncoder:
    from .wan.text_encoder import load_text_encoder as load_umt5
    sd = _read(path, "text_encoder")
    return wan.WanTextEncoder(load_umt5(path, dtype=parse_dtype(dtype), state_dict=sd),
                              os.path.basename(path))


def load_clip_vision(path: str, dtype: str = "auto"):
    """CLIP vision file (ComfyUI clip_vision_h.safetensors, official Wan open-clip .pth) ->
    `ClipVisionEncoder` (image features for image-to-video)."""
    from .common.clip_vision import load_clip_vision as load_clip
    sd = _read(path, "clip_vision")
    dt = parse_dtype(dtype)
    if dt == torch.float8_e4m3fn:
        raise VideoForgeError("fp8 storage is not offered for CLIP vision; choose auto, bf16, fp16 or fp32.")
    return load_clip(sd, dtype=dt, name=os.path.basename(path))
