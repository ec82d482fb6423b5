"""Route a checkpoint file to the family and part that can load it.

Every loader first identifies what the file is (from its keys), so that a VAE handed to the
model loader gets "this is a Wan2.1 VAE: load it with Load Video VAE" instead of a key error.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch

from .common.checkpoint import load_state_dict, strip_prefix
from .common.errors import VideoForgeError
from .common.ops import parse_dtype
from .wan import convert as wan_convert
from .animatediff import family as sd
from .wan import family as wan

# part -> node that loads it, for error messages.
LOADER_OF = {"model": "Load Video Model", "vae": "Load Video VAE",
             "text_encoder": "Load Text Encoder", "clip_vision": "Load CLIP Vision",
             "checkpoint": "Load SD Checkpoint (or Load Video Model / VAE / Text Encoder)",
             "motion_module": "Apply Motion Module (models/animatediff_models)",
             "motion_lora": "Load Motion LoRA (models/animatediff_motion_lora)"}
# A single-file checkpoint holds several parts; each part loader takes its part from it.
PARTS_OF = {"checkpoint": ("model", "vae", "text_encoder")}


def _is_wan_vae(sd: dict) -> bool:
    from .wan.vae import is_wan_vae
    return is_wan_vae(strip_prefix(sd, ("first_stage_model.", "vae.")))


def _is_umt5(sd: dict) -> bool:
    from .wan.text_encoder import detect_text_encoder
    return detect_text_encoder(sd) is not None


def _is_sd_vae(sd: dict) -> bool:
    from .animatediff.vae import is_sd_vae
    return is_sd_vae(strip_prefix(sd, ("first_stage_model.", "vae.")))


def _is_clip_l(sd: dict) -> bool:
    from .animatediff.text_encoder import detect_clip_l
    return detect_clip_l(sd) is not None


def _is_motion_lora(sd: dict) -> bool:
    return any(k.endswith("_lora.down.weight") and ".motion_modules." in k for k in sd)


def _is_motion_module(sd: dict) -> bool:
    return any(".motion_modules." in k for k in sd) or any("temporal_attentions." in k for k in sd)


def _is_clip_vision(sd: dict) -> bool:
    from .common.clip_vision import detect_clip_vision
    return detect_clip_vision(sd) is not None


# Descriptions of the Stable Diffusion (AnimateDiff) family's files, loaded by models/animatediff.
_SD_KINDS = {"a Stable Diffusion 1.5 checkpoint", "a Stable Diffusion UNet", "a Stable Diffusion VAE",
             "a CLIP-L text encoder (Stable Diffusion 1.5)"}

# (description, part, test) in order; the first match names the file.
_KINDS: list[tuple[str, str, Callable[[dict], bool]]] = [
    ("a Wan2.1 diffusion model", "model", lambda sd: wan_convert.is_wan_dit(wan_convert.normalize_dit_keys(sd))),
    ("a Wan2.1 VAE", "vae", _is_wan_vae),
    ("a UMT5 text encoder (Wan2.1)", "text_encoder", _is_umt5),
    ("a CLIP vision encoder", "clip_vision", _is_clip_vision),
    ("a Stable Diffusion 1.5 checkpoint", "checkpoint", sd.is_sd_checkpoint),
    ("an AnimateDiff MotionLoRA", "motion_lora", _is_motion_lora),
    ("an AnimateDiff motion module", "motion_module", _is_motion_module),
    ("a Stable Diffusion UNet", "model", sd.is_sd_unet_file),
    ("a Stable Diffusion VAE", "vae", _is_sd_vae),
    ("a CLIP-L text encoder (Stable Diffusion 1.5)", "text_encoder", _is_clip_l),
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


def _read(path: str, part: str) -> tuple[dict[str, torch.Tensor], str]:
    """The file's tensors and its description, after checking it holds `part`."""
    sd = load_state_dict(path)
    kind = identify(sd)
    name = os.path.basename(path)
    what = part.replace('_', ' ')
    if kind is None:
        raise VideoForgeError(f"{name}: not a checkpoint VideoForge recognises as a "
                              f"{what} ({len(sd)} tensors, e.g. {list(sd)[:3]}).")
    if kind[1] != part and part not in PARTS_OF.get(kind[1], ()):
        raise VideoForgeError(f"{name} is {kind[0]}, not a {what}: load it with {LOADER_OF[kind[1]]}.")
    return sd, kind[0]


def _is_sd(desc: str) -> bool:
    return desc in _SD_KINDS


def load_video_model(path: str, dtype: str = "auto", attention: str = "auto") -> Any:
    """Diffusion model file -> family model (weights on CPU, stored in `dtype`)."""
    state, desc = _read(path, "model")
    name = os.path.basename(path)
    if _is_sd(desc):
        return sd.build_unet(state, name, parse_dtype(dtype))
    model = wan.build_dit(state, name, parse_dtype(dtype))
    model.dit.set_attention(attention)
    return model


def load_video_vae(path: str, dtype: str = "auto") -> Any:
    from .wan.vae import WanVAE
    state, desc = _read(path, "vae")
    dt = _vae_dtype(dtype)
    name = os.path.basename(path)
    if _is_sd(desc):
        from .animatediff.vae import load_sd_vae
        return load_sd_vae(state, name, dt)
    state = strip_prefix(state, ("first_stage_model.", "vae."))
    try:
        vae = WanVAE.from_state_dict(state, dtype=dt)
    except VideoForgeError as e:
        raise VideoForgeError(f"{name}: {e}") from e
    return wan.WanVideoVAE(vae, name)


def _vae_dtype(dtype: str) -> torch.dtype:
    dt = parse_dtype(dtype)
    if dt is None:  # the VAE is small: full precision on CPU, bf16 where a GPU runs it
        dt = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    elif dt == torch.float8_e4m3fn:
        raise VideoForgeError("fp8 storage is not offered for VAEs (their convolutions need "
                              "real precision); choose auto, bf16, fp16 or fp32.")
    return dt


def load_text_encoder(path: str, dtype: str = "auto") -> Any:
    from .wan.text_encoder import load_text_encoder as load_umt5
    state, desc = _read(path, "text_encoder")
    name = os.path.basename(path)
    if _is_sd(desc):
        from .animatediff.text_encoder import load_sd_text_encoder
        return load_sd_text_encoder(state, name, parse_dtype(dtype))
    return wan.WanTextEncoder(load_umt5(path, dtype=parse_dtype(dtype), state_dict=state), name)


def load_checkpoint(path: str, dtype: str = "auto", vae_dtype: str = "auto") -> tuple[Any, Any, Any]:
    """SD1.5 single-file checkpoint -> (model, text encoder, VAE), reading the file once."""
    from .animatediff.text_encoder import load_sd_text_encoder
    from .animatediff.vae import load_sd_vae
    state, desc = _read(path, "checkpoint")
    name = os.path.basename(path)
    return (sd.build_unet(state, name, parse_dtype(dtype)),
            load_sd_text_encoder(state, name, parse_dtype(dtype)),
            load_sd_vae(state, name, _vae_dtype(vae_dtype)))


def load_motion_module(path: str, dtype: str = "auto") -> Any:
    """AnimateDiff motion module file (official or diffusers layout) -> `MotionModel`."""
    from .animatediff.motion import build_motion_model
    state, _ = _read(path, "motion_module")
    return build_motion_model(state, os.path.basename(path), parse_dtype(dtype))


def load_motion_lora(path: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from .animatediff.motion import parse_motion_lora
    state, _ = _read(path, "motion_lora")
    return parse_motion_lora(state, os.path.basename(path))


def load_clip_vision(path: str, dtype: str = "auto"):
    """CLIP vision file (ComfyUI clip_vision_h.safetensors, official Wan open-clip .pth) ->
    `ClipVisionEncoder` (image features for image-to-video)."""
    from .common.clip_vision import load_clip_vision as load_clip
    state, _ = _read(path, "clip_vision")
    dt = parse_dtype(dtype)
    if dt == torch.float8_e4m3fn:
        raise VideoForgeError("fp8 storage is not offered for CLIP vision; choose auto, bf16, fp16 or fp32.")
    return load_clip(state, dtype=dt, name=os.path.basename(path))
