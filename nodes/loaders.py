"""Load Video Model / Load Video VAE / Load Text Encoder / Load CLIP Vision."""
from __future__ import annotations

from ..models import loader
from ..models.common.attention import BACKENDS
from .bridge import CATEGORY, auto_dtype, files, resolve

DTYPES = ["auto", "bf16", "fp16", "fp32", "fp8_e4m3fn"]


class LoadVideoModel:
    DISPLAY_NAME = "Load Video Model"
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = ("VF_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"
    DESCRIPTION = ("Loads a video diffusion model from models/diffusion_models. The family and "
                   "variant (e.g. Wan2.1 T2V 1.3B) are detected from the file's keys.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (files("diffusion_models"), {"tooltip": "e.g. wan2.1_t2v_1.3B_fp16.safetensors"}),
            "dtype": (DTYPES, {"default": "auto", "tooltip": "Storage dtype of the weights. auto keeps "
                               "the file's; fp8_e4m3fn halves memory, math still runs in bf16/fp32."}),
            "attention": (list(BACKENDS), {"default": "auto",
                                           "tooltip": "auto: SageAttention on CUDA when installed, else PyTorch SDPA."}),
        }}

    def load(self, model_name: str, dtype: str, attention: str):
        return (loader.load_video_model(resolve("diffusion_models", model_name), dtype, attention),)


class LoadVideoVAE:
    DISPLAY_NAME = "Load Video VAE"
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = ("VF_VAE",)
    RETURN_NAMES = ("vae",)
    FUNCTION = "load"
    DESCRIPTION = "Loads a video VAE from models/vae (e.g. wan_2.1_vae.safetensors)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae_name": (files("vae"),),
            "dtype": (["auto", "bf16", "fp16", "fp32"], {"default": "auto",
                      "tooltip": "auto: fp32 on CPU, bf16 on GPU."}),
        }}

    def load(self, vae_name: str, dtype: str):
        return (loader.load_video_vae(resolve("vae", vae_name), auto_dtype("vae", dtype)),)


class LoadTextEncoder:
    DISPLAY_NAME = "Load Text Encoder"
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = ("VF_TEXT_ENCODER",)
    RETURN_NAMES = ("text_encoder",)
    FUNCTION = "load"
    DESCRIPTION = ("Loads a text encoder from models/text_encoders (e.g. umt5_xxl_fp16.safetensors "
                   "or umt5_xxl_fp8_e4m3fn_scaled.safetensors for Wan2.1).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder_name": (files("text_encoders"),),
            "dtype": (["auto", "bf16", "fp32"], {"default": "auto",
                      "tooltip": "auto: fp32 on CPU, bf16 on GPU (UMT5 overflows in fp16)."}),
        }}

    def load(self, text_encoder_name: str, dtype: str):
        return (loader.load_text_encoder(resolve("text_encoders", text_encoder_name),
                                         auto_dtype("text_encoder", dtype)),)


class LoadDualTextEncoder:
    DISPLAY_NAME = "Load Text Encoders (LLM + CLIP)"
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = ("VF_TEXT_ENCODER",)
    RETURN_NAMES = ("text_encoder",)
    FUNCTION = "load"
    DESCRIPTION = ("Loads a text encoder made of two files from models/text_encoders, e.g. "
                   "HunyuanVideo's llava_llama3_fp8_scaled.safetensors (or _fp16) with "
                   "clip_l.safetensors. The order does not matter.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder_name": (files("text_encoders"), {"tooltip": "e.g. llava_llama3_fp8_scaled.safetensors"}),
            "clip_name": (files("text_encoders"), {"tooltip": "e.g. clip_l.safetensors"}),
            "dtype": (["auto", "bf16", "fp16", "fp32"], {"default": "auto", "tooltip":
                      "auto: fp32 on CPU, the model's own choice on GPU (HunyuanVideo: fp16)."}),
        }}

    def load(self, text_encoder_name: str, clip_name: str, dtype: str):
        return (loader.load_text_encoders(resolve("text_encoders", text_encoder_name),
                                          resolve("text_encoders", clip_name),
                                          auto_dtype("text_encoder", dtype)),)


class LoadClipVision:
    DISPLAY_NAME = "Load CLIP Vision"
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = ("VF_CLIP_VISION",)
    RETURN_NAMES = ("clip_vision",)
    FUNCTION = "load"
    DESCRIPTION = ("Loads a CLIP vision encoder from models/clip_vision for image-to-video "
                   "(Wan2.1 I2V / FLF2V: clip_vision_h.safetensors, or the official "
                   "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_name": (files("clip_vision"), {"tooltip": "e.g. clip_vision_h.safetensors"}),
            "dtype": (["auto", "bf16", "fp16", "fp32"], {"default": "auto",
                      "tooltip": "auto: fp32 on CPU, fp16 on GPU (as official Wan)."}),
        }}

    def load(self, clip_name: str, dtype: str):
        return (loader.load_clip_vision(resolve("clip_vision", clip_name),
                                        auto_dtype("clip_vision", dtype)),)


NODES = {"VFLoadVideoModel": LoadVideoModel, "VFLoadVideoVAE": LoadVideoVAE,
         "VFLoadTextEncoder": LoadTextEncoder, "VFLoadDualTextEncoder": LoadDualTextEncoder,
         "VFLoadClipVision": LoadClipVision}
