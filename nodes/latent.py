"""Empty Video Latent."""
from __future__ import annotations

import torch

from .bridge import CATEGORY, offload_device


class EmptyVideoLatent:
    DISPLAY_NAME = "Empty Video Latent"
    CATEGORY = f"{CATEGORY}/latent"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "create"
    DESCRIPTION = ("An all-zero latent video shaped for the model's VAE (Wan2.1: frames 4k+1, "
                   "width/height multiples of 16).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("VF_MODEL",),
            "width": ("INT", {"default": 832, "min": 16, "max": 4096, "step": 16}),
            "height": ("INT", {"default": 480, "min": 16, "max": 4096, "step": 16}),
            "frames": ("INT", {"default": 81, "min": 1, "max": 1025, "step": 4}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64}),
        }}

    def create(self, model, width: int, height: int, frames: int, batch_size: int):
        shape = model.latent.shape(batch_size, frames, height, width)  # raises with advice
        return ({"samples": torch.zeros(shape, device=offload_device()), "vf_family": model.family},)


NODES = {"VFEmptyVideoLatent": EmptyVideoLatent}
