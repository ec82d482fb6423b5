"""EasyAnimate V5.1 image-to-video (InP) and control conditioning, built as the reference
pipelines build it (diffusers `EasyAnimateInpaintPipeline` / `EasyAnimateControlPipeline`, the
official `get_image_to_video_latent` / `get_video_to_video_latent`):

* InP, 17 channels: ``[mask (1) | masked-video latent (16)]``. The video is the start image on
  every frame (the end image on the last); the frames to generate are set to -1, the rest get
  the reference's small noise augmentation, then it is VAE-encoded. The mask is 1 on given
  frames, resized to the latent grid with the first frame alone (V5.1's
  `resize_inpaint_mask_directly`), times the VAE scaling factor.
* Control, 32 channels: ``[control-video latent (16) | reference-image latent (16)]``; the
  reference image fills latent frame 0 only, zeros without one.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..common.errors import VideoForgeError
from ..common.tiling import TilePlan
from .vae import LATENT_FORMAT, SCALING_FACTOR

# The pipelines' default `noise_aug_strength` for the reference frames of InP models.
NOISE_AUG_STRENGTH = 0.0563
# Image To Video Latent has no seed of its own; the augmentation noise is drawn from this one
# (the reference draws it from the pipeline's generator).
NOISE_AUG_SEED = 0

Progress = Callable[[int, int], None] | None


def add_reference_noise(video: torch.Tensor, strength: float, seed: int) -> torch.Tensor:
    """Gaussian noise of std `strength` on every pixel except the -1 ("generate") ones."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(video.shape, generator=g, dtype=video.dtype) * strength
    return video + torch.where(video == -1, torch.zeros_like(video), noise)


def resize_mask(mask: torch.Tensor, t: int, h: int, w: int) -> torch.Tensor:
    """[B, 1, F, H, W] pixel mask -> [B, 1, T, h, w]: the first frame alone, the rest together
    (trilinear, as the reference's `resize_mask(..., process_first_frame_only=True)`)."""
    first = F.interpolate(mask[:, :, :1], size=(1, h, w), mode="trilinear", align_corners=False)
    if t == 1:
        return first
    rest = F.interpolate(mask[:, :, 1:], size=(t - 1, h, w), mode="trilinear", align_corners=False)
    return torch.cat([first, rest], dim=2)


def inpaint_condition(vae: Any, start: torch.Tensor, end: torch.Tensor | None, frames: int,
                      plan: TilePlan | None = None, callback: Progress = None,
                      strength: float = NOISE_AUG_STRENGTH, seed: int = NOISE_AUG_SEED) -> torch.Tensor:
    """start / end: [3, H, W] in [-1, 1] at the video size -> [1, 17, T, H/8, W/8]."""
    _, hp, wp = start.shape
    LATENT_FORMAT.check(frames, hp, wp)
    if end is not None and end.shape != start.shape:
        raise VideoForgeError(f"end image {tuple(end.shape)} must match the start image "
                              f"{tuple(start.shape)} (both are resized to the video size).")
    if end is not None and frames < 2:
        raise VideoForgeError("a start and an end image need at least 5 frames.")
    given = torch.zeros(1, 1, frames, hp, wp)  # 1 where a frame is given
    given[:, :, 0] = 1
    video = start[None, :, None].expand(1, 3, frames, hp, wp).clone()
    if end is not None:
        given[:, :, -1] = 1
        video[:, :, -1] = end
    masked = torch.where(given.expand_as(video) > 0.5, video, torch.full_like(video, -1.0))
    masked = add_reference_noise(masked, strength, seed)
    lat = vae.encode(masked, plan=plan, callback=callback).float().cpu()  # [1, 16, T, h, w]
    t, h, w = lat.shape[2:]
    mask = resize_mask(given, t, h, w) * SCALING_FACTOR
    return torch.cat([mask, lat], dim=1)


def control_condition(vae: Any, control: torch.Tensor, reference: torch.Tensor | None,
                      plan: TilePlan | None = None, callback: Progress = None) -> torch.Tensor:
    """control: [1, 3, F, H, W] in [-1, 1]; reference: [3, H, W] or None -> [1, 32, T, h, w]."""
    _, _, frames, hp, wp = control.shape
    LATENT_FORMAT.check(frames, hp, wp)
    lat = vae.encode(control, plan=plan, callback=callback).float().cpu()
    ref = torch.zeros_like(lat)
    if reference is not None:
        if tuple(reference.shape[1:]) != (hp, wp):
            raise VideoForgeError(f"reference image {tuple(reference.shape[1:])} must match the "
                                  f"control video's size {(hp, wp)}.")
        ref[:, :, :1] = vae.encode(reference[None, :, None], plan=plan).float().cpu()
    return torch.cat([lat, ref], dim=1)
