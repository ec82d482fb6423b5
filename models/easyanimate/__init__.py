"""EasyAnimate V5.1 model family (MMDiT transformer, Qwen2-VL text encoder, MagVIT VAE)."""
from ..common.registry import Family, Kind, register


def _is_dit(sd) -> bool:
    from .convert import is_easyanimate_dit
    return is_easyanimate_dit(sd)


def _is_vae(sd) -> bool:
    from ..common.checkpoint import strip_prefix
    from .vae import is_easyanimate_vae
    return is_easyanimate_vae(strip_prefix(sd, ("first_stage_model.", "vae.")))


def _is_qwen2vl(sd) -> bool:
    from .text_encoder import detect_qwen2vl
    return detect_qwen2vl(sd) is not None


def _model(sd, name, dtype, path):
    from .family import build_model
    return build_model(sd, name, dtype)


def _vae(sd, name, dtype, path):
    from .vae import load_easyanimate_vae
    return load_easyanimate_vae(sd, name, dtype)


def _text_encoder(sd, name, dtype, path):
    from .text_encoder import load_easyanimate_text_encoder
    return load_easyanimate_text_encoder(sd, name, dtype, path=path)


FAMILY = register(Family("easyanimate", (
    Kind("an EasyAnimate V5.1 transformer", "model", _is_dit),
    Kind("an EasyAnimate MagVIT VAE", "vae", _is_vae),
    Kind("a Qwen2-VL text encoder (EasyAnimate V5.1)", "text_encoder", _is_qwen2vl),
), {"model": _model, "vae": _vae, "text_encoder": _text_encoder}))
