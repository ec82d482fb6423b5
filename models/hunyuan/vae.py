"""HunyuanVideo causal 3-D VAE: 8x spatial / 4x temporal compression, 16 latent channels, the
first frame encoded alone (frames = 4k + 1), latents scaled by 0.476986 (no shift).

Two file layouts ship under the same name, `hunyuan_video_vae_bf16.safetensors`:

- official == diffusers names (Tencent `vae/pytorch_model.pt`, diffusers' conversion script
  renames nothing; `AutoencoderKLHunyuanVideo`): `encoder.conv_in.conv`,
  `encoder.down_blocks.N.resnets.M.{norm1,conv1.conv,norm2,conv2.conv,conv_shortcut.conv}`,
  `encoder.down_blocks.N.downsamplers.0.conv.conv`, `{encoder,decoder}.mid_block.resnets.{0,1}`,
  `{encoder,decoder}.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}` (Linear),
  `{encoder,decoder}.conv_norm_out`, `{encoder,decoder}.conv_out.conv`, `quant_conv`,
  `post_quant_conv`, `decoder.conv_in.conv`, `decoder.up_blocks.N.resnets.M`,
  `decoder.up_blocks.N.upsamplers.0.conv.conv`. This module uses these names.
- ComfyUI's LDM names (the Comfy-Org file; what `comfy/diffusers_convert.convert_vae_state_dict`
  makes of the diffusers names and what `comfy/ldm/modules/diffusionmodules/model.py` builds with
  `conv3d=True, time_compress=4`): `down.N.block.M`, `down.N.downsample.conv.conv`,
  `decoder.up.{3-N}.block.M` / `decoder.up.{3-N}.upsample.conv.conv` (up blocks counted from the
  full-resolution end), `mid.block_{1,2}`, `mid.attn_1.{norm,q,k,v,proj_out}` with the
  projections as [C, C, 1, 1, 1] convs, `nin_shortcut`, `norm_out`. Every causal conv keeps its
  inner `.conv` in both layouts (`VideoConv3d.conv` in ComfyUI).

`to_internal` maps either (prefix `vae.` / `first_stage_model.` optional) to the names here.

Time cannot stream exactly: every GroupNorm (resnets, mid attention, output norm) takes its
statistics over the whole clip (frames included: `nn.GroupNorm` on [B, C, T, H, W]), so each
output frame depends on every input frame through the norms, although the convolutions and the
frame-causal mid attention are causal. `streams_time` is therefore False: a window is decoded in
one pass, and `models/common/tiling.py` cuts long videos into temporal chunks that start with a
warm-up latent frame (an approximation, like diffusers' own frame-wise decoding).

Memory within a window: convolutions run over slabs of output frames with the group norm + SiLU
in front (statistics of the whole input first, applied per slab), the replicate padding and the
nearest upsampling fused into the slab, so no normalised / padded / upsampled copy of a whole
layer input exists; a resnet's second conv writes over its own input (causal slabs from the last
one back) and its 1x1x1 shortcut is added slab by slab. The peak is the first resnet of the last
up block: its input (2x the first width, full resolution) plus one first-width tensor, plus slab
temporaries. The mid attention runs query frame by query frame over the keys of frames <= it (the
frame-causal mask, without building it), in row blocks of bounded size.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.checkpoint import encoder_block_widths, strip_prefix
from ..common.errors import VideoForgeError
from ..common.family import LatentFormat, NodeVAE
from ..common.ops import Conv3d, GroupNorm, Linear, load_weights
from ..common.tiling import TilePlan, tiled_decode, tiled_encode

FAMILY = "hunyuan"
# `scaling_factor` of the HunyuanVideo VAE config (diffusers' AutoencoderKLHunyuanVideo default,
# ComfyUI's HunyuanVideo latent format); no shift.
SCALING_FACTOR = 0.476986
# patch size 2 of the HunyuanVideo transformer x 8 pixels per latent pixel = 16 px
LATENT_FORMAT = LatentFormat(channels=16, time_ratio=4, space_ratio=8, first_frame_alone=True,
                             size_multiple=16)

PREFIXES = ("first_stage_model.", "vae.")
GROUPS = 32   # norm_num_groups: not visible in the weights
EPS = 1e-6
N_BLOCKS = 4  # 3 spatial x2 steps (8x) and 2 temporal x2 steps (4x) need exactly 4 blocks
# A conv runs over at most this many slabs of output frames (each slab's padded input is a
# temporary; more slabs = smaller temporaries, more kernel launches).
CONV_SLABS = 8
# Mid attention: query rows x key count per scaled_dot_product_attention call at most (bounds the
# score matrix of the math fallback: 2^26 fp32 = 256 MB).
ATTN_BLOCK = 1 << 26

# Keys (internal = official = diffusers names) whose presence identifies this VAE.
SIGNATURE = ("encoder.conv_in.conv.weight", "encoder.down_blocks.0.resnets.0.conv1.conv.weight",
             "encoder.mid_block.resnets.0.conv1.conv.weight", "encoder.conv_out.conv.weight",
             "quant_conv.weight", "post_quant_conv.weight", "decoder.conv_in.conv.weight",
             "decoder.mid_block.resnets.0.conv1.conv.weight",
             "decoder.up_blocks.0.resnets.0.conv1.conv.weight", "decoder.conv_out.conv.weight")


# ---------------------------------------------------------------------------------------------
# key layouts


def vae_part(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The VAE's tensors without a `vae.` / `first_stage_model.` prefix."""
    return strip_prefix(sd, PREFIXES)


_LDM_MARK = re.compile(r"^(encoder\.down\.\d+\.|decoder\.up\.\d+\.|(encoder|decoder)\.mid\.)")


def layout_of(sd: dict[str, torch.Tensor]) -> str:
    """"comfy" (LDM names: `down.N.block.M`, `mid.attn_1`, ...) or "diffusers" (= official)."""
    return "comfy" if any(_LDM_MARK.match(k) for k in vae_part(sd)) else "diffusers"


_LDM_RULES = (  # (pattern, replacement) on LDM names; the decoder's up index is fixed afterwards
    (re.compile(r"^encoder\.down\.(\d+)\.block\.(\d+)\."), r"encoder.down_blocks.\1.resnets.\2."),
    (re.compile(r"^encoder\.down\.(\d+)\.downsample\."), r"encoder.down_blocks.\1.downsamplers.0."),
    (re.compile(r"^(encoder|decoder)\.mid\.block_1\."), r"\1.mid_block.resnets.0."),
    (re.compile(r"^(encoder|decoder)\.mid\.block_2\."), r"\1.mid_block.resnets.1."),
    (re.compile(r"^(encoder|decoder)\.mid\.attn_1\.norm\."), r"\1.mid_block.attentions.0.group_norm."),
    (re.compile(r"^(encoder|decoder)\.mid\.attn_1\.([qkv])\."), r"\1.mid_block.attentions.0.to_\2."),
    (re.compile(r"^(encoder|decoder)\.mid\.attn_1\.proj_out\."), r"\1.mid_block.attentions.0.to_out.0."),
    (re.compile(r"^(encoder|decoder)\.norm_out\."), r"\1.conv_norm_out."),
    (re.compile(r"\.nin_shortcut\."), ".conv_shortcut."),
)
_LDM_UP = re.compile(r"^decoder\.up\.(\d+)\.(block|upsample)\.")
_ATTN_PROJ = re.compile(r"\.mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$")


def to_internal(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Either layout (prefix optional) -> the official / diffusers names this module uses. LDM
    attention projections ([C, C, 1, 1, 1] convs) become [C, C] Linear weights (views, no copy)."""
    sd = vae_part(sd)
    if layout_of(sd) != "comfy":
        return dict(sd)
    ups = [int(m.group(1)) for k in sd if (m := _LDM_UP.match(k))]
    n_up = 1 + max(ups) if ups else 0
    out = {}
    for k, v in sd.items():
        m = _LDM_UP.match(k)
        if m:  # LDM counts up levels from the full-resolution end, diffusers from the latent end
            i = n_up - 1 - int(m.group(1))
            what = "resnets" if m.group(2) == "block" else "upsamplers.0"
            k = f"decoder.up_blocks.{i}.{what}." + k[m.end():]
        for pat, rep in _LDM_RULES:
            k = pat.sub(rep, k)
        if _ATTN_PROJ.search(k) and v.dim() > 2:
            v = v.reshape(v.shape[0], -1)
        out[k] = v
    return out


def is_hunyuan_vae(sd: dict[str, torch.Tensor]) -> bool:
    """True for the HunyuanVideo (1.0) VAE in either layout, prefix optional: causal 3-D convs with
    an inner `.conv`, RGB in, 16 latent channels, a mid-block attention, quant convs. Not the Wan
    VAE (`encoder.conv1`, `downsamples`), not EasyAnimate's MagVIT (`encoder.conv_in.weight`,
    `convs`), not 2-D SD VAEs (`encoder.conv_in.weight`), not CogVideoX (no quant convs, no mid
    attention), not HunyuanVideo 1.5 (32 latent channels, 16x)."""
    try:
        sd = to_internal(sd)
    except (ValueError, RuntimeError):
        return False
    if not all(k in sd for k in SIGNATURE):
        return False
    if "encoder.mid_block.attentions.0.to_q.weight" not in sd:
        return False
    cin, pq, q = sd["encoder.conv_in.conv.weight"], sd["post_quant_conv.weight"], sd["quant_conv.weight"]
    z = LATENT_FORMAT.channels
    return (cin.dim() == 5 and cin.shape[1] == 3 and tuple(pq.shape) == (z, z, 1, 1, 1)
            and tuple(q.shape) == (2 * z, 2 * z, 1, 1, 1))


# ---------------------------------------------------------------------------------------------
# the network


@dataclass(frozen=True)
class HunyuanVAEConfig:
    widths: tuple[int, ...] = (128, 256, 512, 512)   # block_out_channels
    layers: int = 2                                   # layers_per_block (decoder: +1)
    latent_channels: int = 16
    in_channels: int = 3
    out_channels: int = 3
    groups: int = GROUPS                              # norm_num_groups (not in the weights)
    mid_attention: bool = True                        # mid_block_add_attention

    @classmethod
    def infer(cls, sd: dict[str, torch.Tensor], name: str, groups: int = GROUPS) -> HunyuanVAEConfig:
        """From the shapes and key names of an internal-layout state dict (`groups` is not
        stored in the weights: 32 for every released HunyuanVideo VAE)."""
        missing = [k for k in SIGNATURE if k not in sd]
        if missing:
            raise VideoForgeError(f"{name}: not a HunyuanVideo VAE state dict: missing {missing}.")
        widths, layers = encoder_block_widths(sd, "resnets", "conv1.conv", name, "HunyuanVideo VAE")
        return cls(widths=widths, layers=layers,
                   latent_channels=int(sd["post_quant_conv.weight"].shape[0]),
                   in_channels=int(sd["encoder.conv_in.conv.weight"].shape[1]),
                   out_channels=int(sd["decoder.conv_out.conv.weight"].shape[0]),
                   groups=groups,
                   mid_attention="encoder.mid_block.attentions.0.to_q.weight" in sd)


def _slabs(n: int) -> range:
    """Starts of the (at most CONV_SLABS) slabs of n frames."""
    return range(0, n, -(-n // CONV_SLABS))


class NormAct:
    """GroupNorm (statistics over the whole clip, frames included, as `nn.GroupNorm` on
    [B, C, T, H, W] computes them) + SiLU, applied to any slab of frames of the tensor whose
    statistics it holds. Statistics are gathered in float32 per channel over slabs of frames (a
    bf16 clip is never converted whole) and combined exactly (law of total variance)."""

    def __init__(self, norm: GroupNorm, x: torch.Tensor) -> None:
        b, c, t = x.shape[:3]
        g = norm.num_groups
        n, means, vars_ = [], [], []
        for t0 in _slabs(t):
            piece = x[:, :, t0:t0 + -(-t // CONV_SLABS)].float()  # a view when x is fp32
            v, m = torch.var_mean(piece, dim=(2, 3, 4), correction=0)
            n.append(piece[0, 0].numel())
            means.append(m)
            vars_.append(v)
        w = torch.tensor(n, dtype=torch.float32, device=x.device) / sum(n)
        ms, vs = torch.stack(means), torch.stack(vars_)                       # [S, B, C]
        mean_c = torch.einsum("s,sbc->bc", w, ms)
        var_c = torch.einsum("s,sbc->bc", w, vs + (ms - mean_c) ** 2)
        mean_c, var_c = mean_c.view(b, g, c // g), var_c.view(b, g, c // g)   # channels -> groups
        mean_g = mean_c.mean(-1, keepdim=True)
        var_g = (var_c + (mean_c - mean_g) ** 2).mean(-1, keepdim=True)
        rstd = torch.rsqrt(var_g + norm.eps)
        scale = (rstd * norm.weight.float().view(g, c // g)).view(b, c)
        self.scale = scale.view(b, c, 1, 1, 1)
        self.shift = (norm.bias.float() - (mean_g * rstd).expand(b, g, c // g).reshape(b, c)
                      * norm.weight.float()).view(b, c, 1, 1, 1)

    def __call__(self, piece: torch.Tensor) -> torch.Tensor:
        """A slab [B, C, t, H, W] (a copy: changed in place) -> normalised, SiLU, same dtype."""
        y = piece.float().mul_(self.scale).add_(self.shift)
        return F.silu(y, inplace=True).to(piece.dtype)


class CausalConv3d(nn.Module):
    """Conv3d padded causally with *replicate* padding (kernel k: k-1 copies of the first frame
    in front, k//2 edge copies on each side in space), as diffusers' HunyuanVideoCausalConv3d.

    The output is computed in slabs of output frames: each slab gathers the input frames it
    needs (clamped at frame 0 = the replicate padding in time), pads them in space and convolves,
    so no padded copy of the whole input exists. Fused in front, per slab: `norm` (a GroupNorm +
    SiLU over the whole input, see NormAct) and `up`, a nearest x2 upsampling: x2 in space, and
    with `up=2` also x2 in time for every frame but the first (which stands for one frame), as
    diffusers' HunyuanVideoUpsampleCausal3D."""

    def __init__(self, cin: int, cout: int, kernel: int = 3,
                 stride: tuple[int, int, int] = (1, 1, 1)) -> None:
        super().__init__()
        self.conv = Conv3d(cin, cout, kernel, stride=stride)
        self.k, self.st = kernel, stride[0]

    def forward(self, x: torch.Tensor, up: int = 0, norm: GroupNorm | None = None,
                inplace: bool = False) -> torch.Tensor:
        """[B, Cin, T, H, W] -> [B, Cout, T', H', W']; up: 0 (none), 1 (x2 space), 2 (x2 space
        and time); norm: GroupNorm + SiLU applied to x first. `inplace` (same width, stride 1, no
        upsampling) writes the output over x: slabs run from the last one back, and a causal
        slab only reads frames up to its own end, which no slab run before it has overwritten."""
        k, s = self.k, self.st
        if k == 1 and not up and norm is None:
            return self.conv(x)
        act = NormAct(norm, x) if norm is not None else None
        t = x.shape[2]
        t_in = 1 + 2 * (t - 1) if up == 2 else t       # frames of the (virtually) upsampled input
        t_out = (t_in - 1) // s + 1
        p = k // 2
        inplace = inplace and not up and s == 1 and self.conv.in_channels == self.conv.out_channels
        out = x if inplace else None
        for o0 in (reversed(_slabs(t_out)) if inplace else _slabs(t_out)):
            o1 = min(t_out, o0 + -(-t_out // CONV_SLABS))
            # padded frames o0*s .. (o1-1)*s + k-1 = input frames shifted by k-1, clamped at 0
            idx = (torch.arange(o0 * s, (o1 - 1) * s + k) - (k - 1)).clamp_(min=0)
            if up == 2:
                idx = torch.where(idx == 0, idx, 1 + (idx - 1) // 2)
            piece = x.index_select(2, idx.to(x.device))  # a copy
            if act is not None:
                piece = act(piece)
            if up:
                piece = F.interpolate(piece, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
            if p:
                piece = F.pad(piece, (p, p, p, p, 0, 0), mode="replicate")
            y = self.conv(piece)
            del piece
            if o0 == 0 and o1 == t_out:  # a single slab
                return y
            if out is None:
                out = y.new_empty(y.shape[0], y.shape[1], t_out, y.shape[3], y.shape[4])
            out[:, :, o0:o1] = y
            del y
        return out


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.norm1 = GroupNorm(groups, cin, eps=EPS)
        self.conv1 = CausalConv3d(cin, cout)
        self.norm2 = GroupNorm(groups, cout, eps=EPS)
        self.conv2 = CausalConv3d(cout, cout)
        # None registers no parameters: the files have the shortcut only where widths change
        self.conv_shortcut = CausalConv3d(cin, cout, kernel=1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, Cin, T, H, W] -> [B, Cout, T, H, W]"""
        h = self.conv1(x, norm=self.norm1)
        h = self.conv2(h, norm=self.norm2, inplace=True)  # h is ours: no second tensor
        if self.conv_shortcut is None:
            return h.add_(x)
        for t0 in _slabs(x.shape[2]):  # the shortcut slab by slab: no whole-size temporary
            t1 = t0 + -(-x.shape[2] // CONV_SLABS)
            h[:, :, t0:t1] += self.conv_shortcut(x[:, :, t0:t1])
        return h


class Downsample(nn.Module):
    """Strided causal conv: x2 in space, and x2 in time when `temporal`."""

    def __init__(self, c: int, temporal: bool) -> None:
        super().__init__()
        self.conv = CausalConv3d(c, c, stride=(2 if temporal else 1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 in space (and in time but for the first frame, when `temporal`), then a
    causal conv; the upsampling is fused into the conv's slabs."""

    def __init__(self, c: int, temporal: bool) -> None:
        super().__init__()
        self.conv = CausalConv3d(c, c)
        self.temporal = temporal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, up=2 if self.temporal else 1)


class Attention(nn.Module):
    """Single-head self-attention over every latent pixel of the clip, frame-causal: the tokens
    of frame t attend to those of frames <= t (diffusers' `prepare_causal_attention_mask`).
    GroupNorm over the whole clip first, residual added after."""

    def __init__(self, c: int, groups: int) -> None:
        super().__init__()
        self.group_norm = GroupNorm(groups, c, eps=EPS)
        self.to_q = Linear(c, c)
        self.to_k = Linear(c, c)
        self.to_v = Linear(c, c)
        self.to_out = nn.ModuleList([Linear(c, c)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> same"""
        b, c, t, h, w = x.shape
        n = h * w
        y = self.group_norm(x).permute(0, 2, 3, 4, 1).reshape(b, 1, t * n, c)
        q, k, v = self.to_q(y), self.to_k(y), self.to_v(y)
        del y
        out = torch.empty_like(q)
        for f in range(t):
            keys = (f + 1) * n  # every token of frames 0..f
            rows = max(1, ATTN_BLOCK // keys)
            for r0 in range(f * n, (f + 1) * n, rows):
                r1 = min((f + 1) * n, r0 + rows)
                out[:, :, r0:r1] = F.scaled_dot_product_attention(
                    q[:, :, r0:r1], k[:, :, :keys], v[:, :, :keys])
        del q, k, v
        out = self.to_out[0](out).reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3).contiguous()
        return out.add_(x)


class MidBlock(nn.Module):
    """resnet, (frame-causal attention), resnet."""

    def __init__(self, c: int, groups: int, attention: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(c, c, groups) for _ in range(2))
        self.attentions = nn.ModuleList([Attention(c, groups)]) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


def _resample_kind(i: int, n: int) -> bool | None:
    """Block i of n: spatial resampling on all but the last, temporal too on the two before the
    last (diffusers with temporal_compression_ratio 4, spatial 8: block 0 space only, blocks 1-2
    space and time, block 3 none). None: no resampler; else whether it is temporal too."""
    return None if i == n - 1 else i >= n - 3


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, resample: bool | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout, groups)
                                     for j in range(layers))
        self.downsamplers = nn.ModuleList([Downsample(cout, resample)]) if resample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        return self.downsamplers[0](x) if self.downsamplers is not None else x


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, resample: bool | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout, groups)
                                     for j in range(layers))
        self.upsamplers = nn.ModuleList([Upsample(cout, resample)]) if resample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        return self.upsamplers[0](x) if self.upsamplers is not None else x


class Encoder(nn.Module):
    def __init__(self, cfg: HunyuanVAEConfig) -> None:
        super().__init__()
        w, n, g = cfg.widths, len(cfg.widths), cfg.groups
        self.conv_in = CausalConv3d(cfg.in_channels, w[0])
        self.down_blocks = nn.ModuleList(
            DownBlock(w[max(i - 1, 0)], w[i], cfg.layers, g, _resample_kind(i, n)) for i in range(n))
        self.mid_block = MidBlock(w[-1], g, cfg.mid_attention)
        self.conv_norm_out = GroupNorm(g, w[-1], eps=EPS)
        self.conv_out = CausalConv3d(w[-1], 2 * cfg.latent_channels)  # mean, log-variance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, F, H, W] (F = 4k+1) -> [B, 2z, k+1, H/8, W/8]"""
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(x, norm=self.conv_norm_out)


class Decoder(nn.Module):
    def __init__(self, cfg: HunyuanVAEConfig) -> None:
        super().__init__()
        w, n, g = cfg.widths[::-1], len(cfg.widths), cfg.groups
        self.conv_in = CausalConv3d(cfg.latent_channels, w[0])
        self.mid_block = MidBlock(w[0], g, cfg.mid_attention)
        self.up_blocks = nn.ModuleList(
            UpBlock(w[max(i - 1, 0)], w[i], cfg.layers + 1, g, _resample_kind(i, n)) for i in range(n))
        self.conv_norm_out = GroupNorm(g, w[-1], eps=EPS)
        self.conv_out = CausalConv3d(w[-1], cfg.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, z, T, h, w] -> [B, 3, 4(T-1)+1, 8h, 8w]"""
        x = self.mid_block(self.conv_in(x))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(x, norm=self.conv_norm_out)


class HunyuanVAE(nn.Module):
    """The HunyuanVideo VAE. `encode` returns scaled latents (posterior mean * 0.476986), `decode`
    takes them; video in / out as [B, 3, F, H, W] in [-1, 1]."""

    def __init__(self, cfg: HunyuanVAEConfig = HunyuanVAEConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        z = cfg.latent_channels
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = Conv3d(2 * z, 2 * z, 1)
        self.post_quant_conv = Conv3d(z, z, 1)

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                        name: str = "HunyuanVideo VAE", groups: int = GROUPS) -> HunyuanVAE:
        """Build from either layout (prefix optional), weights stored in `dtype`. `groups`: the
        norm group count (32 in every released file; not stored in the weights). Raises
        VideoForgeError naming `name` when it is not this VAE or keys / shapes do not match."""
        sd = to_internal(sd)
        cfg = HunyuanVAEConfig.infer(sd, name, groups)
        fmt = LATENT_FORMAT
        if (cfg.latent_channels != fmt.channels or len(cfg.widths) != N_BLOCKS
                or cfg.in_channels != 3 or cfg.out_channels != 3):
            raise VideoForgeError(
                f"{name}: a causal 3-D VAE with {cfg.latent_channels} latent channels, "
                f"{len(cfg.widths)} blocks, {cfg.in_channels} -> {cfg.out_channels} image channels; "
                "the HunyuanVideo VAE has 16 latent channels, 4 blocks (8x space, 4x time) and RGB "
                "in and out.")
        if any(c % cfg.groups for c in cfg.widths):
            raise VideoForgeError(f"{name}: channel widths {cfg.widths} are not multiples of the "
                                  f"VAE's {cfg.groups} norm groups.")
        with torch.device("meta"):
            model = cls(cfg)
        # Built on "meta" (no throw-away init), then takes over the file's (memory-mapped) tensors.
        model = model.to_empty(device="cpu")
        load_weights(model, sd, f"{name} (HunyuanVideo VAE)", storage=dtype)
        return model.eval().requires_grad_(False)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder.conv_in.conv.weight.device

    def encode(self, video: torch.Tensor, plan: TilePlan | None = None,
               callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Video [B, 3, F, H, W] in [-1, 1] (F = 4k+1) -> scaled latent, tiled as `plan` says."""
        return tiled_encode(self.encode_window, video, LATENT_FORMAT, plan or TilePlan(), callback)

    @torch.no_grad()
    def encode_window(self, video: torch.Tensor) -> torch.Tensor:
        """One window: video [B, 3, F, H, W] in [-1, 1], F = 4k+1, H and W multiples of 8 (checked
        by `tiled_encode`) -> scaled posterior mean [B, 16, k+1, H/8, W/8] float32, in one pass
        (the norms see the whole window)."""
        x = video.to(self.device, self.dtype)
        z = self.cfg.latent_channels
        moments = self.quant_conv(self.encoder(x))
        return moments[:, :z].float() * SCALING_FACTOR

    @torch.no_grad()
    def decode_stream(self, latent: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """Scaled latent [B, 16, T, h, w] -> yields (0, frames [B, 3, 4(T-1)+1, 8h, 8w] in [-1, 1],
        float32) once: the whole window in one pass (the norms see every frame)."""
        z = self.cfg.latent_channels
        if latent.dim() != 5 or latent.shape[1] != z:
            raise VideoForgeError(f"HunyuanVideo VAE decode: expected latent [B, {z}, T, h, w], "
                                  f"got {tuple(latent.shape)}.")
        x = latent.to(self.device, torch.float32) / SCALING_FACTOR
        x = self.post_quant_conv(x.to(self.dtype))
        video = self.decoder(x)
        del x
        yield 0, video.float().clamp_(-1.0, 1.0)

    def decode(self, latent: torch.Tensor, callback: Callable[[int, int], None] | None = None,
               plan: TilePlan | None = None) -> torch.Tensor:
        """Scaled latent [B, 16, T, h, w] -> video [B, 3, 4(T-1)+1, 8h, 8w] in [-1, 1], float32.

        `plan` tiles in space and, with `t_tile`, in time (causal chunks with warm-up: see the
        module docstring). `callback(done, total)` counts decoded frames (progress, interrupts)."""
        return tiled_decode(self.decode_stream, latent, LATENT_FORMAT, plan or TilePlan(),
                            callback=callback)


# ---------------------------------------------------------------------------------------------
# family interface


class HunyuanVideoVAE(NodeVAE):
    """HunyuanVideo VAE with the family interface; video in/out as [B, 3, F, H, W] in [-1, 1]."""
    family = FAMILY
    latent = LATENT_FORMAT
    # The norms span the whole window: time cannot stream exactly, so `auto_plan` sizes temporal
    # windows (whole-window working memory) and cuts them with warm-up.
    streams_time = False
    # Working memory per output pixel-frame of a whole-window decode (every frame of the window
    # at once), fp32, at the real width (block_out_channels 128, 256, 512, 512; 2 layers per
    # block). Measured on CPU (2 cores, torch 2.15, oneDNN) as bench/vae_tiling.py does: a fresh
    # process per run, random-weight HunyuanVAE(HunyuanVAEConfig(widths=(w, 2w, 4w, 4w))), one
    # warm-up decode of a 1-frame 32x32 latent, then models.common.memory.peak_rss_growth around
    # one `decode` of a [1, 16, T, h, w] latent, divided by the output's F x H x W pixel-frames:
    #   w=128 (real): 128x128: F=5 3.85 KB, F=9 3.46 KB, F=17 2.88 KB; 192x192: F=5 3.45 KB,
    #                 F=9 2.79 KB (the marginal cost of more pixels is 2.1-2.9 KB: ~60-70 MB of
    #                 each figure does not grow with the size); encode 2.62 / 2.44 KB (F=9 128,
    #                 F=5 192), so this figure covers encoding too;
    #   w=64:  F=9 at 128x128 / 192x192: 1.58 / 1.58 KB (x2 = 3.2 KB at w=128);
    #   w=32:  F=9 at 128x128 / 256x256: 1.87 / 0.80 KB, F=17 at 192x192: 0.76 KB.
    # The peak is the first resnet of the last up block (see the module docstring) plus oneDNN's
    # per-slab reorder copies. Narrow convs (32 channels) choose a gemm algorithm whose im2col
    # scratch is ~27x the slab's input (measured on a single conv: 112 MB for a 4 MB output),
    # which is why small widths do not scale down linearly: FIXED_SHARE 0.3 keeps the w=32 / 64
    # figures covered (2.0 / 2.7 KB stated; the test decodes at w=64). 4.2 KB: the highest
    # full-width figure + 9%; at 720p-size windows it overestimates by ~1.5x (CPU). GPU (bf16,
    # cuDNN workspaces, caching allocator) not measured: no device was lent to this task.
    BYTES_PER_PIXEL, REF_WIDTH, FIXED_SHARE = 4200.0, 128, 0.3

    @property
    def width(self) -> int:
        return self.vae.cfg.widths[0]


def load_hunyuan_vae(sd: dict[str, torch.Tensor], name: str = "HunyuanVideo VAE",
                     dtype: torch.dtype | None = torch.float32) -> HunyuanVideoVAE:
    """A state dict (official / diffusers or ComfyUI LDM layout, `vae.` / `first_stage_model.`
    prefix optional) -> HunyuanVideoVAE with weights in `dtype` (None: fp32). Raises
    VideoForgeError naming `name` when it is not the HunyuanVideo VAE or does not match."""
    if dtype == torch.float8_e4m3fn:
        raise VideoForgeError(f"{name}: fp8 storage is not offered for VAEs (their convolutions need "
                              "real precision); choose auto, bf16, fp16 or fp32.")
    if not is_hunyuan_vae(sd):
        part = to_internal(sd)
        missing = [k for k in SIGNATURE if k not in part]
        if missing:
            what = f"missing {missing[:4]}"
        elif "encoder.mid_block.attentions.0.to_q.weight" not in part:
            what = "no mid-block attention"
        else:
            cin, pq = part["encoder.conv_in.conv.weight"], part["post_quant_conv.weight"]
            what = (f"encoder.conv_in {tuple(cin.shape)}, post_quant_conv {tuple(pq.shape)}; expected "
                    f"[C, 3, 3, 3, 3] and [16, 16, 1, 1, 1] (16 latent channels)")
        raise VideoForgeError(f"{name}: not a HunyuanVideo VAE ({what}; "
                              f"{len(sd)} tensors, e.g. {list(sd)[:3]}).")
    return HunyuanVideoVAE(HunyuanVAE.from_state_dict(sd, dtype or torch.float32, name), name)
