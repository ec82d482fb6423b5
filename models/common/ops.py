"""Injected layer operations: weights may be stored in a different dtype than the one the
math runs in (fp8 e4m3fn storage with bf16/fp32 compute, optional per-tensor scale as in
ComfyUI's `*_fp8_scaled` files). Layers cast their weights to the activation dtype on use,
so a model can be stored small and computed precise without a second copy in memory."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import VideoForgeError

DTYPES = {
    "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
    "fp8_e4m3fn": torch.float8_e4m3fn,
}


def parse_dtype(name: str) -> torch.dtype | None:
    """'auto' -> None (keep what the file has), else a torch dtype."""
    if name == "auto":
        return None
    if name not in DTYPES:
        raise VideoForgeError(f"dtype {name!r}: expected 'auto' or one of {list(DTYPES)}.")
    return DTYPES[name]


def _weight(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    w = layer.weight.to(device=x.device, dtype=x.dtype)
    scale = getattr(layer, "scale_weight", None)
    if scale is not None:
        w = w * scale.to(device=x.device, dtype=x.dtype)
    b = layer.bias.to(device=x.device, dtype=x.dtype) if layer.bias is not None else None
    return w, b


def _native(layer: nn.Module, x: torch.Tensor) -> bool:
    """Weights already usable as stored: same dtype as x (biases too: load_weights keeps 1-D
    tensors in float32, so a bf16 model's biases still need the cast) and no fp8 scale."""
    bias = layer.bias
    return (layer.weight.dtype == x.dtype and layer.scale_weight is None
            and (bias is None or bias.dtype == x.dtype))


class Linear(nn.Linear):
    """nn.Linear that computes in the input's dtype whatever the stored dtype."""
    scale_weight: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _native(self, x):
            return F.linear(x, self.weight, self.bias)
        w, b = _weight(self, x)
        return F.linear(x, w, b)


class _CastConv:
    """Convolution computing in the input's dtype whatever the stored dtype (mixed in first)."""
    scale_weight: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _native(self, x):
            return super().forward(x)
        w, b = _weight(self, x)
        return self._conv_forward(x, w, b)


class Conv3d(_CastConv, nn.Conv3d):
    pass


class Conv2d(_CastConv, nn.Conv2d):
    pass


class GroupNorm(nn.GroupNorm):
    """GroupNorm whose (float32-kept) affine parameters follow the activation dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return F.group_norm(x, self.num_groups, w, b, self.eps)


COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FP8_DTYPES = tuple(d for d in (getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None)) if d)
_DTYPE_NAMES = {"auto": None, "fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
                "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def parse_compute_dtype(dtype, where: str, what: str, default: torch.dtype) -> torch.dtype:
    """A text encoder's compute dtype from a loader value: "auto" / None -> `default`; fp8
    (a storage choice meant for the diffusion model) -> `default` too; else fp32 / fp16 / bf16
    (names or torch dtypes). `where` (file) and `what` ("the Qwen2-VL text encoder") name it in
    the error."""
    if isinstance(dtype, str):
        if dtype.startswith(("fp8", "float8")):
            dtype = None
        elif dtype not in _DTYPE_NAMES:
            raise VideoForgeError(f"{where}: dtype {dtype!r} not supported for {what}; use "
                                  "'auto', 'fp32', 'fp16' or 'bf16'.")
        else:
            dtype = _DTYPE_NAMES[dtype]
    if dtype is None or dtype in FP8_DTYPES:
        return default
    if dtype not in COMPUTE_DTYPES:
        raise VideoForgeError(f"{where}: compute dtype {dtype} not supported for {what}; use "
                              "float32, float16 or bfloat16.")
    return dtype


def compute_dtype_for(storage: torch.dtype, device: torch.device) -> torch.dtype:
    """fp8 / half storage computes in bf16 on GPUs; on CPU everything computes in fp32
    (CPU half matmuls are slow; fp16 overflows in some models' activations, e.g. Wan)."""
    if device.type == "cpu":
        return torch.float32
    if storage in (torch.float16, torch.float32):
        return storage
    return torch.bfloat16


def storage_dtype_of(sd: dict[str, torch.Tensor]) -> torch.dtype:
    """The dtype most weight matrices of a state dict are stored in."""
    counts: dict[torch.dtype, int] = {}
    for v in sd.values():
        if v.dim() >= 2:
            counts[v.dtype] = counts.get(v.dtype, 0) + v.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def mismatch_report(missing: list[str], unexpected: list[str], bad: list[str]) -> str:
    """'missing N keys (e.g. ...); unexpected ...; N shape mismatches (e.g. ...)' for errors."""
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
    if bad:
        parts.append(f"{len(bad)} shape mismatches (e.g. {bad[:2]})")
    return "; ".join(parts)


def load_weights(module: nn.Module, sd: dict[str, torch.Tensor], what: str,
                 storage: torch.dtype | None = None) -> None:
    """Load `sd` into `module` strictly, keeping fp8 storage and per-tensor `scale_weight`s.

    `storage`: dtype to keep 2-D+ weights in (None: as in the file); 1-D tensors (norms,
    biases) are kept in float32 for accuracy.
    Raises VideoForgeError naming missing / unexpected / mis-shaped keys.
    """
    own = module.state_dict()
    def is_scale(k: str) -> bool:
        return k == "scale_weight" or k.endswith(".scale_weight")

    # layer name ("" for the module itself) -> its per-tensor fp8 scale
    scales = {k[: -len("scale_weight")].rstrip("."): v for k, v in sd.items() if is_scale(k)}
    # `scale_input` (ComfyUI fp8 files) only matters for fp8 matmuls; we compute in bf16/fp32.
    sd = {k: v for k, v in sd.items()
          if not is_scale(k) and k != "scaled_fp8" and not k.endswith("scale_input")}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
           for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise VideoForgeError(f"{what}: checkpoint does not match the model: "
                              + mismatch_report(missing, unexpected, bad))
    params = dict(module.named_parameters())
    params.update(dict(module.named_buffers()))
    for k, v in sd.items():
        # Norm weights, biases and modulation tables are tiny: keep them in float32.
        v = (v.to(storage) if storage is not None else v) if v.dim() >= 2 else v.float()
        params[k].data = v
    mods = dict(module.named_modules())
    for name, s in scales.items():
        m = mods.get(name)
        if m is None:
            raise VideoForgeError(f"{what}: scale for unknown layer {name!r}.")
        m.scale_weight = s.float()
