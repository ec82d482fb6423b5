"""Wan2.1 video VAE: causal 3D convolutions, 8x spatial / 4x temporal compression, 16 latent channels.

Parameter names follow the official Wan-AI layout (`Wan2.1_VAE.pth`, ComfyUI's
`wan_2.1_vae.safetensors`): `encoder.conv1`, `encoder.downsamples.N`, `encoder.middle`,
`encoder.head`, `conv1`, `conv2`, `decoder.conv1`, `decoder.middle`, `decoder.upsamples.N`,
`decoder.head`.

Video is processed in temporal chunks (encode: 1, 4, 4, ... frames; decode: one latent frame at a
time). Every causal conv keeps the last `CACHE_T` input frames of the previous chunk in a
`FeatCache`, which makes the chunked result equal to the reference while only one chunk's
activations are alive at once.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.checkpoint import strip_prefix
from ..common.errors import VideoForgeError
from ..common.family import LatentFormat
from ..common.tiling import TilePlan, tiled_decode, tiled_encode
from .convert import vae_from_diffusers

CACHE_T = 2  # frames a temporal-kernel-3 causal conv needs from the previous chunk

# Per-channel statistics of Wan2.1 latents (the `latents_mean` / `latents_std` of diffusers,
# `Wan21` latent format of ComfyUI); latents handed to the diffusion model are (mu - mean) / std.
LATENT_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
LATENT_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]

LATENT_FORMAT = LatentFormat(channels=16, time_ratio=4, space_ratio=8, first_frame_alone=True,
                             size_multiple=16)

DIM_MULT = (1, 2, 4, 4)
NUM_RES = 2
TEMPORAL_DOWN = (False, True, True)

# Keys whose presence identifies a Wan2.1 VAE (and whose absence names the wrong file kind).
SIGNATURE = ("encoder.conv1.weight", "conv1.weight", "conv2.weight",
             "decoder.conv1.weight", "decoder.upsamples.0.residual.0.gamma", "decoder.head.2.weight")


class FeatCache:
    """Tail frames of each causal layer's input, carried from one temporal chunk to the next.

    Layers take slots in call order, which is the same for every chunk, so the slot index
    identifies the layer without any bookkeeping in the modules themselves.
    """

    def __init__(self) -> None:
        self.slots: list[torch.Tensor | None] = []
        self.i = 0
        self.chunk = -1

    def next_chunk(self) -> None:
        self.i = 0
        self.chunk += 1

    @property
    def first(self) -> bool:
        return self.chunk == 0

    def read(self) -> torch.Tensor | None:
        return self.slots[self.i] if self.i < len(self.slots) else None

    def write(self, value: torch.Tensor | None) -> None:
        if self.i < len(self.slots):
            self.slots[self.i] = value
        else:
            self.slots.append(value)
        self.i += 1


class CausalConv3d(nn.Conv3d):
    """Conv3d padded only on the past side of time, continuing from the cached previous chunk."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int, int],
                 stride: int | tuple[int, int, int] = 1, padding: int | tuple[int, int, int] = 0) -> None:
        super().__init__(cin, cout, kernel, stride=stride)
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        self.tpad = 2 * pt
        self.spad = (pw, pw, ph, ph)

    def forward(self, x: torch.Tensor, cache: FeatCache | None = None) -> torch.Tensor:
        """[B, Cin, T, H, W] -> [B, Cout, T', H', W']"""
        if self.tpad and cache is not None:
            prev = cache.read()
            n = x.shape[2]
            if prev is not None:
                x = torch.cat([prev, x], dim=2)
            # clone: a slice would keep the whole chunk alive until the next one
            cache.write(x[:, :, -CACHE_T:].clone())
            x = F.pad(x, (*self.spad, self.tpad - (x.shape[2] - n), 0))
        else:
            x = F.pad(x, (*self.spad, self.tpad, 0))
        return super().forward(x)


class RMSNorm(nn.Module):
    """L2-normalise over channels (dim 1) times sqrt(C) * gamma; math in float32."""

    def __init__(self, dim: int, images: bool = False) -> None:
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, ...] -> same"""
        y = F.normalize(x.float(), dim=1).to(x.dtype)
        return y * self.scale * self.gamma.to(x.dtype)


def _frames_2d(x: torch.Tensor, fn: nn.Module) -> torch.Tensor:
    """Apply a 2D module to every frame: [B, C, T, H, W] -> [B, C', T, H', W']."""
    b, c, t, h, w = x.shape
    y = fn(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


class Resample(nn.Module):
    """Spatial x2 up/down sampling, optionally with x2 temporal up/down sampling."""

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode.startswith("up"):
            # halving channels here is why the next decoder stage's input is dim // 2
            self.resample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest-exact"),
                                          nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:
            # pad right/bottom only so an even size halves exactly
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: FeatCache) -> torch.Tensor:
        """[B, C, T, H, W] -> up: [B, C/2, T*, 2H, 2W]; down: [B, C, T*, H/2, W/2]
        (T* = T, 2T or T/2 as the mode and chunk say)."""
        if self.mode == "upsample3d":
            if cache.first:
                # The first latent frame stands for one video frame: no temporal upsampling. Keep
                # the conv's slot empty so the second chunk starts from zero padding.
                cache.write(None)
            else:
                b, c, t, h, w = x.shape
                x = self.time_conv(x, cache)  # [B, 2C, T]: two output frames per input frame
                x = x.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
        x = _frames_2d(x, self.resample)
        if self.mode == "downsample3d":
            prev = cache.read()
            cache.write(x[:, :, -1:].clone())
            # The first frame passes alone (causal 1 + 4k layout); later chunks are strided over
            # with the last frame of the previous chunk in front.
            if prev is not None:
                x = self.time_conv(torch.cat([prev, x], dim=2))
        return x


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        # Indices are the checkpoint's: norm, act, conv, norm, act, dropout, conv.
        self.residual = nn.Sequential(
            RMSNorm(cin), nn.SiLU(), CausalConv3d(cin, cout, 3, padding=1),
            RMSNorm(cout), nn.SiLU(), nn.Identity(), CausalConv3d(cout, cout, 3, padding=1))
        self.shortcut = CausalConv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FeatCache) -> torch.Tensor:
        """[B, Cin, T, H, W] -> [B, Cout, T, H, W]"""
        r = self.residual
        h = r[2](F.silu(r[0](x)), cache)
        h = r[6](F.silu(r[3](h)), cache)
        return h + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no temporal mixing)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.to_qkv(self.norm(x)).reshape(n, 3, c, h * w).transpose(2, 3).unbind(1)
        y = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return self.proj(y.transpose(1, 2).reshape(n, c, h, w))

    def forward(self, x: torch.Tensor, cache: FeatCache | None = None) -> torch.Tensor:
        """[B, C, T, H, W] -> same"""
        return x + _frames_2d(x, self._attend)


class Middle(nn.Sequential):
    def __init__(self, dim: int) -> None:
        super().__init__(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))

    def forward(self, x: torch.Tensor, cache: FeatCache) -> torch.Tensor:
        """[B, C, T, H, W] -> same"""
        for layer in self:
            x = layer(x, cache)
        return x


class Head(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(RMSNorm(cin), nn.SiLU(), CausalConv3d(cin, cout, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: FeatCache) -> torch.Tensor:
        """[B, Cin, T, H, W] -> [B, Cout, T, H, W]"""
        return self[2](F.silu(self[0](x)), cache)


class Encoder(nn.Module):
    def __init__(self, dim: int, zc: int) -> None:
        super().__init__()
        dims = [dim * m for m in (1, *DIM_MULT)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for j in range(NUM_RES):
                layers.append(ResidualBlock(cin if j == 0 else cout, cout))
            if i < len(DIM_MULT) - 1:
                layers.append(Resample(cout, "downsample3d" if TEMPORAL_DOWN[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        self.middle = Middle(dims[-1])
        self.head = Head(dims[-1], zc)

    def forward(self, x: torch.Tensor, cache: FeatCache) -> torch.Tensor:
        """[B, 3, 1 or 4, H, W] -> [B, zc, 1, H/8, W/8]"""
        x = self.conv1(x, cache)
        for layer in self.downsamples:
            x = layer(x, cache)
        return self.head(self.middle(x, cache), cache)


class Decoder(nn.Module):
    def __init__(self, dim: int, z_dim: int) -> None:
        super().__init__()
        dims = [dim * m for m in (DIM_MULT[-1], *DIM_MULT[::-1])]
        temporal_up = TEMPORAL_DOWN[::-1]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = Middle(dims[0])
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                cin //= 2  # the previous stage's Resample halved the channels
            for j in range(NUM_RES + 1):
                layers.append(ResidualBlock(cin if j == 0 else cout, cout))
            if i < len(DIM_MULT) - 1:
                layers.append(Resample(cout, "upsample3d" if temporal_up[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        self.head = Head(dims[-1], 3)

    def forward(self, x: torch.Tensor, cache: FeatCache) -> torch.Tensor:
        """[B, z, 1, h, w] -> [B, 3, 1 (first chunk) or 4, 8h, 8w]"""
        x = self.middle(self.conv1(x, cache), cache)
        for layer in self.upsamples:
            x = layer(x, cache)
        return self.head(x, cache)


def is_wan_vae(sd: dict[str, torch.Tensor]) -> bool:
    """True for a Wan2.1 VAE state dict in the official layout (not Wan2.2's 48-channel VAE)."""
    sd = strip_prefix(sd, ("first_stage_model.", "vae."))
    if not all(k in sd for k in SIGNATURE):
        return False
    # Wan2.2's VAE patchifies its input (12 input channels) and has 48 latent channels.
    return sd["encoder.conv1.weight"].shape[1] == 3 and sd["conv2.weight"].shape[0] == len(LATENT_MEAN)


class WanVAE(nn.Module):
    """Wan2.1 VAE. `encode` returns normalised latents, `decode` takes them."""

    def __init__(self, dim: int = 96, z_dim: int = 16) -> None:
        super().__init__()
        if z_dim != len(LATENT_MEAN):
            raise VideoForgeError(f"Wan2.1 VAE: z_dim {z_dim} given, expected {len(LATENT_MEAN)}.")
        self.dim = dim
        self.z_dim = z_dim
        self.encoder = Encoder(dim, z_dim * 2)  # mean and log-variance
        self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder(dim, z_dim)
        self._set_stats()

    def _set_stats(self) -> None:
        # Not in the checkpoint: buffers so they follow .to(device).
        self.register_buffer("latent_mean", torch.tensor(LATENT_MEAN).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latent_std", torch.tensor(LATENT_STD).view(1, -1, 1, 1, 1), persistent=False)

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> WanVAE:
        """Build from an official-layout state dict, weights cast to `dtype`.

        Raises VideoForgeError when the keys are not those of a Wan2.1 VAE.
        """
        sd = strip_prefix(sd, ("first_stage_model.", "vae."))
        if "encoder.conv_in.weight" in sd and "encoder.conv1.weight" not in sd:
            sd = vae_from_diffusers(sd)  # a diffusers AutoencoderKLWan file: same weights, other names
        missing = [k for k in SIGNATURE if k not in sd]
        if missing:
            raise VideoForgeError(f"Not a Wan2.1 VAE state dict: missing {missing}.")
        cin = sd["encoder.conv1.weight"].shape[1]
        z_dim = sd["conv2.weight"].shape[0]
        if cin != 3 or z_dim != len(LATENT_MEAN):
            raise VideoForgeError(
                f"Wan VAE with {cin} input / {z_dim} latent channels; expected the Wan2.1 VAE (3 / 16). "
                "The Wan2.2 (48-channel) VAE is a different model.")
        with torch.device("meta"):
            model = cls(sd["encoder.conv1.weight"].shape[0], z_dim)
        own = model.state_dict()
        lost = sorted(set(own) - set(sd))
        extra = sorted(set(sd) - set(own))
        shape = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in own.items() if k in sd and sd[k].shape != v.shape]
        if lost or extra or shape:
            raise VideoForgeError(
                f"Wan2.1 VAE state dict does not match the model: missing {len(lost)} keys {lost[:8]}, "
                f"unexpected {len(extra)} keys {extra[:8]}, shape mismatches {shape[:4]}.")
        model.load_state_dict({k: sd[k].to(dtype) for k in own}, strict=True, assign=True)
        model._set_stats()
        return model.eval()

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv1.weight.device

    def encode(self, video: torch.Tensor, plan: TilePlan | None = None,
               callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Video [B, 3, F, H, W] in [-1, 1] -> normalised latent, tiled as `plan` says."""
        return tiled_encode(self.encode_window, video, LATENT_FORMAT, plan or TilePlan(), callback)

    @torch.no_grad()
    def encode_window(self, video: torch.Tensor) -> torch.Tensor:
        """One window: video [B, 3, F, H, W] in [-1, 1], F = 4k+1, H and W multiples of 8 (checked
        by `tiled_encode`, which calls this) -> normalised latent (posterior mean)
        [B, 16, 1 + (F-1)/4, H/8, W/8], float32."""
        f = video.shape[2]
        x = video.to(self.device, self.dtype)
        cache, chunks = FeatCache(), []
        for s in range(0, f, 4):
            start = 0 if s == 0 else s - 3  # chunks [0:1], [1:5], [5:9], ...
            cache.next_chunk()
            chunks.append(self.encoder(x[:, :, start:s + 1], cache))
        mu = self.conv1(torch.cat(chunks, dim=2))[:, :self.z_dim].float()
        return (mu - self.latent_mean) / self.latent_std

    @torch.no_grad()
    def decode_stream(self, latent: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """Normalised latent [B, 16, T, h, w] -> yields (first frame index, frames [B, 3, n, 8h, 8w]
        in [-1, 1], float32) latent frame by latent frame (n = 1, then 4): only one latent frame's
        activations and the causal cache are alive at a time."""
        if latent.dim() != 5 or latent.shape[1] != self.z_dim:
            raise VideoForgeError(f"Wan VAE decode: expected latent [B, {self.z_dim}, T, h, w], "
                                  f"got {tuple(latent.shape)}.")
        z = latent.to(self.device, torch.float32) * self.latent_std + self.latent_mean
        x = self.conv2(z.to(self.dtype))
        cache = FeatCache()
        for i in range(latent.shape[2]):
            cache.next_chunk()
            frames = self.decoder(x[:, :, i:i + 1], cache)
            yield (0 if i == 0 else 4 * i - 3), frames.float().clamp(-1.0, 1.0)

    def decode(self, latent: torch.Tensor, callback: Callable[[int, int], None] | None = None,
               plan: TilePlan | None = None) -> torch.Tensor:
        """Normalised latent [B, 16, T, h, w] -> video [B, 3, 4(T-1)+1, 8h, 8w] in [-1, 1], float32.

        `plan` tiles in space (and, if asked, in time; streaming through the cache is exact and
        already bounded, so temporal chunks are rarely useful here). `callback(done, total)`
        counts decoded frames (progress, interrupts).
        """
        return tiled_decode(self.decode_stream, latent, LATENT_FORMAT, plan or TilePlan(),
                            callback=callback)
