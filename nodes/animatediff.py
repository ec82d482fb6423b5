"""Load SD Checkpoint / Apply Motion Module / Load Motion LoRA (AnimateDiff)."""
from __future__ import annotations

import os

from ..models import loader
from ..models.animatediff.motion import MotionSet
from ..models.common.errors import VideoForgeError
from ..models.sampling.discrete import BETA_SCHEDULES
from .bridge import CATEGORY, auto_dtype, files, resolve
from .loaders import DTYPES


class LoadCheckpoint:
    DISPLAY_NAME = "Load SD Checkpoint"
    CATEGORY = f"{CATEGORY}/loaders"
    RETURN_TYPES = ("VF_MODEL", "VF_TEXT_ENCODER", "VF_VAE")
    RETURN_NAMES = ("model", "text_encoder", "vae")
    FUNCTION = "load"
    DESCRIPTION = ("Loads a Stable Diffusion 1.5 single-file checkpoint from models/checkpoints "
                   "(v1-5-pruned-emaonly.safetensors or any SD1.5 fine-tune): its UNet, CLIP-L "
                   "text encoder and VAE. Add Apply Motion Module to animate it (AnimateDiff).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ckpt_name": (files("checkpoints"), {"tooltip": "e.g. v1-5-pruned-emaonly.safetensors"}),
            "dtype": (DTYPES[:4], {"default": "auto", "tooltip": "Storage dtype of the UNet and "
                      "text encoder; auto keeps the file's."}),
        }}

    def load(self, ckpt_name: str, dtype: str):
        return loader.load_checkpoint(resolve("checkpoints", ckpt_name), dtype, auto_dtype("vae", "auto"))


class ApplyMotionModule:
    DISPLAY_NAME = "Apply Motion Module"
    CATEGORY = f"{CATEGORY}/animatediff"
    RETURN_TYPES = ("VF_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "apply"
    DESCRIPTION = ("Turns a Stable Diffusion 1.5 model into a video model by inserting an "
                   "AnimateDiff motion module (v1 / v2 / v3, detected from the file) from "
                   "models/animatediff_models. The base model is not modified. Clips longer than "
                   "the module's length (16 frames trained; 24 / 32 positions) need Context Options.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("VF_MODEL",),
            "motion_module": (files("animatediff_models"), {"tooltip":
                              "e.g. mm_sd_v15_v2.ckpt or v3_sd15_mm.ckpt"}),
            "motion_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                             "tooltip": "Scales the temporal attention's logits: above 1 sharper "
                             "(more motion), below 1 flatter (calmer)."}),
            "beta_schedule": (list(BETA_SCHEDULES), {"default": "linear", "tooltip":
                              "Noise schedule to sample with: linear is what AnimateDiff's "
                              "modules were trained with (official configs); scaled_linear is "
                              "SD1.5's own."}),
        }, "optional": {
            "motion_lora": ("VF_MOTION_LORA", {"tooltip": "One or more MotionLoRAs (Load Motion LoRA)."}),
        }}

    def apply(self, model, motion_module: str, motion_scale: float, beta_schedule: str,
              motion_lora=None):
        if not hasattr(model, "with_motion"):
            raise VideoForgeError(f"{getattr(model, 'name', 'the model')} is a {model.family} "
                                  "model; motion modules go into Stable Diffusion 1.5 checkpoints "
                                  "(Load SD Checkpoint).")
        path = resolve("animatediff_models", motion_module)
        mm = loader.load_motion_module(path)
        loras = [(lora, strength) for _, lora, strength in (motion_lora or [])]
        motion = MotionSet(mm, os.path.basename(path), scale=motion_scale, loras=loras)
        return (model.with_motion(motion, beta_schedule),)


class LoadMotionLoRA:
    DISPLAY_NAME = "Load Motion LoRA"
    CATEGORY = f"{CATEGORY}/animatediff"
    RETURN_TYPES = ("VF_MOTION_LORA",)
    RETURN_NAMES = ("motion_lora",)
    FUNCTION = "load"
    DESCRIPTION = ("Loads an AnimateDiff MotionLoRA (camera moves such as v2_lora_ZoomIn.ckpt) from "
                   "models/animatediff_motion_lora. Chain several through prev_motion_lora; "
                   "connect the last to Apply Motion Module.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lora_name": (files("animatediff_motion_lora"), {"tooltip": "e.g. v2_lora_PanLeft.ckpt"}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
        }, "optional": {
            "prev_motion_lora": ("VF_MOTION_LORA",),
        }}

    def load(self, lora_name: str, strength: float, prev_motion_lora=None):
        lora = loader.load_motion_lora(resolve("animatediff_motion_lora", lora_name))
        return (list(prev_motion_lora or []) + [(lora_name, lora, strength)],)


NODES = {"VFLoadCheckpoint": LoadCheckpoint, "VFApplyMotionModule": ApplyMotionModule,
         "VFLoadMotionLoRA": LoadMotionLoRA}
