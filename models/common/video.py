"""Conversions between model video tensors and ComfyUI IMAGE batches."""
from __future__ import annotations

import torch


def to_image_batch(videos: list[torch.Tensor]) -> torch.Tensor:
    """[B, 3, F, H, W] in [-1, 1] (list, concatenated over B) -> IMAGE [B*F, H, W, 3] in [0, 1]."""
    v = torch.cat(videos, dim=0)
    return ((v.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).flatten(0, 1).contiguous()

