"""Route a checkpoint file to the family and part that can load it.

Every loader first identifies what the file is (from its keys), so that a VAE handed to the
model loader gets "this is a Wan2.1 VAE: load it with Load Video VAE" instead of a key error.
"""
from __future__ import annotations

import os
import re
from typing import Any

import torch

from .common.checkpoint import load_state_dict
from .common.errors import VideoForgeError
from .common.ops import parse_dtype
from .common.registry import Kind, builder, kinds

# part -> node that loads it, for error messages.
LOADER_OF = {"model": "Load Video Model", "vae": "Load Video VAE",
             "text_encoder": "Load Text Encoder", "clip_vision": "Load CLIP Vision",
             "checkpoint": "Load SD Checkpoint (or Load Video Model / VAE / Text Encoder)",
             "motion_module": "Apply Motion Module (models/animatediff_models)",
             "motion_lora": "Load Motion LoRA (models/animatediff_motion_lora)"}
# A single-file checkpoint holds several parts; each part loader takes its part from it.
PARTS_OF = {"checkpoint": ("model", "vae", "text_encoder")}


# File names that say nothing on their own (diffusers / transformers folders): messages show the
# folders above them too, e.g. "EasyAnimateV5.1-12b-zh-InP/transformer/diffusion_pytorch_model.safetensors".
_GENERIC = re.compile(r"^(diffusion_pytorch_model|model|pytorch_model)([-.].*)?$")


def display_name(path: str) -> str:
    """The file's name for messages: the base name, with two parent folders when it is generic."""
    parts = os.path.normpath(path).split(os.sep)
    if _GENERIC.match(parts[-1]) and len(parts) >= 3:
        return "/".join(parts[-3:])
    return parts[-1]


def _kind(sd: dict[str, torch.Tensor]) -> Kind | None:
    """The first registered kind (models/common/registry.py) the state dict matches."""
    for kind in kinds():
        try:
            if kind.test(sd):
                return kind
        except (KeyError, IndexError, ValueError):
            continue
    return None


def identify(sd: dict[str, torch.Tensor]) -> tuple[str, str] | None:
    """(description, part) of a state dict, or None when no family recognises it."""
    kind = _kind(sd)
    return None if kind is None else (kind.desc, kind.part)


def _read(path: str, part: str) -> tuple[dict[str, torch.Tensor], Kind]:
    """The file's tensors and what it is, after checking it holds `part`."""
    sd = load_state_dict(path)
    kind = _kind(sd)
    name = display_name(path)
    what = part.replace('_', ' ')
    if kind is None:
        raise VideoForgeError(f"{name}: not a checkpoint VideoForge recognises as a "
                              f"{what} ({len(sd)} tensors, e.g. {list(sd)[:3]}).")
    if kind.part != part and part not in PARTS_OF.get(kind.part, ()):
        raise VideoForgeError(f"{name} is {kind.desc}, not a {what}: load it with {LOADER_OF[kind.part]}.")
    return sd, kind


def _build(path: str, part: str, dtype: torch.dtype | None) -> Any:
    """Read `path`, check it holds `part`, and build that part with its family's builder."""
    state, kind = _read(path, part)
    return builder(kind.family, part)(state, display_name(path), dtype, path)


def load_video_model(path: str, dtype: str = "auto", attention: str = "auto") -> Any:
    """Diffusion model file -> family model (weights on CPU, stored in `dtype`)."""
    model = _build(path, "model", parse_dtype(dtype))
    set_attention = getattr(model.net, "set_attention", None)
    if set_attention is not None:  # the SD UNet has no backend choice yet (DESIGN §8.7)
        set_attention(attention)
    return model


def load_video_vae(path: str, dtype: str = "auto") -> Any:
    return _build(path, "vae", _vae_dtype(dtype))


def _vae_dtype(dtype: str) -> torch.dtype:
    dt = parse_dtype(dtype)
    if dt is None:  # the VAE is small: full precision on CPU, bf16 where a GPU runs it
        dt = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    elif dt == torch.float8_e4m3fn:
        raise VideoForgeError("fp8 storage is not offered for VAEs (their convolutions need "
                              "real precision); choose auto, bf16, fp16 or fp32.")
    return dt


def load_text_encoder(path: str, dtype: str = "auto") -> Any:
    return _build(path, "text_encoder", parse_dtype(dtype))


def load_text_encoders(path: str, path2: str, dtype: str = "auto") -> Any:
    """A text encoder made of two files (HunyuanVideo: llava_llama3_* + clip_l), given in any
    order: the family of either file that declares a "text_encoder_pair" builder builds it."""
    (sd1, k1), (sd2, k2) = _read(path, "text_encoder"), _read(path2, "text_encoder")
    for first, second in (((sd1, k1, path), (sd2, k2, path2)), ((sd2, k2, path2), (sd1, k1, path))):
        try:
            build = builder(first[1].family, "text_encoder_pair")
        except KeyError:
            continue
        name = f"{display_name(first[2])} + {display_name(second[2])}"
        return build(first[0], second[0], name, parse_dtype(dtype), (first[2], second[2]))
    raise VideoForgeError(f"{display_name(path)} ({k1.desc}) and {display_name(path2)} ({k2.desc}) "
                          "do not make a two-file text encoder; use Load Text Encoder for each "
                          "alone (HunyuanVideo pairs llava_llama3_*.safetensors with clip_l.safetensors).")


def load_checkpoint(path: str, dtype: str = "auto", vae_dtype: str = "auto") -> tuple[Any, Any, Any]:
    """Single-file checkpoint (SD1.5) -> (model, text encoder, VAE), reading the file once."""
    state, kind = _read(path, "checkpoint")
    name, dt = display_name(path), parse_dtype(dtype)
    return (builder(kind.family, "model")(state, name, dt, path),
            builder(kind.family, "text_encoder")(state, name, dt, path),
            builder(kind.family, "vae")(state, name, _vae_dtype(vae_dtype), path))


def load_motion_module(path: str, dtype: str = "auto") -> Any:
    """AnimateDiff motion module file (official or diffusers layout) -> `MotionModel`."""
    return _build(path, "motion_module", parse_dtype(dtype))


def load_motion_lora(path: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return _build(path, "motion_lora", None)


def load_clip_vision(path: str, dtype: str = "auto"):
    """CLIP vision file (ComfyUI clip_vision_h.safetensors, official Wan open-clip .pth) ->
    `ClipVisionEncoder` (image features for image-to-video)."""
    dt = parse_dtype(dtype)
    if dt == torch.float8_e4m3fn:
        raise VideoForgeError("fp8 storage is not offered for CLIP vision; choose auto, bf16, fp16 or fp32.")
    return _build(path, "clip_vision", dt)
