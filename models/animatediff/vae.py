"""Stable Diffusion 1.5 VAE (the LDM `AutoencoderKL`): 2-D, 8x spatial compression, 4 latent
channels, applied to a video frame by frame.

Parameter names follow the original LDM layout, as inside an SD1.5 single-file checkpoint
(`first_stage_model.` prefix) or a stand-alone VAE file (`vae-ft-mse-840000-ema-pruned`):
`encoder.conv_in`, `encoder.down.N.block.M`, `encoder.down.N.downsample`, `encoder.mid.block_1`,
`encoder.mid.attn_1`, `encoder.mid.block_2`, `encoder.norm_out`, `encoder.conv_out`, `quant_conv`,
`post_quant_conv`, `decoder.conv_in`, `decoder.mid.*`, `decoder.up.N.block.M`,
`decoder.up.N.upsample`, `decoder.norm_out`, `decoder.conv_out`. A diffusers `AutoencoderKL`
state dict (`vae/diffusion_pytorch_model.safetensors`) is renamed to it on load
(`diffusers_to_ldm_vae`), so one model class serves both.

Frames are independent: `decode_stream` decodes one image (one frame of one batch item) per step
and hands it back, so working memory does not grow with the frame count or the batch; spatial
tiling is the shared `tiled_decode` / `tiled_encode`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.checkpoint import strip_prefix
from ..common.errors import VideoForgeError
from ..common.family import LatentFormat, NodeVAE
from ..common.ops import Conv2d, GroupNorm, load_weights
from ..common.tiling import TilePlan, tiled_decode, tiled_encode

FAMILY = "sd15"
# SD1.5 latents handed to the UNet are the posterior mean times this (diffusers `scaling_factor`).
SCALING_FACTOR = 0.18215
LATENT_FORMAT = LatentFormat(channels=4, time_ratio=1, space_ratio=8, first_frame_alone=False,
                             size_multiple=8)

PREFIXES = ("first_stage_model.", "vae.")
# Keys whose presence identifies the LDM layout of this VAE.
SIGNATURE = ("encoder.conv_in.weight", "encoder.down.0.block.0.norm1.weight",
             "encoder.mid.attn_1.q.weight", "decoder.up.0.block.0.conv1.weight",
             "quant_conv.weight", "post_quant_conv.weight", "decoder.conv_out.weight")
# ... and of the diffusers layout of the same VAE.
DIFFUSERS_SIGNATURE = ("encoder.conv_in.weight", "encoder.down_blocks.0.resnets.0.norm1.weight",
                       "decoder.up_blocks.0.resnets.0.conv1.weight", "quant_conv.weight",
                       "post_quant_conv.weight")
GROUPS = 32
EPS = 1e-6


# ---------------------------------------------------------------------------------------------
# key layouts


def vae_part(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The VAE's tensors without their prefix: a full SD1.5 checkpoint holds the VAE under
    `first_stage_model.` next to the UNet and CLIP (a minority of its keys, so `strip_prefix`
    alone would not take them); a stand-alone file has bare keys."""
    for p in PREFIXES:
        part = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
        if "encoder.conv_in.weight" in part:
            return part
    return strip_prefix(sd, PREFIXES)


def _is_diffusers(sd: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in sd)


# diffusers -> LDM names inside a mid-block attention; the legacy names (query / key / value /
# proj_attn, older diffusers VAE files such as sd-vae-ft-mse) too.
_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
         "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}
_TOP = {"conv_norm_out": "norm_out"}
_RES = {"conv_shortcut": "nin_shortcut"}


def diffusers_to_ldm_vae(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers `AutoencoderKL` state dict -> the LDM key layout (same tensors).

    diffusers `decoder.up_blocks.i` is LDM `decoder.up.(n-1-i)`; mid resnets 0 / 1 are
    `mid.block_1` / `mid.block_2`; attention projections become 1x1 convs ([C, C, 1, 1]).
    Keys it does not know are kept, so the loader names them as unexpected.
    """
    n_up = 1 + max((int(m.group(1)) for k in sd
                    if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))), default=-1)
    out: dict[str, torch.Tensor] = {}
    for key, v in sd.items():
        part, _, rest = key.partition(".")
        new = key
        if part in ("encoder", "decoder"):
            m = re.match(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)", rest)
            if m:
                kind, i, sub, j, tail = m.groups()
                level = int(i) if kind == "down_blocks" else n_up - 1 - int(i)
                name = "down" if kind == "down_blocks" else "up"
                if sub == "resnets":
                    tail = _sub(tail, _RES)
                    new = f"{part}.{name}.{level}.block.{j}.{tail}"
                else:
                    new = f"{part}.{name}.{level}.{'downsample' if kind == 'down_blocks' else 'upsample'}.{tail}"
            elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
                new = f"{part}.mid.block_{int(m.group(1)) + 1}.{_sub(m.group(2), _RES)}"
            elif m := re.match(r"mid_block\.attentions\.0\.(.+)", rest):
                new = f"{part}.mid.attn_1.{_sub(m.group(1), _ATTN)}"
            else:
                new = f"{part}.{_sub(rest, _TOP)}"
        out[new] = v
    return _attn_as_conv(out)


def _sub(tail: str, table: dict[str, str]) -> str:
    """Rename the layer part of `layer.weight` / `layer.bias` by `table`."""
    layer, _, param = tail.rpartition(".")
    return f"{table.get(layer, layer)}.{param}"


def _attn_as_conv(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Attention q / k / v / proj_out weights as 1x1 convs: [C, C] (Linear, diffusers) and
    [C, C, 1] (Conv1d, some conversions) become [C, C, 1, 1]."""
    out = {}
    for k, v in sd.items():
        if re.search(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", k) and v.dim() in (2, 3):
            v = v.reshape(*v.shape[:2], 1, 1)
        out[k] = v
    return out


def to_ldm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any accepted layout (prefixed, LDM or diffusers) -> bare LDM keys."""
    sd = vae_part(sd)
    return diffusers_to_ldm_vae(sd) if _is_diffusers(sd) else _attn_as_conv(sd)


def is_sd_vae(sd: dict[str, torch.Tensor]) -> bool:
    """True for the SD1.5 VAE (LDM or diffusers names; keys with `first_stage_model.` already
    stripped, as for a stand-alone VAE file): 4 latent channels. Not the Wan VAE
    (`encoder.downsamples.*`, 3-D convs), not 16-channel VAEs (SD3 / Flux)."""
    sd = strip_prefix(sd, PREFIXES)
    if all(k in sd for k in DIFFUSERS_SIGNATURE):
        sd = diffusers_to_ldm_vae(sd)
    if not all(k in sd for k in SIGNATURE):
        return False
    pq = sd["post_quant_conv.weight"]
    return pq.dim() == 4 and tuple(pq.shape[1:]) == (LATENT_FORMAT.channels, 1, 1) \
        and sd["encoder.conv_in.weight"].dim() == 4


# ---------------------------------------------------------------------------------------------
# the network


@dataclass(frozen=True)
class SDVAEConfig:
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    in_channels: int = 3
    out_ch: int = 3

    @classmethod
    def infer(cls, sd: dict[str, torch.Tensor]) -> SDVAEConfig:
        """From the shapes and key names of an LDM-layout state dict."""
        missing = [k for k in SIGNATURE if k not in sd]
        if missing:
            raise VideoForgeError(f"not a Stable Diffusion VAE state dict: missing {missing}.")
        ch = sd["encoder.conv_in.weight"].shape[0]
        levels = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
        blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)))
        mult = []
        for i in range(levels):
            w = sd.get(f"encoder.down.{i}.block.0.conv1.weight")
            if w is None or w.shape[0] % ch:
                raise VideoForgeError(f"SD VAE: encoder level {i} has no block 0 (or odd width).")
            mult.append(w.shape[0] // ch)
        return cls(ch=ch, ch_mult=tuple(mult), num_res_blocks=blocks,
                   z_channels=sd["decoder.conv_in.weight"].shape[1],
                   embed_dim=sd["post_quant_conv.weight"].shape[1],
                   in_channels=sd["encoder.conv_in.weight"].shape[1],
                   out_ch=sd["decoder.conv_out.weight"].shape[0])


def _norm(c: int) -> GroupNorm:
    return GroupNorm(GROUPS, c, eps=EPS, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout)
        self.conv2 = Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, Cin, H, W] -> [N, Cout, H, W]"""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.nin_shortcut(x) if self.nin_shortcut is not None else x)


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels of one image, 1x1-conv projections."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = _norm(c)
        self.q = Conv2d(c, c, 1)
        self.k = Conv2d(c, c, 1)
        self.v = Conv2d(c, c, 1)
        self.proj_out = Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> same"""
        n, c, h, w = x.shape
        y = self.norm(x)
        # [N, 1, HW, C], contiguous: SDPA's fused (flash / memory-efficient) kernels need a unit
        # stride on the last dim, else it falls back to the math path and an [HW, HW] matrix.
        q, k, v = (p(y).reshape(n, 1, c, h * w).transpose(2, 3).contiguous() for p in (self.q, self.k, self.v))
        # SDPA directly, not the attention() dispatcher: one head of width C (512 for SD1.5) is
        # beyond what the sage / flash-attn packages take.
        y = F.scaled_dot_product_attention(q, k, v)  # [N, 1, HW, C]
        return x + self.proj_out(y[:, 0].transpose(1, 2).reshape(n, c, h, w))


class Downsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = Conv2d(c, c, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # pad right / bottom only, so an even size halves exactly
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Mid(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(c, c)
        self.attn_1 = AttnBlock(c)
        self.block_2 = ResnetBlock(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution: `block` ResnetBlocks, then `downsample` / `upsample` (not on the last)."""

    def __init__(self, cin: int, cout: int, n: int, resample: type[nn.Module] | None) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if j == 0 else cout, cout) for j in range(n))
        # None registers no parameters: the checkpoint has `downsample` / `upsample` only where used
        self.downsample = Downsample(cout) if resample is Downsample else None
        self.upsample = Upsample(cout) if resample is Upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.block:
            x = b(x)
        if self.downsample is not None:
            x = self.downsample(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class Encoder(nn.Module):
    def __init__(self, cfg: SDVAEConfig) -> None:
        super().__init__()
        ch, mult, last = cfg.ch, cfg.ch_mult, len(cfg.ch_mult) - 1
        self.conv_in = Conv2d(cfg.in_channels, ch, 3, padding=1)
        widths = [ch * m for m in (1, *mult)]
        self.down = nn.ModuleList(
            Level(widths[i], widths[i + 1], cfg.num_res_blocks, Downsample if i < last else None)
            for i in range(len(mult)))
        self.mid = Mid(widths[-1])
        self.norm_out = _norm(widths[-1])
        self.conv_out = Conv2d(widths[-1], 2 * cfg.z_channels, 3, padding=1)  # mean, log-variance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, 2z, H/8, W/8]"""
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(self.mid(x))))


class Decoder(nn.Module):
    def __init__(self, cfg: SDVAEConfig) -> None:
        super().__init__()
        ch, mult = cfg.ch, cfg.ch_mult
        cin = ch * mult[-1]
        self.conv_in = Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = Mid(cin)
        # LDM numbers the levels like the encoder's (up.0 = full resolution) and runs them from
        # the last to the first.
        levels: list[nn.Module] = [nn.Identity()] * len(mult)
        for i in reversed(range(len(mult))):
            levels[i] = Level(cin, ch * mult[i], cfg.num_res_blocks + 1, Upsample if i > 0 else None)
            cin = ch * mult[i]
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(cin)
        self.conv_out = Conv2d(cin, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """[N, z, h, w] -> [N, 3, 8h, 8w]"""
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class SDVAE(nn.Module):
    """SD1.5 AutoencoderKL. `encode` returns scaled latents (posterior mean * 0.18215),
    `decode` takes them; video in / out as [B, C, F, H, W], frame by frame."""

    def __init__(self, cfg: SDVAEConfig = SDVAEConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                        name: str = "SD VAE") -> SDVAE:
        """Build from an LDM- or diffusers-layout state dict (prefix optional), weights stored in
        `dtype`. Raises VideoForgeError (naming `name`) when it is not this VAE or keys / shapes
        do not match."""
        sd = to_ldm(sd)
        # training-only parts some VAE .ckpt files carry (LPIPS / discriminator, EMA bookkeeping)
        sd = {k: v for k, v in sd.items() if not k.startswith(("loss.", "model_ema"))}
        try:
            cfg = SDVAEConfig.infer(sd)
        except VideoForgeError as e:
            raise VideoForgeError(f"{name}: {e}") from e
        if cfg.embed_dim != LATENT_FORMAT.channels or 2 ** (len(cfg.ch_mult) - 1) != LATENT_FORMAT.space_ratio \
                or cfg.in_channels != 3 or cfg.out_ch != 3:
            raise VideoForgeError(
                f"{name}: a VAE with {cfg.embed_dim} latent channels, {len(cfg.ch_mult)} levels "
                f"({2 ** (len(cfg.ch_mult) - 1)}x), {cfg.in_channels} -> {cfg.out_ch} image channels; "
                "the Stable Diffusion 1.5 VAE has 4 latent channels and 8x compression of RGB.")
        if cfg.ch % GROUPS or any(cfg.ch * m % GROUPS for m in cfg.ch_mult):
            raise VideoForgeError(f"{name}: channel widths {cfg.ch} x {cfg.ch_mult} are not "
                                  f"multiples of the VAE's {GROUPS} norm groups.")
        with torch.device("meta"):
            model = cls(cfg)
        # Built on "meta" (no throw-away init), then takes over the file's (memory-mapped) tensors.
        model = model.to_empty(device="cpu")
        load_weights(model, sd, f"{name} (SD VAE)", storage=dtype)
        return model.eval().requires_grad_(False)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder.conv_in.weight.device

    # -- single images ----------------------------------------------------------------------

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [-1, 1] -> posterior mean [N, 4, H/8, W/8] (unscaled)."""
        moments = self.quant_conv(self.encoder(x))
        return moments[:, :self.cfg.embed_dim]

    def decode_image(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latent [N, 4, h, w] -> image [N, 3, 8h, 8w] (not clamped)."""
        return self.decoder(self.post_quant_conv(z))

    # -- video --------------------------------------------------------------------------------

    def encode(self, video: torch.Tensor, plan: TilePlan | None = None,
               callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Video [B, 3, F, H, W] in [-1, 1] -> scaled latent [B, 4, F, H/8, W/8] float32."""
        return tiled_encode(self.encode_window, video, LATENT_FORMAT, plan or TilePlan(), callback)

    @torch.no_grad()
    def encode_window(self, video: torch.Tensor) -> torch.Tensor:
        """One window [B, 3, F, H, W] in [-1, 1] (H, W multiples of 8, checked by `tiled_encode`)
        -> scaled posterior mean [B, 4, F, H/8, W/8] float32, one image at a time."""
        b, _, f, h, w = video.shape
        out = torch.empty(b, self.cfg.embed_dim, f, h // 8, w // 8, dtype=torch.float32, device=self.device)
        for i in range(b):
            for t in range(f):
                x = video[i:i + 1, :, t].to(self.device, self.dtype)
                out[i:i + 1, :, t] = self.encode_image(x).float() * SCALING_FACTOR
        return out

    @torch.no_grad()
    def decode_stream(self, latent: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """Scaled latent [B, 4, T, h, w] -> yields (frame index, frames [B, 3, 1, 8h, 8w] in
        [-1, 1], float32) frame by frame; each batch item is decoded alone, so only one image's
        activations are alive at a time."""
        if latent.dim() != 5 or latent.shape[1] != self.cfg.embed_dim:
            raise VideoForgeError(f"SD VAE decode: expected latent [B, {self.cfg.embed_dim}, T, h, w], "
                                  f"got {tuple(latent.shape)}.")
        for t in range(latent.shape[2]):
            frames = []
            for i in range(latent.shape[0]):
                z = latent[i:i + 1, :, t].to(self.device, torch.float32) / SCALING_FACTOR
                frames.append(self.decode_image(z.to(self.dtype)).float().clamp(-1.0, 1.0))
            yield t, torch.cat(frames)[:, :, None]

    def decode(self, latent: torch.Tensor, callback: Callable[[int, int], None] | None = None,
               plan: TilePlan | None = None) -> torch.Tensor:
        """Scaled latent [B, 4, T, h, w] -> video [B, 3, T, 8h, 8w] in [-1, 1], float32.
        `plan` tiles in space; `callback(done, total)` counts decoded frames."""
        return tiled_decode(self.decode_stream, latent, LATENT_FORMAT, plan or TilePlan(),
                            callback=callback)


# ---------------------------------------------------------------------------------------------
# family interface


class SDVideoVAE(NodeVAE):
    """SD1.5 VAE with the family interface; video in/out as [B, 3, F, H, W] in [-1, 1]."""
    family = FAMILY
    latent = LATENT_FORMAT
    # Frames are independent and decode_stream hands them back one by one: temporal chunks add
    # nothing (tiling.auto_plan).
    streams_time = True
    # Working memory per output pixel of one decode step (one image), fp32, ch 128 (the real
    # SD1.5 VAE: mult 1,2,4,4, 2 res blocks), scaled by ch and the dtype's size. Measured on CPU
    # (2 cores, torch 2.15), a fresh process per run: random-weight SDVAE(SDVAEConfig()), one
    # warm-up decode at 64x64, then /proc/self/clear_refs "5" (VmHWM := VmRSS) and VmHWM - VmRSS
    # around one `decode_image` call: 256x256 -> 258-262 MB = 4.1-4.2 KB/pixel (3 runs), 512x512
    # -> 970 MB = 3.9 KB/pixel; 3.9 KB at both sizes with MALLOC_MMAP_THRESHOLD_=65536 (no heap
    # reuse). The peak is at full resolution (up.1's upsample and up.0's first block hold 256
    # channels at H x W); encode needs 3.1 KB/pixel, so this figure covers both. 4.5 KB: the
    # measured 4.2 KB plus some headroom.
    BYTES_PER_PIXEL, REF_WIDTH = 4500.0, 128

    @property
    def width(self) -> int:
        return self.vae.cfg.ch


def load_sd_vae(sd: dict[str, torch.Tensor], name: str = "SD VAE",
                dtype: torch.dtype | None = torch.float32) -> SDVideoVAE:
    """A state dict (stand-alone VAE file in LDM or diffusers layout, or a full SD1.5 checkpoint
    whose VAE is under `first_stage_model.`) -> SDVideoVAE with weights in `dtype` (None: fp32).
    Raises VideoForgeError naming `name` when it is not the SD1.5 VAE or does not match."""
    if dtype == torch.float8_e4m3fn:
        raise VideoForgeError(f"{name}: fp8 storage is not offered for VAEs (their convolutions need "
                              "real precision); choose auto, bf16, fp16 or fp32.")
    part = vae_part(sd)
    if not is_sd_vae(part):
        ldm = to_ldm(part)
        missing = [k for k in SIGNATURE if k not in ldm]
        what = f"missing {missing}" if missing else \
            f"post_quant_conv {tuple(ldm['post_quant_conv.weight'].shape)} (expected [4, 4, 1, 1])"
        raise VideoForgeError(f"{name}: not a Stable Diffusion 1.5 VAE ({what}; "
                              f"{len(sd)} tensors, e.g. {list(sd)[:3]}).")
    return SDVideoVAE(SDVAE.from_state_dict(part, dtype or torch.float32, name), name)
