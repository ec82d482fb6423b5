"""HunyuanVideo model family: DiT (T2V, I2V concat / token replace), causal 3D VAE, and a text
encoder made of two files (llava-llama-3 + CLIP-L)."""
from ..common.registry import Family, Kind, register


def _is_dit(sd) -> bool:
    from .convert import is_hunyuan_dit
    return is_hunyuan_dit(sd)


def _is_vae(sd) -> bool:
    from .vae import is_hunyuan_vae
    return is_hunyuan_vae(sd)


def _is_llama(sd) -> bool:
    from .text_encoder import detect_llama
    return detect_llama(sd) is not None


def _model(sd, name, dtype, path):
    from .family import build_model
    return build_model(sd, name, dtype)


def _vae(sd, name, dtype, path):
    from .vae import load_hunyuan_vae
    return load_hunyuan_vae(sd, name, dtype)


def _text_encoder(sd, name, dtype, path):
    from ..common.errors import VideoForgeError
    raise VideoForgeError(f"{name} is HunyuanVideo's LLM text encoder; it works together with "
                          "clip_l.safetensors: load both with Load Text Encoders (LLM + CLIP).")


def _text_encoder_pair(llm, clip, name, dtype, paths):
    from .text_encoder import load_hunyuan_text_encoder
    return load_hunyuan_text_encoder(llm, clip, name, dtype)


FAMILY = register(Family("hunyuan", (
    Kind("a HunyuanVideo diffusion model", "model", _is_dit),
    Kind("a HunyuanVideo VAE", "vae", _is_vae),
    Kind("the llava-llama-3 text encoder (HunyuanVideo)", "text_encoder", _is_llama),
), {"model": _model, "vae": _vae, "text_encoder": _text_encoder,
    "text_encoder_pair": _text_encoder_pair}))
