"""EasyAnimate V5.1 MagVIT VAE: causal 3-D convolutions, 8x spatial / 4x temporal compression,
16 latent channels, the first frame encoded alone (frames = 4k + 1).

Two file layouts exist, with the same parameter names:

- the original EasyAnimate one (`vae/diffusion_pytorch_model.safetensors` of
  alibaba-pai/EasyAnimateV5.1-12b-zh, built by `easyanimate/vae/ldm/models/omnigen_enc_dec.py`):
  `encoder.conv_in`, `encoder.down_blocks.N.convs.M.{norm1,conv1,norm2,conv2,shortcut}`,
  `encoder.down_blocks.N.downsampler.conv`, `encoder.mid_block.convs.M`, `encoder.conv_norm_out`,
  `encoder.conv_out`, `quant_conv`, `post_quant_conv`, `decoder.conv_in`, `decoder.mid_block`,
  `decoder.up_blocks.N.convs.M`, `decoder.up_blocks.N.upsampler.conv`, `decoder.conv_norm_out`,
  `decoder.conv_out` -- plus one spatial self-attention per mid block
  (`{encoder,decoder}.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out}`, 8.4 MB: 986 MB
  file vs 978 MB);
- the diffusers re-upload (`alibaba-pai/EasyAnimateV5.1-*-diffusers`, `AutoencoderKLMagvit`):
  the same names without those attention tensors. Its config says
  `"mid_block_use_attention": false` and diffusers' `AutoencoderKLMagvit` (written by the
  EasyAnimate authors for V5.1, documented as loading the original V5.1 `vae` folder) has no
  mid-block attention, so the original file's attention tensors are dropped on load
  (`to_internal`) and both layouts give the same model. (The EasyAnimate V5 repos' configs set
  `mid_block_use_attention: true`, under which the original code would run that attention; we
  follow diffusers, the reference the tests hold this module to.)

Time is processed in chunks exactly as diffusers does (encode: frame 0 alone, then groups of 4;
decode: one latent frame at a time). Every causal conv carries the tail of its previous chunk's
input in a `ChunkCache`, the first chunk is padded by repeating its first frame, and every
temporal upsampler skips its x2 on the first chunk. Decoding streams frames out latent frame by
latent frame with the result equal to diffusers' whole-video decode, so `streams_time` is set and
only spatial tiles come from `models/common/tiling.py`.

Group norms are per frame (V5.1's `spatial_group_norm: true`), so a chunk's frames never mix
through a norm. Latents handed to the transformer are the posterior mean times
`SCALING_FACTOR` (the EasyAnimate pipelines encode InP masked-video and control latents with
`latent_dist.mode()`, the mean; only their video-to-video init latents are sampled).
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
from ..common.ops import Conv3d, GroupNorm, load_weights
from ..common.tiling import TilePlan, tiled_decode, tiled_encode

FAMILY = "easyanimate"
# `scaling_factor` of the V5 / V5.1 VAE config (and diffusers' AutoencoderKLMagvit default): the
# pipelines multiply encoded latents by it and divide by it before decoding.
SCALING_FACTOR = 0.7125
# patch size 2 of the EasyAnimate transformer x 8 pixels per latent pixel = 16 px
LATENT_FORMAT = LatentFormat(channels=16, time_ratio=4, space_ratio=8, first_frame_alone=True,
                             size_multiple=16)

PREFIXES = ("first_stage_model.", "vae.")
GROUPS = 32   # norm_num_groups: not visible in the weights
EPS = 1e-6
ENCODE_CHUNK = 4  # pixel frames per encoder chunk after the first frame (mini_batch_encoder)

# Keys whose presence identifies this VAE (either layout).
SIGNATURE = ("encoder.conv_in.weight", "encoder.down_blocks.0.convs.0.conv1.weight",
             "encoder.mid_block.convs.0.conv1.weight", "encoder.conv_out.weight",
             "quant_conv.weight", "post_quant_conv.weight", "decoder.conv_in.weight",
             "decoder.mid_block.convs.0.conv1.weight", "decoder.up_blocks.0.convs.0.conv1.weight",
             "decoder.conv_out.weight")
# Tensors only the original layout has; unused (see the module docstring).
_ORIGINAL_ONLY = re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.")


# ---------------------------------------------------------------------------------------------
# key layouts


def vae_part(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The VAE's tensors without a `vae.` / `first_stage_model.` prefix."""
    return strip_prefix(sd, PREFIXES)


def layout_of(sd: dict[str, torch.Tensor]) -> str:
    """"original" (EasyAnimate, with the mid-block attention tensors) or "diffusers"."""
    return "original" if any(_ORIGINAL_ONLY.match(k) for k in vae_part(sd)) else "diffusers"


def to_internal(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Either layout (prefix optional) -> the names this module uses (= diffusers'): the
    original file's unused mid-block attention tensors are left out."""
    return {k: v for k, v in vae_part(sd).items() if not _ORIGINAL_ONLY.match(k)}


def is_easyanimate_vae(sd: dict[str, torch.Tensor]) -> bool:
    """True for the EasyAnimate V5 / V5.1 MagVIT VAE (original or diffusers names, prefix
    optional): 3-D convs, RGB in, 16 latent channels. Not the Wan VAE (`encoder.conv1`,
    `downsamples`), not 2-D VAEs (SD: `encoder.down.N.block` / `down_blocks.N.resnets`), not
    the 4-channel EasyAnimate V2-V4 VAEs."""
    sd = vae_part(sd)
    if not all(k in sd for k in SIGNATURE):
        return False
    cin, pq = sd["encoder.conv_in.weight"], sd["post_quant_conv.weight"]
    z = LATENT_FORMAT.channels
    return cin.dim() == 5 and cin.shape[1] == 3 and tuple(pq.shape) == (z, z, 1, 1, 1)


# ---------------------------------------------------------------------------------------------
# the network


@dataclass(frozen=True)
class EasyAnimateVAEConfig:
    widths: tuple[int, ...] = (128, 256, 512, 512)   # block_out_channels
    layers: int = 2                                   # layers_per_block (decoder: +1)
    latent_channels: int = 16
    in_channels: int = 3
    out_channels: int = 3

    @classmethod
    def infer(cls, sd: dict[str, torch.Tensor], name: str) -> EasyAnimateVAEConfig:
        """From the shapes and key names of an internal-layout state dict."""
        missing = [k for k in SIGNATURE if k not in sd]
        if missing:
            raise VideoForgeError(f"{name}: not an EasyAnimate VAE state dict: missing {missing}.")
        widths, layers = encoder_block_widths(sd, "convs", "conv1", name, "EasyAnimate VAE")
        return cls(widths=widths, layers=layers,
                   latent_channels=int(sd["post_quant_conv.weight"].shape[0]),
                   in_channels=int(sd["encoder.conv_in.weight"].shape[1]),
                   out_channels=int(sd["decoder.conv_out.weight"].shape[0]))


class ChunkCache:
    """What each causal layer carries from one temporal chunk to the next, keyed by the layer:
    a conv's last input frames, an upsampler's "has run" flag. One per encode / decode."""

    def __init__(self) -> None:
        self.state: dict[nn.Module, torch.Tensor | bool] = {}


class CausalConv3d(Conv3d):
    """3x3x3 conv padded only on the past side of time: the first chunk repeats its first frame
    twice in front, later chunks continue from the cached tail of the previous chunk's input
    (2 frames; 1 for a temporal stride of 2, whose windows start on even frames)."""

    def __init__(self, cin: int, cout: int, stride: tuple[int, int, int] = (1, 1, 1),
                 padding: int = 1) -> None:
        super().__init__(cin, cout, 3, stride=stride, padding=(0, padding, padding))
        self.keep = 1 if stride[0] == 2 else 2

    def forward(self, x: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
        """[B, Cin, T, H, W] -> [B, Cout, T' (T, or the strided count), H', W']"""
        prev = cache.state.get(self)
        x = torch.cat([x[:, :, :1], x[:, :, :1], x] if prev is None else [prev, x], dim=2)
        # clone: a slice would keep the whole chunk alive until the next one
        cache.state[self] = x[:, :, -self.keep:].clone()
        return super().forward(x)


def _norm_silu(norm: GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm over each frame on its own, then SiLU: [B, C, T, H, W] -> same (contiguous)."""
    b, c, t, h, w = x.shape
    y = F.silu(norm(x.transpose(1, 2).reshape(b * t, c, h, w)), inplace=True)
    return y.reshape(b, t, c, h, w).transpose(1, 2).contiguous()


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = GroupNorm(GROUPS, cin, eps=EPS)
        self.conv1 = CausalConv3d(cin, cout)
        self.norm2 = GroupNorm(GROUPS, cout, eps=EPS)
        self.conv2 = CausalConv3d(cout, cout)
        # None registers no parameters: the files have `shortcut` only where widths change
        self.shortcut = Conv3d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
        """[B, Cin, T, H, W] -> [B, Cout, T, H, W]"""
        h = self.conv1(_norm_silu(self.norm1, x), cache)
        h = self.conv2(_norm_silu(self.norm2, h), cache)
        return h.add_(self.shortcut(x) if self.shortcut is not None else x)


class Downsampler(nn.Module):
    """x2 spatial (pad right / bottom, stride 2), and x2 temporal when `temporal`."""

    def __init__(self, c: int, temporal: bool) -> None:
        super().__init__()
        self.conv = CausalConv3d(c, c, stride=(2 if temporal else 1, 2, 2), padding=0)

    def forward(self, x: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)), cache)


class Upsampler(nn.Module):
    """x2 nearest spatial upsampling + conv; with `temporal`, every frame is then doubled
    except on the first chunk (the first latent frame stands for one video frame)."""

    def __init__(self, c: int, temporal: bool) -> None:
        super().__init__()
        self.conv = CausalConv3d(c, c)
        self.temporal = temporal

    def forward(self, x: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
        x = self.conv(F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest"), cache)
        if self.temporal:
            if cache.state.get(self):
                x = x.repeat_interleave(2, dim=2)
            cache.state[self] = True
        return x


class Block(nn.Module):
    """`convs` residual blocks, then (not on the last block) a down- or upsampler."""

    def __init__(self, cin: int, cout: int, n: int, down: bool, resample: bool | None) -> None:
        super().__init__()
        self.convs = nn.ModuleList(ResidualBlock(cin if j == 0 else cout, cout) for j in range(n))
        # resample: None = none (last block), False = spatial only, True = spatial + temporal
        self.down = down
        if down:
            self.downsampler = Downsampler(cout, resample) if resample is not None else None
        else:
            self.upsampler = Upsampler(cout, resample) if resample is not None else None

    def forward(self, x: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x, cache)
        resample = self.downsampler if self.down else self.upsampler
        return resample(x, cache) if resample is not None else x


class MidBlock(nn.Module):
    def __init__(self, c: int, n: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(ResidualBlock(c, c) for _ in range(n))

    def forward(self, x: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x, cache)
        return x


def _resample_kind(i: int, n: int) -> bool | None:
    """Block i of n: the first resamples in space only, the middle ones in space and time,
    the last not at all (block types Spatial, SpatialTemporal, SpatialTemporal, SpatialTemporal
    with `add_downsample / add_upsample = not is_final_block`)."""
    return None if i == n - 1 else i > 0


class Encoder(nn.Module):
    def __init__(self, cfg: EasyAnimateVAEConfig) -> None:
        super().__init__()
        w, n = cfg.widths, len(cfg.widths)
        self.conv_in = CausalConv3d(cfg.in_channels, w[0])
        self.down_blocks = nn.ModuleList(
            Block(w[max(i - 1, 0)], w[i], cfg.layers, True, _resample_kind(i, n)) for i in range(n))
        self.mid_block = MidBlock(w[-1], cfg.layers)
        self.conv_norm_out = GroupNorm(GROUPS, w[-1], eps=EPS)
        self.conv_out = CausalConv3d(w[-1], 2 * cfg.latent_channels)  # mean, log-variance

    def forward(self, x: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
        """One chunk [B, 3, 1 (first) or 4, H, W] -> [B, 2z, 1, H/8, W/8]"""
        x = self.conv_in(x, cache)
        for block in self.down_blocks:
            x = block(x, cache)
        x = self.mid_block(x, cache)
        return self.conv_out(_norm_silu(self.conv_norm_out, x), cache)


class Decoder(nn.Module):
    def __init__(self, cfg: EasyAnimateVAEConfig) -> None:
        super().__init__()
        w, n = cfg.widths[::-1], len(cfg.widths)
        self.conv_in = CausalConv3d(cfg.latent_channels, w[0])
        self.mid_block = MidBlock(w[0], cfg.layers)
        self.up_blocks = nn.ModuleList(
            Block(w[max(i - 1, 0)], w[i], cfg.layers + 1, False, _resample_kind(i, n)) for i in range(n))
        self.conv_norm_out = GroupNorm(GROUPS, w[-1], eps=EPS)
        self.conv_out = CausalConv3d(w[-1], cfg.out_channels)

    def forward(self, x: torch.Tensor, cache: ChunkCache) -> torch.Tensor:
        """One latent frame [B, z, 1, h, w] -> [B, 3, 1 (first chunk) or 4, 8h, 8w]"""
        x = self.mid_block(self.conv_in(x, cache), cache)
        for block in self.up_blocks:
            x = block(x, cache)
        return self.conv_out(_norm_silu(self.conv_norm_out, x), cache)


class EasyAnimateVAE(nn.Module):
    """The V5.1 MagVIT VAE. `encode` returns scaled latents (posterior mean * 0.7125), `decode`
    takes them; video in / out as [B, 3, F, H, W] in [-1, 1]."""

    def __init__(self, cfg: EasyAnimateVAEConfig = EasyAnimateVAEConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        z = cfg.latent_channels
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = Conv3d(2 * z, 2 * z, 1)
        self.post_quant_conv = Conv3d(z, z, 1)

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                        name: str = "EasyAnimate VAE") -> EasyAnimateVAE:
        """Build from either layout (prefix optional), weights stored in `dtype`. Raises
        VideoForgeError naming `name` when it is not this VAE or keys / shapes do not match."""
        sd = to_internal(sd)
        cfg = EasyAnimateVAEConfig.infer(sd, name)
        fmt = LATENT_FORMAT
        if (cfg.latent_channels != fmt.channels or len(cfg.widths) != 4
                or cfg.in_channels != 3 or cfg.out_channels != 3):
            raise VideoForgeError(
                f"{name}: a MagVIT VAE with {cfg.latent_channels} latent channels, "
                f"{len(cfg.widths)} blocks, {cfg.in_channels} -> {cfg.out_channels} image channels; "
                "the EasyAnimate V5 / V5.1 VAE has 16 latent channels, 4 blocks (8x space, 4x time) "
                "and RGB in and out. (The 4-channel VAEs of EasyAnimate V2-V4 are not supported.)")
        if any(c % GROUPS for c in cfg.widths):
            raise VideoForgeError(f"{name}: channel widths {cfg.widths} are not multiples of the "
                                  f"VAE's {GROUPS} norm groups.")
        with torch.device("meta"):
            model = cls(cfg)
        # Built on "meta" (no throw-away init), then takes over the file's (memory-mapped) tensors.
        model = model.to_empty(device="cpu")
        load_weights(model, sd, f"{name} (EasyAnimate VAE)", storage=dtype)
        return model.eval().requires_grad_(False)

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder.conv_in.weight.device

    def encode(self, video: torch.Tensor, plan: TilePlan | None = None,
               callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Video [B, 3, F, H, W] in [-1, 1] (F = 4k+1) -> scaled latent, tiled as `plan` says."""
        return tiled_encode(self.encode_window, video, LATENT_FORMAT, plan or TilePlan(), callback)

    @torch.no_grad()
    def encode_window(self, video: torch.Tensor) -> torch.Tensor:
        """One window: video [B, 3, F, H, W] in [-1, 1], F = 4k+1, H and W multiples of 8 (checked
        by `tiled_encode`) -> scaled posterior mean [B, 16, 1 + (F-1)/4, H/8, W/8] float32.
        Frame 0 alone, then 4 frames per chunk, as diffusers' `AutoencoderKLMagvit.encode`."""
        x = video.to(self.device, self.dtype)
        z = self.cfg.latent_channels
        cache, out = ChunkCache(), []
        for a in [0, *range(1, x.shape[2], ENCODE_CHUNK)]:
            b = 1 if a == 0 else a + ENCODE_CHUNK
            moments = self.quant_conv(self.encoder(x[:, :, a:b], cache))
            out.append(moments[:, :z].float())
        return torch.cat(out, dim=2) * SCALING_FACTOR

    @torch.no_grad()
    def decode_stream(self, latent: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """Scaled latent [B, 16, T, h, w] -> yields (first frame index, frames [B, 3, n, 8h, 8w]
        in [-1, 1], float32) latent frame by latent frame (n = 1, then 4): only one latent
        frame's activations and the causal cache are alive at a time."""
        z = self.cfg.latent_channels
        if latent.dim() != 5 or latent.shape[1] != z:
            raise VideoForgeError(f"EasyAnimate VAE decode: expected latent [B, {z}, T, h, w], "
                                  f"got {tuple(latent.shape)}.")
        x = latent.to(self.device, torch.float32) / SCALING_FACTOR
        x = self.post_quant_conv(x.to(self.dtype))
        cache = ChunkCache()
        for i in range(x.shape[2]):
            frames = self.decoder(x[:, :, i:i + 1], cache)
            yield (0 if i == 0 else 4 * i - 3), frames.float().clamp_(-1.0, 1.0)

    def decode(self, latent: torch.Tensor, callback: Callable[[int, int], None] | None = None,
               plan: TilePlan | None = None) -> torch.Tensor:
        """Scaled latent [B, 16, T, h, w] -> video [B, 3, 4(T-1)+1, 8h, 8w] in [-1, 1], float32.

        `plan` tiles in space (streaming through the cache is exact and already bounds memory
        in time). `callback(done, total)` counts decoded frames (progress, interrupts)."""
        return tiled_decode(self.decode_stream, latent, LATENT_FORMAT, plan or TilePlan(),
                            callback=callback)


# ---------------------------------------------------------------------------------------------
# family interface


class EasyAnimateVideoVAE(NodeVAE):
    """EasyAnimate V5.1 VAE with the family interface; video in/out as [B, 3, F, H, W] in [-1, 1]."""
    family = FAMILY
    latent = LATENT_FORMAT
    # The causal cache streams time exactly: temporal chunks add nothing (tiling.auto_plan).
    streams_time = True
    # Working memory per output pixel-frame of one decode step (one latent frame -> 4 frames),
    # fp32, at the real width (block_out_channels 128, 256, 512, 512; 2 layers per block),
    # scaled by the first width and the dtype's size. Measured on CPU (2 cores, torch 2.x) the
    # way bench/vae_tiling.py does: a fresh process per run, random-weight
    # EasyAnimateVAE(EasyAnimateVAEConfig()), one warm-up decode at 32x32, then
    # /proc/self/clear_refs "5" (VmHWM := VmRSS) after gc + malloc_trim, and VmHWM - VmRSS around
    # one `decode` of a [1, 16, T, h, w] latent, divided by the 4 x H x W pixel-frames of a step:
    # T=2 at 128x128 / 192x192 / 256x256 -> 12.5 / 12.7 / 10.9 KB; T=3 and T=5 at 128x128 ->
    # 14.5 / 13.3 KB (glibc's heap creeping over steps); 10.5-10.6 KB at every size and T with
    # MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=131072. The peak is in the last up block at
    # full resolution (256 -> 128 channels, 4 frames, causal-pad copies of each conv input).
    # Encode needs less (7.2 KB per pixel-frame of a 4-frame chunk at 128x128), so this figure
    # covers both. 15 KB: the highest measured figure plus a little headroom.
    BYTES_PER_PIXEL, REF_WIDTH = 15000.0, 128

    @property
    def width(self) -> int:
        return self.vae.cfg.widths[0]


def load_easyanimate_vae(sd: dict[str, torch.Tensor], name: str = "EasyAnimate VAE",
                         dtype: torch.dtype | None = torch.float32) -> EasyAnimateVideoVAE:
    """A state dict (original EasyAnimate or diffusers layout, `vae.` prefix optional) ->
    EasyAnimateVideoVAE with weights in `dtype` (None: fp32). Raises VideoForgeError naming
    `name` when it is not the EasyAnimate V5 / V5.1 VAE or does not match."""
    if dtype == torch.float8_e4m3fn:
        raise VideoForgeError(f"{name}: fp8 storage is not offered for VAEs (their convolutions need "
                              "real precision); choose auto, bf16, fp16 or fp32.")
    part = vae_part(sd)
    if not is_easyanimate_vae(part):
        missing = [k for k in SIGNATURE if k not in part]
        if missing:
            what = f"missing {missing[:4]}"
        else:
            cin, pq = part["encoder.conv_in.weight"], part["post_quant_conv.weight"]
            what = (f"encoder.conv_in {tuple(cin.shape)}, post_quant_conv {tuple(pq.shape)}; expected "
                    f"[C, 3, 3, 3, 3] and [16, 16, 1, 1, 1] (16 latent channels)")
        raise VideoForgeError(f"{name}: not an EasyAnimate V5.1 VAE ({what}; "
                              f"{len(sd)} tensors, e.g. {list(sd)[:3]}).")
    return EasyAnimateVideoVAE(EasyAnimateVAE.from_state_dict(part, dtype or torch.float32, name), name)
