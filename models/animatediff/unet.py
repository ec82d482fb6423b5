"""The Stable Diffusion 1.x / 2.x UNet in the original LDM layout, run frame by frame on video,
with AnimateDiff motion modules called at the places the official implementation puts them.

Parameter names are those of the single-file checkpoints users have (`model.diffusion_model.*`
in `v1-5-pruned-emaonly.safetensors` and every community fine-tune), so they load without
renaming. The architecture is read off the keys (`UNetConfig.infer`). Layers come from
`models.common.ops` (stored dtype != compute dtype), attention from the one dispatcher.

Video runs as a batch of frames [(B T), C, H, W]; the motion modules (`motion.py`) see the
frame axis. AnimateDiff v1 was trained with GroupNorms in the ResBlocks (and the output norm)
taking statistics over all frames of a clip at once (`use_inflated_groupnorm: false` in the
official v1 config); `joint_norm_frames` reproduces that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common import ops
from ..common.attention import attention
from ..common.errors import VideoForgeError

if TYPE_CHECKING:
    from .motion import MotionSet

GROUPS = 32  # every SD UNet GroupNorm


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (0, 1, 2)
    transformer_depth: int = 1
    context_dim: int = 768
    linear_proj: bool = False   # SD2: proj_in / proj_out are Linear, SD1: 1x1 conv
    mid_attention: bool = True

    @property
    def head_dim(self) -> int | None:
        """SD2 (OpenCLIP-H, 1024-wide context) uses 64-wide heads; SD1 uses 8 heads."""
        return 64 if self.context_dim == 1024 else None

    def heads(self, channels: int) -> int:
        return channels // self.head_dim if self.head_dim else 8

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)

    @classmethod
    def infer(cls, sd: dict[str, torch.Tensor]) -> "UNetConfig":
        """Read the architecture off LDM-layout keys (prefix already stripped)."""
        if "label_emb.0.0.weight" in sd or any(k.startswith("input_blocks.4.1.transformer_blocks.1.")
                                               for k in sd):
            raise VideoForgeError("this is an SDXL UNet; AnimateDiff here runs Stable Diffusion "
                                  "1.5 checkpoints (SDXL needs an SDXL motion module and pipeline).")
        conv_in = sd["input_blocks.0.0.weight"]
        mc = conv_in.shape[0]
        n_in = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("input_blocks."))
        first_down = min(int(k.split(".")[1]) for k in sd
                         if k.startswith("input_blocks.") and k.endswith(".0.op.weight"))
        nrb = first_down - 1
        if n_in % (nrb + 1):
            raise VideoForgeError(f"unexpected UNet layout: {n_in} input blocks with {nrb} "
                                  "ResBlocks per level.")
        levels = n_in // (nrb + 1)
        mult, attn = [], []
        for lvl in range(levels):
            i = 1 + lvl * (nrb + 1)
            mult.append(sd[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0] // mc)
            if f"input_blocks.{i}.1.norm.weight" in sd:
                attn.append(lvl)
        if not attn:
            raise VideoForgeError("UNet without cross-attention blocks: not a Stable Diffusion UNet.")
        first = 1 + attn[0] * (nrb + 1)
        depth = 1 + max(int(k.split(".")[4]) for k in sd
                        if k.startswith(f"input_blocks.{first}.1.transformer_blocks."))
        to_k = sd[f"input_blocks.{first}.1.transformer_blocks.0.attn2.to_k.weight"]
        return cls(in_channels=conv_in.shape[1], out_channels=sd["out.2.weight"].shape[0],
                   model_channels=mc, channel_mult=tuple(mult), num_res_blocks=nrb,
                   attention_levels=tuple(attn), transformer_depth=depth, context_dim=to_k.shape[1],
                   linear_proj=sd[f"input_blocks.{first}.1.proj_in.weight"].dim() == 2,
                   mid_attention="middle_block.1.norm.weight" in sd)


def is_sd_unet(sd: dict[str, torch.Tensor]) -> bool:
    """LDM-layout SD UNet keys (prefix `model.diffusion_model.` stripped)."""
    return ("input_blocks.0.0.weight" in sd and "middle_block.0.in_layers.0.weight" in sd
            and "out.2.weight" in sd and "time_embed.0.weight" in sd)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[N] float timesteps -> [N, dim] float32 sinusoids, cos half first (LDM / diffusers
    `flip_sin_to_cos=True, freq_shift=0`)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                            device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def group_norm(norm: nn.GroupNorm, x: torch.Tensor, frames: int | None) -> torch.Tensor:
    """`norm` per frame, or with `frames` over each clip's frames jointly (AnimateDiff v1)."""
    if frames is None or frames == 1:
        return norm(x)
    n, c, h, w = x.shape
    y = norm(x.view(n // frames, frames, c, h, w).transpose(1, 2))
    return y.transpose(1, 2).reshape(n, c, h, w)


class FeedForward(nn.Module):
    """GEGLU MLP (`net.0.proj`, `net.2`), as in SD's transformer blocks and the motion modules."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Identity(), ops.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = ops.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        kv = context_dim or dim
        self.to_q = ops.Linear(dim, dim, bias=False)
        self.to_k = ops.Linear(kv, dim, bias=False)
        self.to_v = ops.Linear(kv, dim, bias=False)
        self.to_out = nn.Sequential(ops.Linear(dim, dim), nn.Identity())

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, L, dim], context [N, S, context_dim] (None: self-attention) -> [N, L, dim]."""
        ctx = x if context is None else context
        h = self.heads
        q = self.to_q(x).unflatten(-1, (h, -1))
        k = self.to_k(ctx).unflatten(-1, (h, -1))
        v = self.to_v(ctx).unflatten(-1, (h, -1))
        return self.to_out(attention(q, k, v))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, heads)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, context_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, ch: int, heads: int, depth: int, context_dim: int, linear: bool) -> None:
        super().__init__()
        self.linear = linear
        self.norm = ops.GroupNorm(GROUPS, ch, eps=1e-6)
        self.proj_in = ops.Linear(ch, ch) if linear else ops.Conv2d(ch, ch, 1)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(ch, heads, context_dim) for _ in range(depth))
        self.proj_out = ops.Linear(ch, ch) if linear else ops.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x [N, C, H, W], context [N, S, D] -> [N, C, H, W] (per frame; norm per frame too)."""
        n, c, hh, ww = x.shape
        h = self.norm(x)
        if not self.linear:
            h = self.proj_in(h)
        h = h.flatten(2).transpose(1, 2)
        if self.linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.linear:
            h = self.proj_out(h)
        h = h.transpose(1, 2).reshape(n, c, hh, ww)
        if not self.linear:
            h = self.proj_out(h)
        return h + x


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(ops.GroupNorm(GROUPS, cin), nn.SiLU(),
                                       ops.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), ops.Linear(emb_dim, cout))
        self.out_layers = nn.Sequential(ops.GroupNorm(GROUPS, cout), nn.SiLU(), nn.Identity(),
                                        ops.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Identity() if cin == cout else ops.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, norm_frames: int | None) -> torch.Tensor:
        h = F.silu(group_norm(self.in_layers[0], x, norm_frames))
        h = self.in_layers[2](h)
        h = h + self.emb_layers(emb)[:, :, None, None].to(h.dtype)
        h = F.silu(group_norm(self.out_layers[0], h, norm_frames))
        return self.skip_connection(x) + self.out_layers[3](h)


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.op = ops.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = ops.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        # to the skip's size, so odd latent sizes (e.g. 480 px / 8 = 60 -> 30 -> 15) work
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class UNet(nn.Module):
    """SD UNet: ``forward(x [(B T), C, H, W], t [(B T)], context [(B T), S, D], frames=T)``."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        mc, emb = cfg.model_channels, cfg.model_channels * 4
        self.time_embed = nn.Sequential(ops.Linear(mc, emb), nn.SiLU(), ops.Linear(emb, emb))

        def attn(ch: int) -> SpatialTransformer:
            return SpatialTransformer(ch, cfg.heads(ch), cfg.transformer_depth, cfg.context_dim,
                                      cfg.linear_proj)

        self.input_blocks = nn.ModuleList([nn.ModuleList([ops.Conv2d(cfg.in_channels, mc, 3, padding=1)])])
        ch, skips = mc, [mc]
        last = len(cfg.channel_mult) - 1
        for lvl, m in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, mc * m, emb)]
                ch = mc * m
                if lvl in cfg.attention_levels:
                    layers.append(attn(ch))
                self.input_blocks.append(nn.ModuleList(layers))
                skips.append(ch)
            if lvl != last:
                self.input_blocks.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)
        self.middle_block = nn.ModuleList(
            [ResBlock(ch, ch, emb)] + ([attn(ch)] if cfg.mid_attention else []) + [ResBlock(ch, ch, emb)])
        self.output_blocks = nn.ModuleList()
        for lvl, m in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), mc * m, emb)]
                ch = mc * m
                if lvl in cfg.attention_levels:
                    layers.append(attn(ch))
                if lvl and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(nn.ModuleList(layers))
        self.out = nn.Sequential(ops.GroupNorm(GROUPS, ch), nn.SiLU(),
                                 ops.Conv2d(mc, cfg.out_channels, 3, padding=1))

    def _run(self, layers: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
             norm_frames: int | None, motion_fn, size: tuple[int, int] | None = None) -> torch.Tensor:
        """One LDM block; the motion module goes after ResBlock (+ attention), before Upsample."""
        done = False
        for layer in layers:
            if isinstance(layer, ResBlock):
                h = layer(h, emb, norm_frames)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context)
            elif isinstance(layer, Upsample):
                h, done = motion_fn(h), True
                h = layer(h, size)
            else:
                h = layer(h)
        return h if done else motion_fn(h)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, frames: int = 1,
                motion: "MotionSet | None" = None) -> torch.Tensor:
        """x [(B T), C, H, W], t [(B T)], context [(B T), S, D] -> eps / v [(B T), C_out, H, W].

        `motion` (AnimateDiff) mixes information across the T frames of each clip."""
        dt = x.dtype
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels).to(dt))
        norm_frames = frames if motion is not None and motion.joint_norm else None

        def mm(kind: str, i: int = 0, j: int = 0):
            if motion is None or kind == "none":
                return lambda h: h
            return lambda h: motion.apply(kind, i, j, h, frames)

        nrb = self.cfg.num_res_blocks
        h, hs = x, []
        for n, block in enumerate(self.input_blocks):
            lvl, j = divmod(n - 1, nrb + 1)
            fn = mm("down", lvl, j) if n and j < nrb else mm("none")  # conv_in / Downsample: none
            h = self._run(block, h, emb, context, norm_frames, fn)
            hs.append(h)
        mid = self.middle_block
        h = mid[0](h, emb, norm_frames)
        if self.cfg.mid_attention:
            h = mid[1](h, context)
        h = mm("mid")(h)
        h = mid[-1](h, emb, norm_frames)
        for n, block in enumerate(self.output_blocks):
            lvl, j = divmod(n, nrb + 1)
            h = torch.cat([h, hs.pop()], dim=1)
            size = tuple(hs[-1].shape[-2:]) if hs else None
            h = self._run(block, h, emb, context, norm_frames, mm("up", lvl, j), size)
        h = F.silu(group_norm(self.out[0], h, norm_frames))
        return self.out[2](h)
