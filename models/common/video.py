"""Conversions between model video tensors and ComfyUI IMAGE batches."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import VideoForgeError


def to_image_batch(videos: list[torch.Tensor]) -> torch.Tensor:
    """[B, 3, F, H, W] in [-1, 1] (list, concatenated over B) -> IMAGE [B*F, H, W, 3] in [0, 1]."""
    v = torch.cat(videos, dim=0).float()  # a new tensor: the in-place steps below touch only it
    return v.clamp_(-1, 1).add_(1).div_(2).permute(0, 2, 3, 4, 1).flatten(0, 1).contiguous()


def clean_pixels(images: torch.Tensor) -> torch.Tensor:
    """The defined clean-up of IMAGE pixels, the same wherever an IMAGE enters (model inputs,
    preprocessors): NaN -> 0, +inf -> 1, -inf -> 0, and finite values clamped to 0..1."""
    return torch.nan_to_num(images, nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)


def check_finite(x: torch.Tensor, what: str, frame_dim: int = 2, name: str = "latent frame") -> None:
    """Raise a VideoForgeError naming the first frame of `x` that holds NaN / inf values.
    Latents are not cleaned up silently: a non-finite latent means something upstream broke
    (an overflowing dtype, a bad file), and zeros in its place would hide it."""
    bad = ~torch.isfinite(x)
    if not bool(bad.any()):
        return
    frames = bad.movedim(frame_dim, 0).flatten(1).any(1).nonzero().flatten().tolist()
    raise VideoForgeError(f"{what}: {name} {frames[0]} (of {x.shape[frame_dim]}) holds NaN / inf "
                          f"values ({len(frames)} such frame(s)). It came from upstream: a model "
                          "run in fp16 can overflow (pick bf16 or fp32 in the loader), or the "
                          "latent / image input is corrupt.")


def to_rgb(images: torch.Tensor, where: str = "image") -> torch.Tensor:
    """IMAGE batch [N, H, W, C] (or one [H, W, C] image) -> float32 [N, H, W, 3].
    C = 3 RGB; 4 RGBA (alpha ignored); 1 gray / 2 gray+alpha (replicated to RGB)."""
    if not isinstance(images, torch.Tensor):
        raise VideoForgeError(f"{where}: expected an IMAGE tensor [N, H, W, 3], got {type(images).__name__}.")
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4:
        raise VideoForgeError(f"{where}: expected an IMAGE batch [N, H, W, 3], got shape {tuple(images.shape)}.")
    n, h, w, c = images.shape
    if c not in (1, 2, 3, 4):
        hint = (" It looks channels-first [N, C, H, W]; ComfyUI IMAGEs are channels-last."
                if images.shape[1] in (1, 3, 4) else "")
        raise VideoForgeError(f"{where}: expected 1 (gray), 3 (RGB) or 4 (RGBA) channels in the last "
                              f"dimension, got shape {tuple(images.shape)}.{hint}")
    if n == 0 or h == 0 or w == 0:
        raise VideoForgeError(f"{where}: empty image batch {tuple(images.shape)}.")
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    elif not images.is_floating_point():
        raise VideoForgeError(f"{where}: expected float pixels in 0..1, got dtype {images.dtype}.")
    images = clean_pixels(images.float())
    if c == 4:
        images = images[..., :3]
    elif c in (1, 2):
        images = images[..., :1].expand(n, h, w, 3)
    return images


def to_video(images: torch.Tensor, where: str = "frames") -> torch.Tensor:
    """IMAGE batch [F, H, W, C] in 0..1 -> one video [1, 3, F, H, W] in [-1, 1] (RGB)."""
    return to_rgb(images, where).permute(3, 0, 1, 2)[None] * 2 - 1


FIT_MODES = ("crop", "pad", "stretch")


def fit_image(images: torch.Tensor, width: int, height: int, mode: str = "crop",
              where: str = "image") -> torch.Tensor:
    """IMAGE batch [N, H, W, C] -> [N, height, width, 3] in 0..1 (alpha dropped, gray to RGB).

    mode: "crop" scales to cover the target and centre-crops (no distortion, edges lost);
    "pad" scales to fit inside and pads with mid-grey (nothing lost; grey is what an image-to-
    video model sees for "no content"); "stretch" resizes to the target directly, as the
    official Wan code does. Bicubic, antialiased when shrinking; images smaller than the target
    are upscaled (softer, but valid).
    """
    if mode not in FIT_MODES:
        raise VideoForgeError(f"resize mode {mode!r}: expected one of {FIT_MODES}.")
    x = to_rgb(images, where).permute(0, 3, 1, 2)  # [N, 3, H, W]
    h, w = x.shape[2:]
    if (h, w) == (height, width):
        return x.permute(0, 2, 3, 1).contiguous()
    if mode == "stretch":
        sh, sw = height, width
    else:
        scale = (max if mode == "crop" else min)(height / h, width / w)
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        if mode == "crop":
            sh, sw = max(sh, height), max(sw, width)
        else:
            sh, sw = min(sh, height), min(sw, width)
    y = F.interpolate(x, size=(sh, sw), mode="bicubic", align_corners=False,
                      antialias=sh < h or sw < w).clamp(0, 1)
    if mode == "crop":
        top, left = (sh - height) // 2, (sw - width) // 2
        y = y[:, :, top:top + height, left:left + width]
    elif mode == "pad":
        out = y.new_full((y.shape[0], 3, height, width), 0.5)
        top, left = (height - sh) // 2, (width - sw) // 2
        out[:, :, top:top + sh, left:left + sw] = y
        y = out
    return y.permute(0, 2, 3, 1).contiguous()
