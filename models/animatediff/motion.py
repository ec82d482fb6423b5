"""AnimateDiff motion modules: temporal transformers inserted into an SD1.5 UNet.

Files come in the official layout (`mm_sd_v15.ckpt`, `mm_sd_v15_v2.ckpt`, `v3_sd15_mm.ckpt`, and
their safetensors / fp16 re-uploads: `down_blocks.{i}.motion_modules.{j}.temporal_transformer.*`)
or in diffusers' `MotionAdapter` layout (`down_blocks.{i}.motion_modules.{j}.transformer_blocks.0.
attn1.*`), which `normalize_motion_keys` renames to the official one. The version is read off the
keys, as ComfyUI-AnimateDiff-Evolved reads it:

=======  ==========  ==============  ========================================================
version  mid block   PE length       GroupNorm in the base UNet's ResBlocks / output norm
=======  ==========  ==============  ========================================================
v1       no          24              over all frames of a clip (official v1 config:
                                     ``use_inflated_groupnorm: false``)
v2       yes         32              per frame (``use_inflated_groupnorm: true``)
v3       no          32              per frame
=======  ==========  ==============  ========================================================

Inside the motion module the GroupNorm is always per frame, as in the official
`TemporalTransformer3DModel` (it normalises after ``b c f h w -> (b f) c h w``). Diffusers'
`AnimateDiffTransformer3D` normalises over all frames instead; `temporal_norm="clip"` reproduces
that (used by the parity tests against diffusers), the default "frame" is the official one.

MotionLoRA files (`down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.
attention_blocks.0.processor.to_q_lora.{down,up}.weight`) add ``strength * up(down(x))`` to the
q / k / v / out projections, as the official LoRA attention processor computes it (no alpha).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..common import ops
from ..common.attention import attention
from ..common.errors import VideoForgeError
from .unet import FeedForward, UNetConfig, group_norm

HEADS = 8  # every released AnimateDiff motion module (num_attention_heads: 8)

# diffusers MotionAdapter name -> official name, inside one motion module
_DIFFUSERS_NAMES = [
    (".transformer_blocks.{b}.attn1.", ".transformer_blocks.{b}.attention_blocks.0."),
    (".transformer_blocks.{b}.attn2.", ".transformer_blocks.{b}.attention_blocks.1."),
    (".transformer_blocks.{b}.norm1.", ".transformer_blocks.{b}.norms.0."),
    (".transformer_blocks.{b}.norm2.", ".transformer_blocks.{b}.norms.1."),
    (".transformer_blocks.{b}.norm3.", ".transformer_blocks.{b}.ff_norm."),
]
_MODULE = re.compile(r"^((?:down_blocks|up_blocks)\.\d+|mid_block)\.motion_modules\.(\d+)\.(.*)$")


def normalize_motion_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official-layout keys from official or diffusers MotionAdapter files; other keys (e.g.
    a whole UNet saved alongside) are dropped."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        k = k.removeprefix("module.").removeprefix("motion_module.")
        m = _MODULE.match(k)
        if m is None:
            continue
        block, j, rest = m.groups()
        if rest.startswith("temporal_transformer."):
            out[k] = v
            continue
        # diffusers: the block's one `pos_embed` serves both attentions
        rest = "." + rest
        pe = re.match(r"^\.transformer_blocks\.(\d+)\.pos_embed\.pe$", rest)
        if pe:
            for a in (0, 1):
                out[f"{block}.motion_modules.{j}.temporal_transformer.transformer_blocks."
                    f"{pe.group(1)}.attention_blocks.{a}.pos_encoder.pe"] = v
            continue
        b = re.match(r"^\.transformer_blocks\.(\d+)\.", rest)
        if b:
            for src, dst in _DIFFUSERS_NAMES:
                s, d = src.format(b=b.group(1)), dst.format(b=b.group(1))
                if rest.startswith(s):
                    rest = d + rest[len(s):]
                    break
        out[f"{block}.motion_modules.{j}.temporal_transformer{rest}"] = v
    return out


@dataclass(frozen=True)
class MotionInfo:
    version: str                    # "v1" / "v2" / "v3"
    channels: tuple[int, ...]       # per down block (320, 640, 1280, 1280 for SD1.5)
    modules_per_block: int          # down blocks; up blocks have one more
    pe_len: int                     # frames the positional encoding covers
    depth: int                      # transformer blocks per module (1)
    has_mid: bool

    @property
    def joint_norm(self) -> bool:
        return self.version == "v1"


def inspect_motion(sd: dict[str, torch.Tensor], name: str = "motion module") -> MotionInfo:
    """Version and shape of an official-layout motion module; clear errors for the kinds that
    do not fit SD1.5 (SDXL / HotShot-XL, AnimateLCM without PE, non-motion files)."""
    if any("temporal_attentions." in k or k.endswith("positional_encoding") for k in sd):
        raise VideoForgeError(f"{name} is a HotShot-XL module (SDXL); AnimateDiff here needs an "
                              "SD1.5 motion module (mm_sd_v15_v2.ckpt, v3_sd15_mm.ckpt, ...).")
    mm = normalize_motion_keys(sd)
    if not mm:
        raise VideoForgeError(f"{name}: no motion-module keys (down_blocks.N.motion_modules.M."
                              "temporal_transformer.*); not an AnimateDiff motion module.")
    downs = sorted({int(k.split(".")[1]) for k in mm if k.startswith("down_blocks.")})
    if len(downs) == 3:
        raise VideoForgeError(f"{name} is an SDXL motion module (3 down blocks, e.g. "
                              "mm_sdxl_v10_beta); it does not fit Stable Diffusion 1.5. Use an "
                              "SD1.5 module (mm_sd_v15_v2.ckpt, v3_sd15_mm.ckpt).")
    channels = tuple(mm[f"down_blocks.{i}.motion_modules.0.temporal_transformer.proj_in.weight"]
                     .shape[1] for i in downs)
    per_block = 1 + max(int(k.split(".")[3]) for k in mm if k.startswith("down_blocks.0."))
    pes = [v for k, v in mm.items() if k.endswith("pos_encoder.pe")]
    if not pes:
        raise VideoForgeError(f"{name} has no positional encoding (AnimateLCM-style); only "
                              "AnimateDiff v1 / v2 / v3 SD1.5 modules are supported.")
    pe_len = pes[0].shape[1]
    has_mid = any(k.startswith("mid_block.") for k in mm)
    depth = 1 + max(int(k.split(".")[6]) for k in mm
                    if k.startswith("down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks."))
    version = "v2" if has_mid else ("v3" if pe_len == 32 else "v1")
    return MotionInfo(version, channels, per_block, pe_len, depth, has_mid)


class TemporalAttention(nn.Module):
    """Self-attention across frames at every pixel, with a sinusoidal PE added to its input."""

    def __init__(self, dim: int, pe_len: int) -> None:
        super().__init__()
        self.to_q = ops.Linear(dim, dim, bias=False)
        self.to_k = ops.Linear(dim, dim, bias=False)
        self.to_v = ops.Linear(dim, dim, bias=False)
        self.to_out = nn.Sequential(ops.Linear(dim, dim), nn.Identity())
        self.pos_encoder = nn.Module()
        self.pos_encoder.register_buffer("pe", torch.zeros(1, pe_len, dim))

    def forward(self, x: torch.Tensor, scale: float, lora: LoraFn) -> torch.Tensor:
        """x [N, T, dim] (N = clips x pixels) -> [N, T, dim]."""
        x = x + self.pos_encoder.pe[:, :x.shape[1]].to(x.dtype)

        def proj(name: str, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
            return lora(self, name, layer(h), h)

        q = proj("to_q", self.to_q, x)
        if scale != 1.0:  # motion_scale: sharper (>1) or flatter (<1) attention across frames
            q = q * scale
        q, k, v = (t.unflatten(-1, (HEADS, -1)) for t in
                   (q, proj("to_k", self.to_k, x), proj("to_v", self.to_v, x)))
        h = attention(q, k, v)
        return proj("to_out.0", self.to_out[0], h)


class TemporalBlock(nn.Module):
    def __init__(self, dim: int, pe_len: int) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList(TemporalAttention(dim, pe_len) for _ in range(2))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2))
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, scale: float, lora: LoraFn) -> torch.Tensor:
        for attn, norm in zip(self.attention_blocks, self.norms):
            x = attn(norm(x), scale, lora) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer(nn.Module):
    def __init__(self, ch: int, depth: int, pe_len: int) -> None:
        super().__init__()
        self.norm = ops.GroupNorm(32, ch, eps=1e-6)
        self.proj_in = ops.Linear(ch, ch)
        self.transformer_blocks = nn.ModuleList(TemporalBlock(ch, pe_len) for _ in range(depth))
        self.proj_out = ops.Linear(ch, ch)

    def forward(self, x: torch.Tensor, frames: int, scale: float, lora: LoraFn,
                clip_norm: bool = False) -> torch.Tensor:
        """x [(B T), C, H, W] -> same; attention runs along T at each (b, h, w)."""
        n, c, hh, ww = x.shape
        b = n // frames
        h = group_norm(self.norm, x, frames if clip_norm else None)
        h = h.view(b, frames, c, hh * ww).permute(0, 3, 1, 2).reshape(b * hh * ww, frames, c)
        h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, scale, lora)
        h = self.proj_out(h)
        h = h.view(b, hh * ww, frames, c).permute(0, 2, 3, 1).reshape(n, c, hh, ww)
        return h + x


class MotionModule(nn.Module):
    def __init__(self, ch: int, depth: int, pe_len: int) -> None:
        super().__init__()
        self.temporal_transformer = TemporalTransformer(ch, depth, pe_len)


class _Block(nn.Module):
    def __init__(self, ch: int, count: int, depth: int, pe_len: int) -> None:
        super().__init__()
        self.motion_modules = nn.ModuleList(MotionModule(ch, depth, pe_len) for _ in range(count))


class MotionModel(nn.Module):
    """All motion modules of one file, in the official key layout."""

    def __init__(self, info: MotionInfo) -> None:
        super().__init__()
        self.info = info
        n, d, pe = info.modules_per_block, info.depth, info.pe_len
        self.down_blocks = nn.ModuleList(_Block(c, n, d, pe) for c in info.channels)
        self.up_blocks = nn.ModuleList(_Block(c, n + 1, d, pe) for c in reversed(info.channels))
        if info.has_mid:
            self.mid_block = _Block(info.channels[-1], 1, d, pe)

    def module(self, kind: str, i: int, j: int) -> MotionModule | None:
        if kind == "mid":
            return self.mid_block.motion_modules[0] if self.info.has_mid else None
        blocks = self.down_blocks if kind == "down" else self.up_blocks
        return blocks[i].motion_modules[j]


def build_motion_model(sd: dict[str, torch.Tensor], name: str,
                       storage: torch.dtype | None = None) -> MotionModel:
    info = inspect_motion(sd, name)
    mm = normalize_motion_keys(sd)
    with torch.device("meta"):
        model = MotionModel(info)
    model = model.to_empty(device="cpu")
    # The PE is a fixed sinusoid; files store it (possibly longer, e.g. v2's 32 frames), and a
    # file that dropped it from a block gets the same table the official code registers.
    for key, buf in model.state_dict().items():
        if key.endswith("pos_encoder.pe") and key not in mm:
            mm[key] = sinusoid_pe(info.pe_len, buf.shape[-1])
    ops.load_weights(model, mm, name, storage=storage)
    for key in list(model.state_dict()):
        if key.endswith("pos_encoder.pe"):  # keep the table in float32 whatever the storage
            mod = model.get_submodule(key.rsplit(".", 1)[0])
            mod.pe = mod.pe.float()
    return model.eval().requires_grad_(False)


def sinusoid_pe(length: int, dim: int) -> torch.Tensor:
    """[1, length, dim] the official PositionalEncoding table (sin at even, cos at odd dims)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, length, dim)
    pe[0, :, 0::2] = torch.sin(pos * div)
    pe[0, :, 1::2] = torch.cos(pos * div)
    return pe


def check_fits(info: MotionInfo, cfg: UNetConfig, name: str, base: str) -> None:
    """Raise naming both files when a motion module's blocks do not match the UNet's."""
    want = cfg.level_channels
    if info.channels != want or info.modules_per_block != cfg.num_res_blocks:
        raise VideoForgeError(
            f"{name} does not fit {base}: the motion module has {len(info.channels)} blocks of "
            f"{info.channels} channels x {info.modules_per_block} modules, the UNet has "
            f"{len(want)} levels of {want} channels x {cfg.num_res_blocks} ResBlocks. "
            "AnimateDiff SD1.5 modules need a Stable Diffusion 1.5 checkpoint.")


# ---- MotionLoRA -----------------------------------------------------------------------------

_LORA = re.compile(r"^(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


def parse_motion_lora(sd: dict[str, torch.Tensor], name: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"<attention module path>.<to_q|to_k|to_v|to_out.0>": (down [r, in], up [out, r])}."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        m = _LORA.match(k)
        if m is None:
            continue
        path, proj, which = m.groups()
        proj = "to_out.0" if proj == "to_out" else proj
        pairs.setdefault(f"{path}.{proj}", {})[which] = v
    if not pairs:
        raise VideoForgeError(f"{name}: no MotionLoRA keys (...attention_blocks.N.processor."
                              "to_q_lora.down.weight); not an AnimateDiff MotionLoRA file.")
    bad = [k for k, d in pairs.items() if set(d) != {"down", "up"}]
    if bad:
        raise VideoForgeError(f"{name}: LoRA {bad[0]} lacks its {'up' if 'down' in pairs[bad[0]] else 'down'} weight.")
    return {k: (d["down"], d["up"]) for k, d in pairs.items()}


# lora(attention module, projection name, projection output y, its input x) -> y + LoRA terms
LoraFn = Callable[[TemporalAttention, str, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class MotionSet:
    """A motion model as injected into one UNet: the shared weights plus this injection's
    settings (LoRAs, scale). The UNet and motion weights are never modified, so two Apply
    Motion Module nodes with different LoRAs can share one loaded file."""

    model: MotionModel
    name: str
    scale: float = 1.0
    temporal_norm: str = "frame"   # "frame" (official) or "clip" (diffusers)
    loras: list[tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.temporal_norm not in ("frame", "clip"):
            raise VideoForgeError(f"temporal_norm must be 'frame' or 'clip', got {self.temporal_norm!r}")
        self._path = {mod: path for path, mod in self.model.named_modules()
                      if isinstance(mod, TemporalAttention)}
        known = set(self._path.values())
        for lora, _ in self.loras:
            unknown = [k for k in lora if k.rsplit(".", 2 if k.endswith("to_out.0") else 1)[0]
                       not in known]
            if unknown:
                raise VideoForgeError(f"a MotionLoRA does not fit {self.name}: it patches "
                                      f"{unknown[0]!r}, which this motion module does not have.")

    @property
    def info(self) -> MotionInfo:
        return self.model.info

    @property
    def joint_norm(self) -> bool:
        return self.model.info.joint_norm

    def _lora(self, attn: TemporalAttention, proj: str, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not self.loras:
            return y
        key = f"{self._path[attn]}.{proj}"
        for lora, strength in self.loras:
            pair = lora.get(key)
            if pair is not None and strength:
                down, up = (w.to(x.device, x.dtype) for w in pair)
                y = y + strength * ((x @ down.T) @ up.T)
        return y

    def apply(self, kind: str, i: int, j: int, h: torch.Tensor, frames: int) -> torch.Tensor:
        mod = self.model.module(kind, i, j)
        if mod is None:
            return h
        return mod.temporal_transformer(h, frames, self.scale, self._lora,
                                        clip_norm=self.temporal_norm == "clip")

    def to(self, device: torch.device | str) -> "MotionSet":
        self.model.to(device)
        return self
