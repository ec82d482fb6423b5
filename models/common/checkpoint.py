"""Safe checkpoint reading: safetensors (memory-mapped) or `.pth` with weights_only=True.

Never unpickles code. Errors name the file and what was expected.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Iterable

import torch
from safetensors.torch import load_file

from .errors import VideoForgeError

SAFETENSORS_EXT = (".safetensors", ".sft")
PICKLE_EXT = (".pth", ".pt", ".bin", ".ckpt")


def _check_safetensors_header(path: str) -> None:
    """Validate the header and total size first so a truncated file gives a clear error
    instead of a segfault-prone mmap read or an opaque Rust message."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise VideoForgeError(f"{path}: not a safetensors file (only {size} bytes).")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 * 1024 * 1024:
            raise VideoForgeError(f"{path}: corrupt or truncated safetensors header "
                                  f"(header says {n} bytes, file has {size}). Re-download the file.")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise VideoForgeError(f"{path}: corrupt safetensors header ({e}). Re-download the file.")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise VideoForgeError(f"{path}: truncated safetensors file: tensors need {8 + n + end} bytes, "
                              f"the file has {size}. The download is incomplete; download it again.")


def read_metadata(path: str) -> dict[str, str]:
    """The `__metadata__` dict of a safetensors file ({} for other formats)."""
    if not path.lower().endswith(SAFETENSORS_EXT):
        return {}
    _check_safetensors_header(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)).get("__metadata__", {}) or {}


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read every tensor of a checkpoint on CPU.

    safetensors are memory-mapped (tensors are read from disk only when touched);
    `.pth/.pt/.bin/.ckpt` go through `torch.load(weights_only=True, mmap=True)`, which refuses
    pickled code. A folder of shards (`*.safetensors`, e.g. the official Wan-AI
    `diffusion_pytorch_model-0000x-of-0000y.safetensors`) is merged.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        shards = sorted(f for f in os.listdir(path) if f.endswith(SAFETENSORS_EXT))
        if not shards:
            raise VideoForgeError(f"{path}: folder has no .safetensors files.")
        sd: dict[str, torch.Tensor] = {}
        for s in shards:
            sd.update(load_state_dict(os.path.join(path, s)))
        return sd
    if not os.path.isfile(path):
        raise VideoForgeError(f"{path}: file not found.")
    low = path.lower()
    if low.endswith(SAFETENSORS_EXT):
        _check_safetensors_header(path)
        try:
            return load_file(path, device="cpu")
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise VideoForgeError(f"{path}: cannot read safetensors file ({e}).") from e
    if low.endswith(PICKLE_EXT):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            # Old (non-zip) .pth files cannot be memory-mapped; still weights_only.
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001
                raise VideoForgeError(f"{path}: cannot load as a weights-only PyTorch file ({e}). "
                                      "Files that need pickled code are refused for safety; "
                                      "use a .safetensors version.") from e
        except Exception as e:  # noqa: BLE001
            raise VideoForgeError(f"{path}: cannot load as a weights-only PyTorch file ({e}). "
                                  "Files that need pickled code are refused for safety; "
                                  "use a .safetensors version.") from e
        for key in ("state_dict", "model", "module"):
            if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
                obj = obj[key]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise VideoForgeError(f"{path}: expected a dict of tensors (a state dict).")
        return obj
    raise VideoForgeError(f"{path}: unsupported file type; expected .safetensors (preferred) or .pth.")


def strip_prefix(sd: dict[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
    """Remove the first prefix that every key (ignoring non-matching extras) starts with.

    ComfyUI checkpoints carry e.g. `model.diffusion_model.`; keys without the prefix are dropped
    only when most keys have it (such files also hold VAE / text-encoder parts).
    """
    for p in prefixes:
        hits = [k for k in sd if k.startswith(p)]
        if hits and len(hits) * 2 >= len(sd):
            return {k[len(p):]: sd[k] for k in hits}
    return sd


def has_keys(sd: dict, *keys: str) -> bool:
    return all(k in sd for k in keys)
