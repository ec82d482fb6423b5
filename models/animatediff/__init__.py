"""AnimateDiff: Stable Diffusion 1.5 (UNet, VAE, CLIP-L) with motion modules injected."""
from ..common.registry import Family, Kind, register


def _is_checkpoint(sd) -> bool:
    from .family import is_sd_checkpoint
    return is_sd_checkpoint(sd)


def _is_unet(sd) -> bool:
    from .family import is_sd_unet_file
    return is_sd_unet_file(sd)


def _is_motion_lora(sd) -> bool:
    return any(k.endswith("_lora.down.weight") and ".motion_modules." in k for k in sd)


def _is_motion_module(sd) -> bool:
    return any(".motion_modules." in k for k in sd) or any("temporal_attentions." in k for k in sd)


def _is_vae(sd) -> bool:
    from ..common.checkpoint import strip_prefix
    from .vae import is_sd_vae
    return is_sd_vae(strip_prefix(sd, ("first_stage_model.", "vae.")))


def _is_clip_l(sd) -> bool:
    from .text_encoder import detect_clip_l
    return detect_clip_l(sd) is not None


def _model(sd, name, dtype, path):
    from .family import build_unet
    return build_unet(sd, name, dtype)


def _vae(sd, name, dtype, path):
    from .vae import load_sd_vae
    return load_sd_vae(sd, name, dtype)


def _text_encoder(sd, name, dtype, path):
    from .text_encoder import load_sd_text_encoder
    return load_sd_text_encoder(sd, name, dtype)


def _motion_module(sd, name, dtype, path):
    from .motion import build_motion_model
    return build_motion_model(sd, name, dtype)


def _motion_lora(sd, name, dtype, path):
    from .motion import parse_motion_lora
    return parse_motion_lora(sd, name)


FAMILY = register(Family("sd15", (
    Kind("a Stable Diffusion 1.5 checkpoint", "checkpoint", _is_checkpoint),
    Kind("an AnimateDiff MotionLoRA", "motion_lora", _is_motion_lora),
    Kind("an AnimateDiff motion module", "motion_module", _is_motion_module),
    Kind("a Stable Diffusion UNet", "model", _is_unet),
    Kind("a Stable Diffusion VAE", "vae", _is_vae),
    Kind("a CLIP-L text encoder (Stable Diffusion 1.5)", "text_encoder", _is_clip_l),
), {"model": _model, "vae": _vae, "text_encoder": _text_encoder,
    "motion_module": _motion_module, "motion_lora": _motion_lora}))
