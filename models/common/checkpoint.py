"""Safe checkpoint reading: safetensors (memory-mapped) or `.pth` with weights_only=True.

Never unpickles code. Errors name the file and what was expected.
"""
from __future__ import annotations

import json
import mmap
import os
import re
import struct
from typing import Iterable

import torch

from .errors import VideoForgeError

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}

SAFETENSORS_EXT = (".safetensors", ".sft")
PICKLE_EXT = (".pth", ".pt", ".bin", ".ckpt")


def _check_safetensors_header(path: str) -> tuple[int, dict]:
    """Validate the header and total size first so a truncated file gives a clear error
    instead of a crash on a short mmap read. Returns (header length, header)."""
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
    return n, header


def _mmap_safetensors(path: str) -> dict[str, torch.Tensor]:
    """Zero-copy tensors over a copy-on-write memory map: nothing is read from disk until a
    tensor is used, so a 28 GB checkpoint does not need 28 GB of RAM to be opened, and weights
    that are only moved to the GPU or cast never sit in RAM twice."""
    n, header = _check_safetensors_header(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else b""
    out: dict[str, torch.Tensor] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise VideoForgeError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}.")
        start, stop = info["data_offsets"]
        count = (stop - start) // dtype.itemsize
        if count * dtype.itemsize != stop - start or count != _numel(info["shape"]):
            raise VideoForgeError(f"{path}: tensor {key!r} size does not match its shape; "
                                  "the file is corrupt.")
        t = torch.frombuffer(buf, dtype=dtype, count=count, offset=8 + n + start) if count \
            else torch.empty(0, dtype=dtype)
        out[key] = t.view(info["shape"])
    return out


def _numel(shape: list[int]) -> int:
    total = 1
    for s in shape:
        total *= s
    return total


def count_indexed(sd: dict[str, torch.Tensor], prefix: str) -> int:
    """How many numbered blocks `prefix{N}.` a state dict holds (1 + the largest N; 0 if none),
    e.g. `count_indexed(sd, "encoder.layers.")`."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = [int(m.group(1)) for k in sd if (m := pat.match(k))]
    return max(idx) + 1 if idx else 0


def encoder_block_widths(sd: dict[str, torch.Tensor], layer: str, conv: str, name: str,
                         what: str) -> tuple[tuple[int, ...], int]:
    """(width of each `encoder.down_blocks.N`, layers per block) of a 3-D causal VAE in the
    diffusers layout: block N's width is the output channels of its first layer's `conv`
    (e.g. layer "resnets", conv "conv1.conv"); layers are counted in block 0. Raises naming
    `name` / `what` when a block has no 3-D weight there."""
    widths = []
    for i in range(count_indexed(sd, "encoder.down_blocks.")):
        w = sd.get(f"encoder.down_blocks.{i}.{layer}.0.{conv}.weight")
        if w is None or w.dim() != 5:
            raise VideoForgeError(f"{name}: {what} encoder block {i} has no 3-D "
                                  f"{layer}.0.{conv} weight.")
        widths.append(int(w.shape[0]))
    return tuple(widths), count_indexed(sd, f"encoder.down_blocks.0.{layer}.")


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read every tensor of a checkpoint on CPU.

    safetensors are memory-mapped without copies (tensors are read from disk only when used);
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
    shards = shard_siblings(path)
    if len(shards) > 1:
        sd = {}
        for s in shards:
            sd.update(_mmap_safetensors(s))
        return sd
    low = path.lower()
    if low.endswith(SAFETENSORS_EXT):
        return _mmap_safetensors(path)
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


_SHARD = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})(?P<ext>\.safetensors)$")


def shard_siblings(path: str) -> list[str]:
    """All shards of a sharded checkpoint given any one of them (official Wan-AI files are
    `diffusion_pytorch_model-00001-of-00006.safetensors`); [path] when not sharded.
    A missing shard is an error that names it."""
    m = _SHARD.match(os.path.basename(path))
    if not m:
        return [path]
    folder, n = os.path.dirname(path), int(m["n"])
    names = [f"{m['stem']}-{i:05d}-of-{m['n']}{m['ext']}" for i in range(1, n + 1)]
    missing = [x for x in names if not os.path.isfile(os.path.join(folder, x))]
    if missing:
        raise VideoForgeError(f"{path} is shard {int(m['i'])} of {n}; missing {missing} in {folder}. "
                              "Download every shard into the same folder.")
    return [os.path.join(folder, x) for x in names]


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
