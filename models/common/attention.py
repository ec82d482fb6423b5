"""One attention dispatch for every family: PyTorch SDPA by default, SageAttention or
FlashAttention when importable and asked for (or `auto` on CUDA)."""
from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from .errors import VideoForgeError

BACKENDS = ("auto", "sdpa", "sage", "flash")


def available_backends() -> list[str]:
    found = ["auto", "sdpa"]
    if importlib.util.find_spec("sageattention") is not None:
        found.append("sage")
    if importlib.util.find_spec("flash_attn") is not None:
        found.append("flash")
    return found


def _resolve(backend: str, q: torch.Tensor, mask: torch.Tensor | None) -> str:
    if backend not in BACKENDS:
        raise VideoForgeError(f"attention backend {backend!r}: expected one of {BACKENDS}.")
    # sage / flash only exist for CUDA half precision without masks; fall back to SDPA otherwise.
    gpu_half = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and mask is None
    if backend == "auto":
        if not gpu_half:
            return "sdpa"
        backend = "sage" if "sage" in available_backends() else "sdpa"
    if backend in ("sage", "flash"):
        if backend not in available_backends():
            raise VideoForgeError(f"attention backend {backend!r} is not installed; "
                                  "pip install sageattention / flash-attn, or choose 'sdpa'.")
        if not gpu_half:
            return "sdpa"
    return backend


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """Multi-head attention.

    Args:
        q: [B, Lq, H, D]; k, v: [B, Lk, H, D]
        mask: optional bool [B, Lk] (True = attend) or additive/bool mask broadcastable to
            [B, H, Lq, Lk]
    Returns:
        [B, Lq, H * D]
    """
    b, lq, h, d = q.shape
    which = _resolve(backend, q, mask)
    if which == "sage":
        from sageattention import sageattn  # type: ignore
        out = sageattn(q, k, v, tensor_layout="NHD")
    elif which == "flash":
        from flash_attn import flash_attn_func  # type: ignore
        out = flash_attn_func(q, k, v)
    else:
        if mask is not None and mask.dim() == 2:
            mask = mask[:, None, None, :]
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
        ).transpose(1, 2)
    return out.reshape(b, lq, h * d)
