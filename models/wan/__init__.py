"""Wan2.1 model family: DiT (T2V / I2V / FLF2V), causal 3D VAE, UMT5-XXL text encoder."""
from ..common.registry import Family, Kind, register


def _is_dit(sd) -> bool:
    from .convert import is_wan_dit, normalize_dit_keys
    return is_wan_dit(normalize_dit_keys(sd))


def _is_vae(sd) -> bool:
    from ..common.checkpoint import strip_prefix
    from .vae import is_wan_vae
    return is_wan_vae(strip_prefix(sd, ("first_stage_model.", "vae.")))


def _is_umt5(sd) -> bool:
    from .text_encoder import detect_text_encoder
    return detect_text_encoder(sd) is not None


def _model(sd, name, dtype, path):
    from .family import build_dit
    return build_dit(sd, name, dtype)


def _vae(sd, name, dtype, path):
    from ..common.checkpoint import strip_prefix
    from ..common.errors import VideoForgeError
    from .family import WanVideoVAE
    from .vae import WanVAE
    try:
        vae = WanVAE.from_state_dict(strip_prefix(sd, ("first_stage_model.", "vae.")), dtype=dtype)
    except VideoForgeError as e:
        raise VideoForgeError(f"{name}: {e}") from e
    return WanVideoVAE(vae, name)


def _text_encoder(sd, name, dtype, path):
    from .family import WanTextEncoder
    from .text_encoder import load_text_encoder
    return WanTextEncoder(load_text_encoder(path, dtype=dtype, state_dict=sd), name)


FAMILY = register(Family("wan", (
    Kind("a Wan2.1 diffusion model", "model", _is_dit),
    Kind("a Wan2.1 VAE", "vae", _is_vae),
    Kind("a UMT5 text encoder (Wan2.1)", "text_encoder", _is_umt5),
), {"model": _model, "vae": _vae, "text_encoder": _text_encoder}))
