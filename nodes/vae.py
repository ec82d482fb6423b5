"""Decode Video."""
from __future__ import annotations

from ..models.common.family import check_same_family
from ..models.common.video import to_image_batch
from .bridge import CATEGORY, Progress, device, free_memory, offload_device


class DecodeVideo:
    DISPLAY_NAME = "Decode Video"
    CATEGORY = f"{CATEGORY}/latent"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    FUNCTION = "decode"
    DESCRIPTION = ("Decodes a latent video to frames, latent frame by latent frame (the causal "
                   "VAE's cache keeps memory bounded). Frames of all batch items are concatenated.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": ("VF_VAE",), "latent": ("LATENT",)}}

    def decode(self, vae, latent):
        samples = latent["samples"]
        check_same_family(vae=vae, latent=latent.get("vf_family", vae.family))
        vae.to(device())
        try:
            n = samples.shape[2] * samples.shape[0]
            bar = Progress(n)
            frames = []
            for b in range(samples.shape[0]):
                video = vae.decode(samples[b:b + 1],
                                   callback=lambda i, t, b=b: bar(b * t + i + 1, n))
                frames.append(video.to(offload_device()))
        finally:
            vae.to(offload_device())
            free_memory()
        return (to_image_batch(frames),)


NODES = {"VFDecodeVideo": DecodeVideo}
