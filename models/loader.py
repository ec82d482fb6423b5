"""Route a checkpoint file to the family and part that can load it.

Every loader first identifies what the file is (from its keys), so that a VAE handed to the
model loader gets "this is a Wan2.1 VAE: load it with Load Video VAE" instead of a key error.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
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


def _is_easyanimate_dit(sd: dict) -> bool:
    from .easyanimate.convert import is_easyanimate_dit
    return is_easyanimate_dit(sd)


def _is_easyanimate_vae(sd: dict) -> bool:
    from .easyanimate.vae import is_easyanimate_vae
    return is_easyanimate_vae(strip_prefix(sd, ("first_stage_model.", "vae.")))


def _is_qwen2vl(sd: dict) -> bool:
    from .easyanimate.text_encoder import detect_qwen2vl
    return detect_qwen2vl(sd) is not None


# File names that say nothing on their own (diffusers / transformers folders): messages show the
# folders above them too, e.g. "EasyAnimateV5.1-12b-zh-InP/transformer/diffusion_pytorch_model.safetensors".
_GENERIC = re.compile(r"^(diffusion_pytorch_model|model|pytorch_model)([-.].*)?$")


def display_name(path: str) -> str:
    """The file's name for messages: the base name, with two parent folders when it is generic."""
    parts = os.path.normpath(path).split(os.sep)
    if _GENERIC.match(parts[-1]) and len(parts) >= 3:
        return "/".join(parts[-3:])
    return parts[-1]


@dataclass(frozen=True)
class Kind:
    desc: str      # "a Wan2.1 VAE", for messages
    part: str      # model / vae / text_encoder / clip_vision / checkpoint / motion_module / ...
    family: str    # which family's builders load it
    test: Callable[[dict], bool]


# In order; the first match names the file.
_KINDS: list[Kind] = [
    Kind("a Wan2.1 diffusion model", "model", "wan",
         lambda sd: wan_convert.is_wan_dit(wan_convert.normalize_dit_keys(sd))),
    Kind("a Wan2.1 VAE", "vae", "wan", _is_wan_vae),
    Kind("a UMT5 text encoder (Wan2.1)", "text_encoder", "wan", _is_umt5),
    Kind("a CLIP vision encoder", "clip_vision", "common", _is_clip_vision),
    Kind("a Stable Diffusion 1.5 checkpoint", "checkpoint", "sd15", sd.is_sd_checkpoint),
    Kind("an AnimateDiff MotionLoRA", "motion_lora", "sd15", _is_motion_lora),
    Kind("an AnimateDiff motion module", "motion_module", "sd15", _is_motion_module),
    Kind("a Stable Diffusion UNet", "model", "sd15", sd.is_sd_unet_file),
    Kind("a Stable Diffusion VAE", "vae", "sd15", _is_sd_vae),
    Kind("a CLIP-L text encoder (Stable Diffusion 1.5)", "text_encoder", "sd15", _is_clip_l),
    Kind("an EasyAnimate V5.1 transformer", "model", "easyanimate", _is_easyanimate_dit),
    Kind("an EasyAnimate MagVIT VAE", "vae", "easyanimate", _is_easyanimate_vae),
    Kind("a Qwen2-VL text encoder (EasyAnimate V5.1)", "text_encoder", "easyanimate", _is_qwen2vl),
]


def _kind(sd: dict[str, torch.Tensor]) -> Kind | None:
    for kind in _KINDS:
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


def load_video_model(path: str, dtype: str = "auto", attention: str = "auto") -> Any:
    """Diffusion model file -> family model (weights on CPU, stored in `dtype`)."""
    state, kind = _read(path, "model")
    name, storage = display_name(path), parse_dtype(dtype)
    if kind.family == "sd15":
        return sd.build_unet(state, name, storage)
    if kind.family == "easyanimate":
        from .easyanimate.family import build_model
        model = build_model(state, name, storage)
        model.dit.set_attention(attention)
        return model
    model = wan.build_dit(state, name, storage)
    model.dit.set_attention(attention)
    return model


def load_video_vae(path: str, dtype: str = "auto") -> Any:
    from .wan.vae import WanVAE
    state, kind = _read(path, "vae")
    dt = _vae_dtype(dtype)
    name = display_name(path)
    if kind.family == "sd15":
        from .animatediff.vae import load_sd_vae
        return load_sd_vae(state, name, dt)
    if kind.family == "easyanimate":
        from .easyanimate.vae import load_easyanimate_vae
        return load_easyanimate_vae(state, name, dt)
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
    state, kind = _read(path, "text_encoder")
    name = display_name(path)
    if kind.family == "sd15":
        from .animatediff.text_encoder import load_sd_text_encoder
        return load_sd_text_encoder(state, name, parse_dtype(dtype))
    if kind.family == "easyanimate":
        from .easyanimate.text_encoder import load_easyanimate_text_encoder
        return load_easyanimate_text_encoder(state, name, parse_dtype(dtype), path=path)
    return wan.WanTextEncoder(load_umt5(path, dtype=parse_dtype(dtype), state_dict=state), name)


def load_checkpoint(path: str, dtype: str = "auto", vae_dtype: str = "auto") -> tuple[Any, Any, Any]:
    """SD1.5 single-file checkpoint -> (model, text encoder, VAE), reading the file once."""
    from .animatediff.text_encoder import load_sd_text_encoder
    from .animatediff.vae import load_sd_vae
    state, _ = _read(path, "checkpoint")
    name = display_name(path)
    return (sd.build_unet(state, name, parse_dtype(dtype)),
            load_sd_text_encoder(state, name, parse_dtype(dtype)),
            load_sd_vae(state, name, _vae_dtype(vae_dtype)))


def load_motion_module(path: str, dtype: str = "auto") -> Any:
    """AnimateDiff motion module file (official or diffusers layout) -> `MotionModel`."""
    from .animatediff.motion import build_motion_model
    state, _ = _read(path, "motion_module")
    return build_motion_model(state, display_name(path), parse_dtype(dtype))


def load_motion_lora(path: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from .animatediff.motion import parse_motion_lora
    state, _ = _read(path, "motion_lora")
    return parse_motion_lora(state, display_name(path))


def load_clip_vision(path: str, dtype: str = "auto"):
    """CLIP vision file (ComfyUI clip_vision_h.safetensors, official Wan open-clip .pth) ->
    `ClipVisionEncoder` (image features for image-to-video)."""
    from .common.clip_vision import load_clip_vision as load_clip
    state, _ = _read(path, "clip_vision")
    dt = parse_dtype(dtype)
    if dt == torch.float8_e4m3fn:
        raise VideoForgeError("fp8 storage is not offered for CLIP vision; choose auto, bf16, fp16 or fp32.")
    return load_clip(state, dtype=dt, name=display_name(path))
