"""EasyAnimate V5.1 MMDiT transformer (text-to-video, InP image-to-video, Control).

One network for all three V5.1 releases; they differ only in the patch-embedding input
channels (`EasyAnimateConfig.variant`):

* T2V      16 = noisy latent
* InP      33 = noisy latent 16 + mask 1 (resized to the latent grid, V5.1's
             `resize_inpaint_mask_directly`) + masked-video latent 16
* Control  48 = noisy latent 16 + control-video latent 16 + reference-image latent 16
             (zeros except latent frame 0, V5.1's `add_ref_latent_in_control_model`)

Every block is an MMDiT block: video and text tokens get their own q/k/v/out projections,
per-head LayerNorm q/k norms and feed-forwards, share one AdaLN-zero modulation
(`norm1/norm2`: 6 vectors from the time embedding: shift, scale, gate for video, then for text;
one LayerNorm for both streams) and attend jointly ([text, video] sequence, no mask). Video
queries / keys get a 3D RoPE (interleaved pairs; head dims split t 1/4, h 3/8, w 3/8) over
positions that HunyuanDiT-style crop coordinates place on a 30 x 45 (latent/2) base grid.

Parameter names are the official aigc-apps ones (`attn1` video, `attn2` text); diffusers files
are renamed by `convert.normalize_dit_keys`. Linear layers come from `models.common.ops`
(fp8 / fp16 / bf16 storage, compute in the activation dtype); norms and modulation arithmetic
run in float32; attention goes through `models.common.attention`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common import ops
from ..common.attention import attention
from ..common.errors import VideoForgeError
from ..common.norms import FP32LayerNorm, RMSNorm
from .convert import is_easyanimate_dit, normalize_dit_keys

ROPE_GRIDS = ("official", "diffusers")


@dataclass(frozen=True)
class EasyAnimateConfig:
    """Architecture of one EasyAnimate transformer, read off its weights (`infer`).

    Defaults are EasyAnimateV5.1-12b: width 3072 = 48 heads x 64, 48 MMDiT layers, Qwen2-VL-7B
    text (3584 wide), time embedding 512, patch 2.
    """
    in_channels: int = 16
    out_channels: int = 16
    dim: int = 3072
    head_dim: int = 64
    num_layers: int = 48
    ffn_dim: int = 12288
    text_dim: int = 3584
    freq_dim: int = 3072        # sinusoid width fed to time_embedding.linear_1 (= dim)
    time_embed_dim: int = 512
    patch_size: int = 2
    text_norm: bool = False     # add_norm_text_encoder: RMSNorm before text_proj (V5.1: no)
    after_norm: bool = False    # norm3 after each feed-forward (V5.1: no)
    norm_affine: bool = True    # norm_elementwise_affine
    norm_eps: float = 1e-5      # not stored in the weights: every release uses 1e-5
    qk_eps: float = 1e-6        # the q/k LayerNorms' eps (hard-coded in the reference)

    # Pipeline behaviour of the V5.1 releases that the weights cannot tell (their config.json /
    # config/easyanimate_video_v5.1_magvit_qwen.yaml): the InP pipeline noises the masked-video
    # latent (`add_noise_in_inpaint_model`), the Qwen2-VL prompt is encoded with its attention
    # mask but the transformer attends to every (padded) token (`enable_text_attention_mask`).
    add_noise_in_inpaint_model: ClassVar[bool] = True
    enable_text_attention_mask: ClassVar[bool] = True

    @property
    def num_heads(self) -> int:
        return self.dim // self.head_dim

    @property
    def variant(self) -> str:
        """'t2v' (16 input channels), 'inp' (33: + mask + masked video) or 'control' (48)."""
        extra = self.in_channels - self.out_channels
        if extra == 0:
            return "t2v"
        if extra == self.out_channels + 1:
            return "inp"
        return "control"

    @property
    def extra_channels(self) -> int:
        """Channels the caller concatenates after the noisy latent (`inpaint=` / `control=`)."""
        return self.in_channels - self.out_channels

    @property
    def resize_inpaint_mask_directly(self) -> bool:
        """V5.1 InP: the mask is resized to the latent grid (1 channel), not VAE-encoded (16)."""
        return self.variant == "inp"

    @property
    def size_name(self) -> str:
        if (self.dim, self.num_layers) == (3072, 48):
            return "12B"
        return f"{self.num_layers}x{self.dim}"

    @classmethod
    def infer(cls, sd: dict[str, torch.Tensor], name: str = "") -> "EasyAnimateConfig":
        """Read the architecture off official-layout keys (after `normalize_dit_keys`)."""
        what = name or "checkpoint"
        try:
            proj = sd["proj.weight"]                                  # [dim, in, p, p]
            dim, in_ch, p = proj.shape[0], proj.shape[1], proj.shape[-1]
            blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("transformer_blocks.")})
            if not blocks:
                raise KeyError("transformer_blocks.0")
            layers = blocks[-1] + 1
            if blocks != list(range(layers)):
                gone = sorted(set(range(layers)) - set(blocks))
                raise VideoForgeError(f"{what}: transformer blocks {gone} are missing; the file is "
                                      "truncated or not one transformer.")
            no_text = [i for i in range(layers) if f"transformer_blocks.{i}.attn2.to_q.weight" not in sd]
            if no_text:
                raise VideoForgeError(
                    f"{what}: blocks {no_text[:4]} have no text-stream attention (official attn2.* / "
                    "diffusers attn1.add_q_proj); EasyAnimate V5.1 uses MMDiT blocks throughout, "
                    "shared-weight (non-MMDiT) blocks are not supported.")
            if "transformer_blocks.0.attn1.norm_q.weight" not in sd:
                raise VideoForgeError(f"{what}: no q/k LayerNorms (attn1.norm_q); not an EasyAnimate "
                                      "V5/V5.1 transformer.")
            if "transformer_blocks.0.attn2.norm_q.weight" not in sd:
                raise VideoForgeError(
                    f"{what}: the text-stream q/k norms are missing (official attn2.norm_q / diffusers "
                    "attn1.norm_added_q). Diffusers files written before diffusers supported LayerNorm "
                    "`norm_added_q` lack them; re-download the current weights.")
            head_dim = sd["transformer_blocks.0.attn1.norm_q.weight"].shape[0]
            text_norm = "text_proj.1.weight" in sd
            text_w = sd["text_proj.1.weight" if text_norm else "text_proj.weight"]
            t1 = sd["time_embedding.linear_1.weight"]                 # [temb, freq_dim]
            cfg = cls(
                in_channels=in_ch, dim=dim, head_dim=head_dim, num_layers=layers, patch_size=p,
                out_channels=sd["proj_out.weight"].shape[0] // (p * p),
                ffn_dim=sd["transformer_blocks.0.ff.net.0.proj.weight"].shape[0],
                text_dim=text_w.shape[1], freq_dim=t1.shape[1], time_embed_dim=t1.shape[0],
                text_norm=text_norm,
                after_norm="transformer_blocks.0.norm3.weight" in sd,
                norm_affine="transformer_blocks.0.norm1.norm.weight" in sd,
            )
        except KeyError as e:
            raise VideoForgeError(f"{what}: not a complete EasyAnimate transformer "
                                  f"(no {e.args[0]!r}).") from None
        if proj.dim() != 4 or proj.shape[2] != proj.shape[3]:
            raise VideoForgeError(f"{what}: patch embedding `proj.weight` {tuple(proj.shape)} is not a "
                                  "square Conv2d kernel.")
        if dim % head_dim or head_dim % 16:
            raise VideoForgeError(f"{what}: width {dim} with {head_dim}-wide heads cannot carry "
                                  "EasyAnimate's 3D RoPE (heads must divide the width, head width "
                                  "a multiple of 16).")
        if cfg.in_channels < cfg.out_channels:
            raise VideoForgeError(f"{what}: {cfg.in_channels} input channels < {cfg.out_channels} output.")
        return cfg


# ------------------------------------------------------------------------------------ embeddings
def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoid [B, dim] float32, cos half first (diffusers `Timesteps(dim, flip_sin_to_cos=True,
    downscale_freq_shift=0)`), from t in the scheduler's units (0..1000)."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(10000.0) * k / half)
    ang = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def crop_region(grid_h: int, grid_w: int, patch: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where a (grid_h, grid_w) token grid sits on the 480x720-pixel base grid (60//p x 90//p
    tokens): resized to fit, centred (HunyuanDiT's `get_resize_crop_region_for_grid`).
    Returns ((top, left), (bottom, right)); Python's round() as the reference."""
    tw, th = 90 // patch, 60 // patch
    if grid_h / grid_w > th / tw:
        rh, rw = th, int(round(th / grid_h * grid_w))
    else:
        rw, rh = tw, int(round(tw / grid_w * grid_h))
    top, left = int(round((th - rh) / 2.0)), int(round((tw - rw) / 2.0))
    return (top, left), (top + rh, left + rw)


def rope_positions(frames: int, grid_h: int, grid_w: int, patch: int, grid: str = "official"
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fractional (t, h, w) positions of the token grid, float64.

    `official`: what the released weights were trained with (aigc-apps code on diffusers
    <= 0.31, numpy `linspace(start, stop, n, endpoint=False)`): start + k * (stop - start) / n.
    `diffusers`: diffusers >= 0.32's torch rewrite, `linspace(start, stop * (n-1)/n, n)`, which
    equals the above only when the crop starts at 0, i.e. for grids of exactly 2:3 aspect
    (h/w = 30/45) and wider-than-2:3 widths / taller-than-2:3 heights along the uncropped axis.
    Time positions are 0..frames-1 in both.
    """
    if grid not in ROPE_GRIDS:
        raise VideoForgeError(f"rope grid {grid!r}: expected one of {ROPE_GRIDS}.")
    (t0, l0), (t1, l1) = crop_region(grid_h, grid_w, patch)

    def axis(start: float, stop: float, n: int) -> torch.Tensor:
        k = torch.arange(n, dtype=torch.float64)
        if grid == "official":
            return start + k * (stop - start) / n
        if n == 1:
            return torch.full((1,), float(start), dtype=torch.float64)
        return start + k * (stop * (n - 1) / n - start) / (n - 1)

    return (torch.arange(frames, dtype=torch.float64), axis(t0, t1, grid_h), axis(l0, l1, grid_w))


def rope_cos_sin(head_dim: int, frames: int, grid_h: int, grid_w: int, patch: int,
                 grid: str = "official", theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [frames*grid_h*grid_w, head_dim] float32, each angle repeated for its channel
    pair; axes t, h, w take head_dim/4, 3/8, 3/8 of the channels (tokens in (t, h, w) order)."""
    pt, ph, pw = rope_positions(frames, grid_h, grid_w, patch, grid)
    dims = (head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3)

    def ang(pos: torch.Tensor, d: int) -> torch.Tensor:
        inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        return torch.outer(pos, inv)                                  # [n, d/2]

    at, ah, aw = ang(pt, dims[0]), ang(ph, dims[1]), ang(pw, dims[2])
    f, h, w = frames, grid_h, grid_w
    a = torch.cat([at[:, None, None].expand(f, h, w, -1), ah[None, :, None].expand(f, h, w, -1),
                   aw[None, None, :].expand(f, h, w, -1)], dim=-1).reshape(f * h * w, -1)
    a = a.repeat_interleave(2, dim=-1)
    return a.cos().float(), a.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of x [B, L, H, D] by cos / sin [L, D] (float32 math, as the
    reference's `apply_rotary_emb(use_real_unbind_dim=-1)`)."""
    xf = x.float()
    x1, x2 = xf.unflatten(-1, (-1, 2)).unbind(-1)
    rot = torch.stack([-x2, x1], dim=-1).flatten(-2)
    return (xf * cos[:, None] + rot * sin[:, None]).to(x.dtype)


# ---------------------------------------------------------------------------------------- layers
class TimestepEmbedding(nn.Module):
    """`time_embedding.linear_1/2`: sinusoid -> SiLU MLP -> [B, time_embed_dim]."""

    def __init__(self, freq_dim: int, out_dim: int):
        super().__init__()
        self.linear_1 = ops.Linear(freq_dim, out_dim)
        self.linear_2 = ops.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class AdaNormZero(nn.Module):
    """`norm1` / `norm2`: shift, scale, gate for video then text from the time embedding; one
    float32 LayerNorm for both streams."""

    def __init__(self, temb_dim: int, dim: int, affine: bool, eps: float):
        super().__init__()
        self.linear = ops.Linear(temb_dim, 6 * dim)
        self.norm = FP32LayerNorm(dim, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor, c: torch.Tensor, temb: torch.Tensor):
        """x [B, Lv, C], c [B, Lt, C], temb [B, T] -> modulated x, c (input dtype) and float32
        gates [B, 1, C] for each."""
        e = self.linear(F.silu(temb)).float()[:, None]               # [B, 1, 6C]
        shift, scale, gate, c_shift, c_scale, c_gate = e.chunk(6, dim=-1)
        xm = (self.norm(x).float() * (1 + scale) + shift).to(x.dtype)
        cm = (self.norm(c).float() * (1 + c_scale) + c_shift).to(c.dtype)
        return xm, cm, gate, c_gate


class GeluProj(nn.Module):
    """`net.0`: Linear then tanh-GELU (diffusers `GELU(approximate='tanh')`)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = ops.Linear(dim, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """`ff` / `txt_ff`: keys `net.0.proj`, `net.2` (net.1 / net.3 are dropouts)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.net = nn.ModuleList([GeluProj(dim, inner), nn.Identity(), ops.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class StreamAttention(nn.Module):
    """One stream's projections (`attn1` video / `attn2` text): q, k, v, out and the per-head
    LayerNorms on q and k. The attention itself is joint, in `Block.forward`."""

    def __init__(self, dim: int, heads: int, head_dim: int, eps: float):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (ops.Linear(dim, dim) for _ in range(3))
        self.norm_q = FP32LayerNorm(head_dim, eps=eps)
        self.norm_k = FP32LayerNorm(head_dim, eps=eps)
        self.to_out = nn.ModuleList([ops.Linear(dim, dim)])

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, L, C] -> q, k, v [B, L, H, D] (q, k normalised per head)."""
        def split(y):
            return y.unflatten(-1, (self.heads, -1))
        return (self.norm_q(split(self.to_q(x))), self.norm_k(split(self.to_k(x))),
                split(self.to_v(x)))


class Block(nn.Module):
    def __init__(self, cfg: EasyAnimateConfig):
        super().__init__()
        d, h = cfg.dim, cfg.num_heads
        self.norm1 = AdaNormZero(cfg.time_embed_dim, d, cfg.norm_affine, cfg.norm_eps)
        self.attn1 = StreamAttention(d, h, cfg.head_dim, cfg.qk_eps)   # video
        self.attn2 = StreamAttention(d, h, cfg.head_dim, cfg.qk_eps)   # text
        self.norm2 = AdaNormZero(cfg.time_embed_dim, d, cfg.norm_affine, cfg.norm_eps)
        self.ff = FeedForward(d, cfg.ffn_dim)
        self.txt_ff = FeedForward(d, cfg.ffn_dim)
        self.norm3 = FP32LayerNorm(d, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine) \
            if cfg.after_norm else None
        self.backend = "auto"

    def forward(self, x: torch.Tensor, c: torch.Tensor, temb: torch.Tensor,
                cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, Lv, C] video tokens, c [B, Lt, C] text tokens, temb [B, T], cos / sin [Lv, D]."""
        dt, lt = x.dtype, c.shape[1]
        nx, nc, gate, c_gate = self.norm1(x, c, temb)
        qv, kv, vv = self.attn1.qkv(nx)
        qt, kt, vt = self.attn2.qkv(nc)
        qv, kv = apply_rope(qv, cos, sin), apply_rope(kv, cos, sin)
        out = attention(torch.cat([qt, qv], 1), torch.cat([kt, kv], 1), torch.cat([vt, vv], 1),
                        backend=self.backend)                         # [B, Lt + Lv, C]
        ax = self.attn1.to_out[0](out[:, lt:])
        ac = self.attn2.to_out[0](out[:, :lt])
        x = (x.float() + gate * ax.float()).to(dt)
        c = (c.float() + c_gate * ac.float()).to(dt)

        nx, nc, gate, c_gate = self.norm2(x, c, temb)
        fx, fc = self.ff(nx), self.txt_ff(nc)
        if self.norm3 is not None:
            fx, fc = self.norm3(fx), self.norm3(fc)
        x = (x.float() + gate * fx.float()).to(dt)
        c = (c.float() + c_gate * fc.float()).to(dt)
        return x, c


class AdaNormOut(nn.Module):
    """`norm_out`: LayerNorm modulated by (shift, scale) = linear(silu(temb)) - shift first."""

    def __init__(self, temb_dim: int, dim: int, affine: bool, eps: float):
        super().__init__()
        self.linear = ops.Linear(temb_dim, 2 * dim)
        self.norm = FP32LayerNorm(dim, eps=eps, elementwise_affine=affine)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(F.silu(temb)).float()[:, None].chunk(2, dim=-1)
        return (self.norm(x).float() * (1 + scale) + shift).to(x.dtype)


class EasyAnimateDiT(nn.Module):
    def __init__(self, cfg: EasyAnimateConfig):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.dim, cfg.patch_size
        self.time_embedding = TimestepEmbedding(cfg.freq_dim, cfg.time_embed_dim)
        self.proj = ops.Conv2d(cfg.in_channels, d, kernel_size=p, stride=p)
        if cfg.text_norm:
            self.text_proj = nn.Sequential(RMSNorm(cfg.text_dim, eps=1e-6), ops.Linear(cfg.text_dim, d))
        else:
            self.text_proj = ops.Linear(cfg.text_dim, d)
        self.transformer_blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm_final = FP32LayerNorm(d, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.norm_out = AdaNormOut(cfg.time_embed_dim, d, cfg.norm_affine, cfg.norm_eps)
        self.proj_out = ops.Linear(d, p * p * cfg.out_channels)
        # RoPE positions: "official" (training-time formula) or "diffusers" (diffusers >= 0.32,
        # slightly different for non-2:3 grids); see `rope_positions`.
        self.rope_grid = "official"
        self._rope_cache: dict = {}

    @property
    def variant(self) -> str:
        return self.cfg.variant

    def set_attention(self, backend: str) -> None:
        for b in self.transformer_blocks:
            b.backend = backend

    def rope(self, frames: int, gh: int, gw: int, device: torch.device):
        key = (frames, gh, gw, self.rope_grid, str(device))
        if key not in self._rope_cache:
            self._rope_cache.clear()   # one video size at a time; no unbounded growth
            cos, sin = rope_cos_sin(self.cfg.head_dim, frames, gh, gw, self.cfg.patch_size,
                                    self.rope_grid)
            self._rope_cache[key] = (cos.to(device), sin.to(device))
        return self._rope_cache[key]

    def _inputs(self, x: torch.Tensor, inpaint: torch.Tensor | None,
                control: torch.Tensor | None) -> torch.Tensor:
        cfg = self.cfg
        if x.dim() != 5 or x.shape[1] != cfg.out_channels:
            raise VideoForgeError(f"EasyAnimate latent must be [B, {cfg.out_channels}, T, H, W], "
                                  f"got {tuple(x.shape)}.")
        p = cfg.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise VideoForgeError(f"latent size {x.shape[-2]}x{x.shape[-1]} must be divisible by the "
                                  f"patch size {p} (pixel size by {8 * p}).")
        want = {"t2v": (False, False), "inp": (True, False), "control": (False, True)}[cfg.variant]
        got = (inpaint is not None, control is not None)
        if got != want:
            need = {"t2v": "no extra latents", "inp": f"inpaint= ({cfg.extra_channels} channels: "
                    "mask 1 + masked-video latent 16)",
                    "control": f"control= ({cfg.extra_channels} channels: control latent + "
                    "reference-image latent)"}[cfg.variant]
            given = ", ".join(f"{n}={'set' if g else None}" for n, g in zip(("inpaint", "control"), got))
            raise VideoForgeError(f"this EasyAnimate {cfg.variant} model takes {need}; got {given}.")
        extra = inpaint if inpaint is not None else control
        if extra is None:
            return x
        if extra.shape[0] != x.shape[0] or extra.shape[2:] != x.shape[2:] \
                or extra.shape[1] != cfg.extra_channels:
            want_shape = (x.shape[0], cfg.extra_channels, *x.shape[2:])
            raise VideoForgeError(f"EasyAnimate {cfg.variant} conditioning must be {want_shape}, "
                                  f"got {tuple(extra.shape)}.")
        return torch.cat([x, extra.to(x.dtype)], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                inpaint: torch.Tensor | None = None,
                control: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: [B, 16, T, H, W] noisy latent (H, W divisible by the patch, 2; any T). Computation
                runs in x's dtype.
            t: [B] timestep in the scheduler's units, i.e. what the diffusers pipelines pass as
                `timestep` (`t_expand`): FlowMatchEulerDiscreteScheduler's sigma * 1000. The
                sinusoid is computed in float32 from t as given.
            context: [B, L, text_dim] prompt embeddings (Qwen2-VL `hidden_states[-2]`), padded as
                the pipeline pads them (to max_sequence_length, 256 by default). No mask: like
                the reference transformer, every token, padding included, is attended to.
            inpaint: InP models only, [B, 17, T, H, W] = cat(mask, masked-video latent 16):
                diffusers' `inpaint_latents`. As EasyAnimateInpaintPipeline builds it: mask =
                (1 - m) trilinearly resized to the latent grid (first frame alone) times the VAE
                scaling factor, m = 1 where pixels are generated; masked video = pixels with the
                generated region set to -1, noise-augmented, VAE-encoded, times the scaling
                factor. Text-to-video with an InP model: all zeros.
            control: Control models only, [B, 32, T, H, W] = cat(control-video latent 16,
                reference-image latent 16 (zeros but frame 0; all zeros without a reference
                image)): diffusers' `control_latents`.
        Returns:
            [B, 16, T, H, W] flow prediction (the reference's `sample`).
        """
        cfg = self.cfg
        x = self._inputs(x, inpaint, control)
        b, _, f, h, w = x.shape
        p = cfg.patch_size
        gh, gw = h // p, w // p
        dt = x.dtype
        if t.dim() == 0:
            t = t.expand(b)
        temb = self.time_embedding(timestep_embedding(t.to(x.device), cfg.freq_dim).to(dt))

        # per-frame 2D patches, tokens in (t, h, w) order
        v = self.proj(x.transpose(1, 2).flatten(0, 1))                # [B*T, C, gh, gw]
        v = v.unflatten(0, (b, f)).flatten(3).transpose(2, 3).flatten(1, 2)   # [B, T*gh*gw, C]
        c = self.text_proj(context.to(device=x.device, dtype=dt))
        cos, sin = self.rope(f, gh, gw, x.device)
        for block in self.transformer_blocks:
            v, c = block(v, c, temb, cos, sin)
        v = self.norm_out(self.norm_final(v), temb)
        v = self.proj_out(v)                                          # [B, L, C_out * p * p]
        return self.unpatchify(v, f, gh, gw)

    def unpatchify(self, v: torch.Tensor, f: int, gh: int, gw: int) -> torch.Tensor:
        """[B, T*gh*gw, C_out*p*p] (channel-major within a token: c, py, px) -> [B, C_out, T, H, W]."""
        p, co = self.cfg.patch_size, self.cfg.out_channels
        v = v.reshape(v.shape[0], f, gh, gw, co, p, p).permute(0, 4, 1, 2, 5, 3, 6)
        return v.reshape(v.shape[0], co, f, gh * p, gw * p)


def build_easyanimate_dit(sd: dict[str, torch.Tensor], name: str,
                          storage: torch.dtype | None = None) -> EasyAnimateDiT:
    """State dict (either layout, ComfyUI prefixes allowed) -> EasyAnimateDiT on CPU.

    Built on the meta device, then the file's tensors are taken over (`load_weights`): 2-D+
    weights kept in `storage` (None: as stored; fp8_e4m3fn / bf16 / fp16 / fp32), norms and
    biases in float32. Raises VideoForgeError naming `name` when the file is not an EasyAnimate
    transformer or does not match the inferred architecture.
    """
    sd = normalize_dit_keys(sd, name)
    if not is_easyanimate_dit(sd):
        raise VideoForgeError(f"{name}: not an EasyAnimate transformer ({len(sd)} tensors, "
                              f"e.g. {list(sd)[:3]}).")
    cfg = EasyAnimateConfig.infer(sd, name)
    with torch.device("meta"):
        dit = EasyAnimateDiT(cfg)
    dit = dit.to_empty(device="cpu")
    ops.load_weights(dit, sd, name, storage=storage)
    return dit.eval().requires_grad_(False)
