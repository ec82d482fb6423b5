"""Wan2.1 image-to-video (and first-last-frame) conditioning, built as the official code builds it
(`wan/image2video.py`, `wan/first_last_frame2video.py`):

    y    = [mask (4) | VAE latent of the start image, grey frames, optional end image (16)]
    clip = CLIP-H penultimate tokens of the start (and end) image, [1, 257 (x2), 1280]

The model input is then [noise (16) | y (20)] = 36 channels.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..common.errors import VideoForgeError
from ..common.tiling import TilePlan
from .vae import LATENT_FORMAT


def frame_mask(frames: int, h: int, w: int, end: bool) -> torch.Tensor:
    """[4, T, h, w]: 1 where a pixel frame is given (first, and last with an end image).

    Pixel frames are folded 4 per latent frame; the first frame is repeated 4 times so the lone
    first latent frame gets 4 mask channels like the others (official layout)."""
    m = torch.zeros(frames, h, w)
    m[0] = 1
    if end:
        m[-1] = 1
    m = torch.cat([m[:1].expand(4, h, w), m[1:]], dim=0)  # [F + 3, h, w] = [4T, h, w]
    return m.view(-1, 4, h, w).transpose(0, 1).contiguous()


def image_condition(vae: Any, start: torch.Tensor, end: torch.Tensor | None, frames: int,
                    plan: TilePlan | None = None,
                    callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """start / end: [3, H, W] in [-1, 1] at the target size -> y [1, 20, T, H/8, W/8].

    The video that is encoded holds the given frames and zeros (mid-grey) elsewhere."""
    LATENT_FORMAT.check(frames, start.shape[1], start.shape[2])
    if frames < 2 and end is not None:
        raise VideoForgeError("a start and an end image need at least 5 frames.")
    _, hp, wp = start.shape
    video = torch.zeros(1, 3, frames, hp, wp)
    video[0, :, 0] = start
    if end is not None:
        if end.shape != start.shape:
            raise VideoForgeError(f"end image {tuple(end.shape)} must match the start image "
                                  f"{tuple(start.shape)} (both are resized to the video size).")
        video[0, :, -1] = end
    lat = vae.encode(video, plan=plan, callback=callback).float().cpu()  # [1, 16, T, h, w]
    mask = frame_mask(frames, hp // 8, wp // 8, end is not None)
    return torch.cat([mask[None], lat], dim=1)
