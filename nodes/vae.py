"""Decode Video / Encode Video (tiled in space and time, automatic by default)."""
from __future__ import annotations

import torch

from ..models.common.family import check_same_family
from ..models.common.memory import describe_latent, vae_estimate
from ..models.common.tiling import TilePlan, auto_plan
from ..models.common.video import check_finite, to_image_batch, to_video
from .bridge import (CATEGORY, Progress, check_memory, free_bytes, offload_device, oom_guard,
                     role_device, use)

# Share of the free memory a decode may plan to use (weights are already loaded; the output
# video and allocator slack need the rest).
BUDGET_SHARE = 0.5

TILING_INPUTS = {
    "auto": ("BOOLEAN", {"default": True, "tooltip": "Pick tile sizes from the free memory (untiled "
                         "when it fits). Off: use the sizes below."}),
    "tile_size": ("INT", {"default": 512, "min": 0, "max": 4096, "step": 8, "tooltip":
                          "Spatial tile side in pixels (multiple of 8); 0 = whole frame."}),
    "overlap": ("INT", {"default": 64, "min": 0, "max": 2048, "step": 8, "tooltip":
                        "Pixels shared by neighbouring tiles, blended with linear ramps."}),
    "temporal_size": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 4, "tooltip":
                              "Frames per temporal chunk (multiple of 4); 0 = whole clip. The Wan "
                              "VAE streams frames through its causal cache exactly, so 0 is best there."}),
    "temporal_overlap": ("INT", {"default": 8, "min": 0, "max": 1024, "step": 4, "tooltip":
                                 "Frames a chunk re-reads before its own as cache warm-up (dropped)."}),
}


TILING_ADVICE = ("turn auto on, or use a smaller tile_size / temporal_size, fewer frames or a "
                 "smaller size")


def check_vae_memory(what: str, vae, plan: TilePlan, frames: int, height: int, width: int,
                     pixel_copies: float):
    """Refuse a VAE pass that cannot fit (see models/common/memory.vae_estimate); returns the
    estimate (its `what` / `advice` serve the out-of-memory guard too)."""
    dev = role_device("vae")
    est = vae_estimate(what, vae, plan, frames, height, width, dev, pixel_copies, TILING_ADVICE)
    check_memory(est, dev)
    return est


def tile_plan(vae, height: int, width: int, frames: int, auto: bool, tile_size: int, overlap: int,
              temporal_size: int, temporal_overlap: int) -> TilePlan:
    """The node widgets -> a validated TilePlan (auto: sized to the free memory)."""
    if auto:
        plan = auto_plan(vae.latent, height, width, frames, vae.bytes_per_pixel,
                         BUDGET_SHARE * free_bytes(role_device("vae")), vae.streams_time)
    else:
        plan = TilePlan(tile_size, overlap, temporal_size, temporal_overlap)
    plan.validate(vae.latent)
    return plan


class DecodeVideo:
    DISPLAY_NAME = "Decode Video"
    CATEGORY = f"{CATEGORY}/latent"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    FUNCTION = "decode"
    DESCRIPTION = ("Decodes a latent video to frames, tiled in space (blended overlaps) and, for "
                   "VAEs that need it, in time; auto sizes tiles to the free memory. Frames of all "
                   "batch items are concatenated.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": ("VF_VAE",), "latent": ("LATENT",), **TILING_INPUTS}}

    def decode(self, vae, latent, auto=True, tile_size=512, overlap=64, temporal_size=0,
               temporal_overlap=8):
        samples = latent["samples"]
        check_same_family(vae=vae, latent=latent.get("vf_family", vae.family))
        fmt = vae.latent
        b, _, t, h, w = samples.shape
        check_finite(samples, "Decode Video: the latent")
        height, width, f = h * fmt.space_ratio, w * fmt.space_ratio, fmt.pixel_frames(t)
        plan = tile_plan(vae, height, width, f, auto, tile_size, overlap, temporal_size,
                         temporal_overlap)
        # the decoded batch, its concatenation and the IMAGE batch made from it
        est = check_vae_memory(f"Decode Video ({describe_latent(fmt, tuple(samples.shape))})",
                               vae, plan, b * f, height, width, pixel_copies=3)
        with oom_guard(est.what, est.advice):
            use(vae, memory_required=est.total - est.parts["weights"])
            bar, frames = Progress(1), []
            for i in range(b):
                video = vae.decode(samples[i:i + 1], plan=plan,
                                   callback=lambda d, n, i=i: bar(i * n + d, b * n))
                frames.append(video.to(offload_device()))
            images = to_image_batch(frames)
        del frames
        check_finite(images, "Decode Video: the decoded video (a VAE overflow: pick bf16 or fp32 "
                     "in Load Video VAE)", frame_dim=0, name="frame")
        return (images,)


class EncodeVideo:
    DISPLAY_NAME = "Encode Video"
    CATEGORY = f"{CATEGORY}/latent"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"
    DESCRIPTION = ("Encodes frames (IMAGE batch) to a latent video, e.g. for video-to-video with "
                   "Sample Video's denoise < 1. Frames must fit the VAE (Wan: 4k+1 frames, sides "
                   "multiples of 8); tiled like Decode Video.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": ("VF_VAE",), "frames": ("IMAGE",), **TILING_INPUTS}}

    def encode(self, vae, frames, auto=True, tile_size=512, overlap=64, temporal_size=0,
               temporal_overlap=8):
        video = to_video(frames, "frames")  # [1, 3, F, H, W]
        f, h, w = video.shape[2:]
        plan = tile_plan(vae, h, w, f, auto, tile_size, overlap, temporal_size, temporal_overlap)
        # the video (made already) and its cast / move to the VAE
        est = check_vae_memory(f"Encode Video ({w}x{h}, {f} frames)", vae, plan, f, h, w,
                               pixel_copies=1)
        with oom_guard(est.what, est.advice):
            use(vae, memory_required=est.total - est.parts["weights"])
            bar = Progress(1)
            lat = vae.encode(video, plan=plan, callback=lambda d, n: bar(d, n))
        return ({"samples": lat.to(offload_device(), torch.float32), "vf_family": vae.family},)


NODES = {"VFDecodeVideo": DecodeVideo, "VFEncodeVideo": EncodeVideo}
