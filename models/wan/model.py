"""Wan2.1 diffusion transformer (T2V 1.3B / 14B; I2V and first-last-frame ready).

Parameter names are the official Wan-AI ones, which ComfyUI's repackaged files also use, so
both load without renaming. The config is read off the state dict (`WanConfig.infer`).
Linear layers come from `models.common.ops` (fp8 / fp16 storage, compute in the activation
dtype); attention goes through the one dispatcher in `models.common.attention`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..common import ops
from ..common.attention import attention
from ..common.errors import VideoForgeError
from ..common.norms import FP32LayerNorm, RMSNorm
from ..common.rope import apply_rope, axes_split, nd_rope_complex

HEAD_DIM = 128  # every released Wan2.1 model uses 128-dim heads (1.3B: 12 heads, 14B: 40)


@dataclass(frozen=True)
class WanConfig:
    in_dim: int = 16
    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    text_dim: int = 4096
    out_dim: int = 16
    num_heads: int = 12
    num_layers: int = 30
    patch: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    image_dim: int | None = None   # CLIP-H width (1280) for I2V / FLF2V, None for T2V
    image_pos_len: int | None = None  # FLF2V: 514 learned positions over both images' tokens

    @property
    def model_type(self) -> str:
        if self.image_dim is None:
            return "t2v"
        return "flf2v" if self.image_pos_len else "i2v"

    @property
    def size_name(self) -> str:
        return {1536: "1.3B", 5120: "14B"}.get(self.dim, f"dim{self.dim}")

    @classmethod
    def infer(cls, sd: dict[str, torch.Tensor]) -> "WanConfig":
        """Read the architecture off official-layout keys."""
        pe = sd["patch_embedding.weight"]                    # [dim, in_dim, pt, ph, pw]
        dim, in_dim, patch = pe.shape[0], pe.shape[1], tuple(pe.shape[2:])
        if dim % HEAD_DIM:
            raise VideoForgeError(f"Wan model width {dim} is not a multiple of the {HEAD_DIM}-wide "
                                  "heads every Wan2.1 release uses.")
        layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        return cls(
            in_dim=in_dim, dim=dim, patch=patch,
            ffn_dim=sd["blocks.0.ffn.0.weight"].shape[0],
            freq_dim=sd["time_embedding.0.weight"].shape[1],
            text_dim=sd["text_embedding.0.weight"].shape[1],
            out_dim=sd["head.head.weight"].shape[0] // math.prod(patch),
            num_heads=dim // HEAD_DIM, num_layers=layers,
            qk_norm="blocks.0.self_attn.norm_q.weight" in sd,
            cross_attn_norm="blocks.0.norm3.weight" in sd,
            image_dim=sd["img_emb.proj.0.weight"].shape[0] if "img_emb.proj.0.weight" in sd else None,
            image_pos_len=sd["img_emb.emb_pos"].shape[1] if "img_emb.emb_pos" in sd else None,
        )


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] (cos first, as Wan), computed in float64 like the reference."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    ang = torch.outer(t.to(torch.float64), freqs)
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=1).float()


class Attention(nn.Module):
    """Self- or cross-attention with RMS qk-norm over the whole width; optional image K/V
    (I2V: the CLIP tokens get their own keys / values and the two results are summed)."""

    def __init__(self, dim: int, heads: int, qk_norm: bool, eps: float, image: bool = False):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (ops.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        if image:
            self.k_img, self.v_img = ops.Linear(dim, dim), ops.Linear(dim, dim)
            self.norm_k_img = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.backend = "auto"

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(2, (self.heads, -1))

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None = None,
                freqs: torch.Tensor | None = None, img_len: int = 0,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, C]; ctx [B, img_len + Lt, C] or None (self-attention); freqs [L, 1, D/2];
        bias [B, Lt] additive logits for the text keys (see `WanModel.text_context`)."""
        src = x if ctx is None else ctx[:, img_len:]
        q = self._split(self.norm_q(self.q(x)))
        k = self._split(self.norm_k(self.k(src)))
        v = self._split(self.v(src))
        if freqs is not None:
            q, k = apply_rope(q, freqs), apply_rope(k, freqs)
        mask = None if bias is None else bias[:, None, None, :].to(q.dtype)
        out = attention(q, k, v, mask=mask, backend=self.backend)
        if img_len:
            img = ctx[:, :img_len]
            k_img = self._split(self.norm_k_img(self.k_img(img)))
            out = out + attention(q, k_img, self._split(self.v_img(img)), backend=self.backend)
        return self.o(out)


class Block(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = FP32LayerNorm(d, cfg.eps, elementwise_affine=False)
        self.self_attn = Attention(d, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm3 = FP32LayerNorm(d, cfg.eps) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = Attention(d, cfg.num_heads, cfg.qk_norm, cfg.eps,
                                    image=cfg.image_dim is not None)
        self.norm2 = FP32LayerNorm(d, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(ops.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 ops.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.zeros(1, 6, d))

    def forward(self, x: torch.Tensor, e: torch.Tensor, ctx: torch.Tensor, freqs: torch.Tensor,
                img_len: int, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, L, C]; e [B, 6, C] float32 time modulation; ctx [B, Lc, C]."""
        shift, scale, gate, c_shift, c_scale, c_gate = (self.modulation.float() + e).chunk(6, 1)
        dt = x.dtype
        # The modulation arithmetic runs in float32 as in the reference (it is cheap, bf16 drifts).
        y = self.self_attn((self.norm1(x).float() * (1 + scale) + shift).to(dt), freqs=freqs)
        x = (x.float() + y.float() * gate).to(dt)
        x = x + self.cross_attn(self.norm3(x), ctx, img_len=img_len, bias=bias)
        y = self.ffn((self.norm2(x).float() * (1 + c_scale) + c_shift).to(dt))
        return (x.float() + y.float() * c_gate).to(dt)


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = FP32LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.head = ops.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch))
        self.modulation = nn.Parameter(torch.zeros(1, 2, cfg.dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x [B, L, C]; e [B, C] float32 -> [B, L, out_dim * prod(patch)]."""
        shift, scale = (self.modulation.float() + e.unsqueeze(1)).chunk(2, 1)
        return self.head((self.norm(x).float() * (1 + scale) + shift).to(x.dtype))


class ImageEmbedding(nn.Module):
    """CLIP-H tokens -> model width (`img_emb.proj.{0,1,3,4}`, `img_emb.emb_pos` for FLF2V)."""

    def __init__(self, in_dim: int, dim: int, pos_len: int | None):
        super().__init__()
        self.proj = nn.Sequential(FP32LayerNorm(in_dim), ops.Linear(in_dim, in_dim), nn.GELU(),
                                  ops.Linear(in_dim, dim), FP32LayerNorm(dim))
        if pos_len:
            self.emb_pos = nn.Parameter(torch.zeros(1, pos_len, in_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, 1280] (FLF2V: start and end image tokens, N = 2*257) -> [B, N, dim]."""
        if hasattr(self, "emb_pos"):
            x = x + self.emb_pos.to(x.dtype)
        return self.proj(x)


class WanModel(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = ops.Conv3d(cfg.in_dim, d, cfg.patch, stride=cfg.patch)
        self.text_embedding = nn.Sequential(ops.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"),
                                            ops.Linear(d, d))
        self.time_embedding = nn.Sequential(ops.Linear(cfg.freq_dim, d), nn.SiLU(), ops.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), ops.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        if cfg.image_dim is not None:
            self.img_emb = ImageEmbedding(cfg.image_dim, d, cfg.image_pos_len)

    def set_attention(self, backend: str) -> None:
        for m in self.modules():
            if isinstance(m, Attention):
                m.backend = backend

    def text_context(self, context: torch.Tensor, lengths: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embed the text, collapsing the zero padding to ONE key with a log-count bias.

        The reference pads every prompt with zeros to text_len (512) and attends to all of them.
        Padding tokens embed to identical keys / values, so attending to n copies equals attending
        to one copy whose logit is raised by log(n): same result, without projecting and
        attending ~500 redundant tokens in every block.
        Returns context [B, Lmax + 1, dim] and bias [B, Lmax + 1] (None when nothing is padded).
        """
        b, n = context.shape[:2]
        lens = torch.full((b,), n, dtype=torch.long) if lengths is None else lengths.cpu().long().clamp(max=n)
        lmax = int(lens.max())
        if lmax >= self.cfg.text_len:
            return self.text_embedding(context[:, : self.cfg.text_len]), None
        ctx = torch.cat([context[:, :lmax], context.new_zeros(b, 1, context.shape[2])], dim=1)
        pos = torch.arange(lmax + 1)
        bias = torch.where(pos[None] < lens[:, None], 0.0, float("-inf"))
        bias[:, lmax] = torch.log((self.cfg.text_len - lens).double()).float()
        return self.text_embedding(ctx), bias.to(context.device)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                clip: torch.Tensor | None = None, y: torch.Tensor | None = None,
                context_lens: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: [B, in_dim - y_ch, F, H, W] noisy latent (H, W divisible by the patch)
            t: [B] timesteps (sigma * 1000)
            context: [B, Lt <= text_len, text_dim] text embeddings, zero past each prompt
            context_lens: [B] real prompt lengths (None: all Lt tokens are real; anything up to
                text_len is zero padding either way, as in the reference)
            clip: [B, 257 (or 514), image_dim] CLIP-H tokens for I2V / FLF2V
            y: [B, y_ch, F, H, W] I2V conditioning (mask 4 + image latent 16), concatenated
        Returns:
            [B, out_dim, F, H, W] flow velocity
        """
        if y is not None:
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        b, _, f, h, w = x.shape
        pt, ph, pw = self.cfg.patch
        grid = (f // pt, h // ph, w // pw)
        x = self.patch_embedding(x).flatten(2).transpose(1, 2).contiguous()   # [B, L, C]
        # Wan's rotation: the shared N-axis RoPE with its head split (44, 42, 42 of 128),
        # theta 10000, in complex128 as the reference computes it.
        head = self.cfg.dim // self.cfg.num_heads
        freqs = nd_rope_complex(grid, axes_split(head), 10000.0, torch.float64, x.device)[:, None]

        wdt = x.dtype
        e = self.time_embedding(timestep_embedding(t, self.cfg.freq_dim).to(wdt)).float()
        e0 = self.time_projection(e.to(wdt)).float().unflatten(1, (6, -1))  # [B, 6, C]

        ctx, bias = self.text_context(context.to(wdt), context_lens)
        img_len = 0
        if self.cfg.image_dim is not None:
            if clip is None:
                raise VideoForgeError("this Wan image-to-video model needs an image: connect "
                                      "Image To Video Latent (with a CLIP vision model).")
            img = self.img_emb(clip.to(wdt))
            img_len = img.shape[1]
            ctx = torch.cat([img, ctx], dim=1)

        for block in self.blocks:
            x = block(x, e0, ctx, freqs, img_len, bias)
        x = self.head(x, e)
        return self.unpatchify(x, grid)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, L, out*pt*ph*pw] -> [B, out, F, H, W]."""
        f, h, w = grid
        pt, ph, pw = self.cfg.patch
        x = x.reshape(x.shape[0], f, h, w, pt, ph, pw, self.cfg.out_dim)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(x.shape[0], self.cfg.out_dim, f * pt, h * ph, w * pw)
