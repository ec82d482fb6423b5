"""HunyuanVideo diffusion transformer (13B: T2V, I2V v1 "concat", I2V v2 "token replace").

Parameter names are the official Tencent ones (also the Comfy-Org files'); diffusers files are
renamed by `convert.normalize_dit_keys`. The config is read off the weights (`HunyuanConfig.infer`).
Linear layers come from `models.common.ops` (fp8 / fp16 / bf16 storage, compute in the activation
dtype); attention goes through `models.common.attention`; RoPE is `models.common.rope`'s N-axis
form (axes (16, 56, 56), theta 256, adjacent pairs, float32).

Layout of one forward (../shared/HUNYUAN.md §3): video tokens (patch 1x2x2) and text tokens
(LLM states refined by 2 self-attention blocks, `txt_in`) pass 20 double-stream blocks (own
weights per stream, joint attention) and 40 single-stream blocks (one `linear1` -> q, k, v, mlp);
every block is modulated by `vec = time_in(t) + vector_in(CLIP-L pooled) [+ guidance_in(g)]`.
Token order is video then text; RoPE rotates the video tokens only. Padded text tokens are
masked as keys (the reference's variable-length attention gives the same valid outputs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common import ops
from ..common.attention import attention
from ..common.errors import VideoForgeError
from ..common.norms import FP32LayerNorm, RMSNorm
from ..common.rope import apply_rope_interleaved, nd_rope_freqs
from .convert import dit_layout, normalize_dit_keys

HEAD_DIM = 128                 # every HunyuanVideo release: heads = hidden / 128 (ComfyUI too)
ROPE_AXES = (16, 56, 56)       # (t, h, w) rotary channels of a 128-wide head
ROPE_THETA = 256.0
GUIDANCE_SCALE = 1000.0        # guidance_in sees g * 1000 (ComfyUI / official pipeline)


@dataclass(frozen=True)
class HunyuanConfig:
    """Architecture of one HunyuanVideo DiT, read off its weights (`infer`). Defaults: 13B."""
    in_channels: int = 16          # 16 T2V / I2V v2, 33 I2V v1 (latent + image latent + mask)
    out_channels: int = 16
    hidden: int = 3072
    double_depth: int = 20
    single_depth: int = 40
    refiner_depth: int = 2
    mlp_dim: int = 12288           # 4 x hidden (double blocks' MLPs, single blocks' mlp part)
    refiner_mlp_dim: int = 12288
    patch: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 4096           # LLaVA-Llama-3 hidden states
    pooled_dim: int = 768          # CLIP-L pooled output
    freq_dim: int = 256            # timestep sinusoid width
    guidance_embed: bool = True    # guidance-distilled (T2V, I2V v2); I2V v1 has none
    eps: float = 1e-6              # every LayerNorm / RMSNorm (hard-coded in the reference)

    @property
    def heads(self) -> int:
        return self.hidden // HEAD_DIM

    @property
    def head_dim(self) -> int:
        return HEAD_DIM

    @property
    def concat_channels(self) -> int:
        """Channels the caller concatenates after the noisy latent (I2V v1: 17 = image latent 16
        + mask 1)."""
        return self.in_channels - self.out_channels

    @property
    def variant(self) -> str:
        """'t2v' (16 in: T2V, or I2V v2 "token replace": keys cannot tell them apart),
        'i2v_concat' (33 in), else 'in<N>' (e.g. SkyReels' 32)."""
        if self.concat_channels == 0:
            return "t2v"
        if self.concat_channels == self.out_channels + 1:
            return "i2v_concat"
        return f"in{self.in_channels}"

    @property
    def size_name(self) -> str:
        return {3072: "13B"}.get(self.hidden, f"hidden{self.hidden}")

    @classmethod
    def infer(cls, sd: dict[str, torch.Tensor], name: str = "") -> "HunyuanConfig":
        """Read the architecture off official-layout keys (after `normalize_dit_keys`)."""
        what = name or "checkpoint"
        try:
            pe = sd["img_in.proj.weight"]                      # [hidden, in, pt, ph, pw]
            if pe.dim() != 5:
                raise VideoForgeError(
                    f"{what}: patch embedding `img_in.proj.weight` {tuple(pe.shape)} is not a 3-D "
                    "(video) convolution; HunyuanImage-style 2-D models are not supported.")
            hidden, in_ch, patch = pe.shape[0], pe.shape[1], tuple(pe.shape[2:])
            if hidden % HEAD_DIM:
                raise VideoForgeError(f"{what}: model width {hidden} is not a multiple of the "
                                      f"{HEAD_DIM}-wide heads every HunyuanVideo release uses.")
            double = _depth(sd, "double_blocks.", what)
            single = _depth(sd, "single_blocks.", what)
            refiner = _depth(sd, "txt_in.individual_token_refiner.blocks.", what)
            mlp = sd["double_blocks.0.img_mlp.fc1.weight"].shape[0]
            if single and sd["single_blocks.0.linear1.weight"].shape[0] != 3 * hidden + mlp:
                raise VideoForgeError(
                    f"{what}: single_blocks.0.linear1 has {sd['single_blocks.0.linear1.weight'].shape[0]} "
                    f"outputs, expected q, k, v + mlp = 3 x {hidden} + {mlp}.")
            out_rows = sd["final_layer.linear.weight"].shape[0]
            if out_rows % math.prod(patch):
                raise VideoForgeError(f"{what}: final_layer.linear has {out_rows} outputs, not a "
                                      f"multiple of the patch volume {math.prod(patch)}.")
            newer = [k for k in ("byt5_in.fc1.weight", "cond_type_embedding.weight") if k in sd]
            if newer:
                raise VideoForgeError(f"{what}: has {newer[0].split('.')[0]}: a HunyuanVideo 1.5 / "
                                      "HunyuanImage model, not supported (HunyuanVideo 1.0 T2V / I2V load).")
            if "vector_in.in_layer.weight" not in sd:
                raise VideoForgeError(f"{what}: no CLIP vector input (vector_in); HunyuanVideo 1.0 "
                                      "models have one (HunyuanVideo 1.5 / HunyuanImage are not supported).")
            cfg = cls(
                in_channels=in_ch, out_channels=out_rows // math.prod(patch), hidden=hidden,
                double_depth=double, single_depth=single, refiner_depth=refiner, mlp_dim=mlp,
                refiner_mlp_dim=sd["txt_in.individual_token_refiner.blocks.0.mlp.fc1.weight"].shape[0],
                patch=patch,
                text_dim=sd["txt_in.input_embedder.weight"].shape[1],
                pooled_dim=sd["vector_in.in_layer.weight"].shape[1],
                freq_dim=sd["time_in.mlp.0.weight"].shape[1],
                guidance_embed="guidance_in.mlp.0.weight" in sd,
            )
        except KeyError as e:
            raise VideoForgeError(f"{what}: not a complete HunyuanVideo DiT (no {e.args[0]!r}).") from None
        return cfg


def _depth(sd: dict[str, torch.Tensor], prefix: str, what: str) -> int:
    """Number of blocks `prefix{i}.` in sd; every index below the largest must be there."""
    idx = sorted({int(k[len(prefix):].split(".", 1)[0]) for k in sd if k.startswith(prefix)})
    if not idx:
        raise KeyError(f"{prefix}0")
    n = idx[-1] + 1
    if idx != list(range(n)):
        gone = sorted(set(range(n)) - set(idx))
        raise VideoForgeError(f"{what}: {prefix.rstrip('.')} {gone[:8]} are missing; the file is "
                              "truncated or not one model.")
    return n


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoid [B, dim] = [cos | sin] of t * max_period^(-j / (dim/2)), float32 as the reference."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    ang = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1)


class TimestepEmbedder(nn.Module):
    """`time_in`, `guidance_in`, `txt_in.t_embedder`: sinusoid -> Linear, SiLU, Linear (`mlp.{0,2}`)."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(ops.Linear(freq_dim, dim), nn.SiLU(), ops.Linear(dim, dim))

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """t [B] float -> [B, dim] in dtype."""
        return self.mlp(timestep_embedding(t, self.freq_dim).to(dtype))


class VectorEmbedder(nn.Module):
    """`vector_in`: CLIP-L pooled [B, 768] -> in_layer, SiLU, out_layer."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.in_layer, self.out_layer = ops.Linear(in_dim, dim), ops.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class TextProjection(nn.Module):
    """`txt_in.c_embedder`: pooled text [B, text_dim] -> linear_1, SiLU, linear_2."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1, self.linear_2 = ops.Linear(in_dim, dim), ops.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class MLP(nn.Module):
    """fc1, activation, fc2 (tanh-GELU in the blocks, SiLU in the token refiner)."""

    def __init__(self, dim: int, hidden: int, act: nn.Module):
        super().__init__()
        self.fc1, self.act, self.fc2 = ops.Linear(dim, hidden), act, ops.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Modulation(nn.Module):
    """`*_mod` / `modulation`: SiLU then Linear(C, k*C) -> k chunks [B, 1, C] in float32."""

    def __init__(self, dim: int, k: int):
        super().__init__()
        self.k = k
        self.linear = ops.Linear(dim, k * dim)

    def forward(self, vec: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        return self.linear(F.silu(vec).to(dtype)).float().unsqueeze(1).chunk(self.k, dim=-1)


# A modulation is a tuple of chunks [B, 1, C] (float32). `tr` = (n, chunks): I2V v2 "token
# replace", where the first n tokens (the first latent frame's) take their own chunks.
Mod = tuple[torch.Tensor, ...]
TokenReplace = tuple[int, Mod]


def modulate(x: torch.Tensor, mod: Mod, i: int, tr: TokenReplace | None = None) -> torch.Tensor:
    """x * (1 + scale) + shift with (shift, scale) = mod[i], mod[i + 1]; float32 math, x's dtype out."""
    y = x.float() * (1 + mod[i + 1]) + mod[i]
    if tr is not None:
        n, m = tr
        y[:, :n] = x[:, :n].float() * (1 + m[i + 1]) + m[i]
    return y.to(x.dtype)


def gated(x: torch.Tensor, y: torch.Tensor, mod: Mod, i: int, tr: TokenReplace | None = None) -> torch.Tensor:
    """Residual x + y * gate (gate = mod[i]); float32 math, x's dtype out."""
    out = x.float() + y.float() * mod[i]
    if tr is not None:
        n, m = tr
        out[:, :n] = x[:, :n].float() + y[:, :n].float() * m[i]
    return out.to(x.dtype)


def _heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, L, 3 * H * D] (layout K H D, as the reference's rearrange) -> q, k, v [B, L, H, D]."""
    return qkv.unflatten(2, (3, heads, -1)).unbind(2)


class RefinerBlock(nn.Module):
    """`txt_in.individual_token_refiner.blocks.N`: affine LN, self-attention (bias, no q/k norm),
    SiLU MLP; gate-only modulation (2 gates) from the refiner condition."""

    def __init__(self, dim: int, heads: int, mlp: int, eps: float):
        super().__init__()
        self.heads = heads
        self.norm1 = FP32LayerNorm(dim, eps)
        self.self_attn_qkv = ops.Linear(dim, 3 * dim)
        self.self_attn_proj = ops.Linear(dim, dim)
        self.norm2 = FP32LayerNorm(dim, eps)
        self.mlp = MLP(dim, mlp, nn.SiLU())
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), ops.Linear(dim, 2 * dim))
        self.backend = "auto"

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, L, C]; c [B, C]; mask [B, 1, L, L] bool (True = attend) or None."""
        mod = self.adaLN_modulation(c.to(x.dtype)).float().unsqueeze(1).chunk(2, dim=-1)
        q, k, v = _heads(self.self_attn_qkv(self.norm1(x)), self.heads)
        y = self.self_attn_proj(attention(q, k, v, mask=mask, backend=self.backend))
        x = gated(x, y, mod, 0)
        return gated(x, self.mlp(self.norm2(x)), mod, 1)


class TokenRefiner(nn.Module):
    """`txt_in`: LLM states [B, L, text_dim] -> refined text tokens [B, L, C]."""

    def __init__(self, cfg: HunyuanConfig):
        super().__init__()
        d = cfg.hidden
        self.input_embedder = ops.Linear(cfg.text_dim, d)
        self.t_embedder = TimestepEmbedder(d, cfg.freq_dim)
        self.c_embedder = TextProjection(cfg.text_dim, d)
        self.individual_token_refiner = nn.ModuleDict({"blocks": nn.ModuleList(
            RefinerBlock(d, cfg.heads, cfg.refiner_mlp_dim, cfg.eps) for _ in range(cfg.refiner_depth))})

    def forward(self, txt: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """txt [B, L, text_dim]; t [B]; mask [B, L] bool or None (all valid)."""
        dt = txt.dtype
        if mask is None:
            pooled = txt.float().mean(dim=1)
        else:
            m = mask.float().unsqueeze(-1)
            pooled = (txt.float() * m).sum(dim=1) / m.sum(dim=1)
        c = self.t_embedder(t, dt).float() + self.c_embedder(pooled.to(dt)).float()
        x = self.input_embedder(txt)
        attn_mask = None
        if mask is not None:
            # query i attends key j when both are valid; key 0 always (no empty rows), as the reference
            attn_mask = mask[:, None, :, None] & mask[:, None, None, :]
            attn_mask[:, :, :, 0] = True
        for block in self.individual_token_refiner["blocks"]:
            x = block(x, c, attn_mask)
        return x


class DoubleBlock(nn.Module):
    """`double_blocks.N`: separate weights for the video (`img_*`) and text (`txt_*`) streams,
    one joint attention over [video; text]; modulation order shift1, scale1, gate1, shift2,
    scale2, gate2."""

    def __init__(self, cfg: HunyuanConfig):
        super().__init__()
        d, hd = cfg.hidden, cfg.head_dim
        self.heads = cfg.heads
        for s in ("img", "txt"):
            setattr(self, f"{s}_mod", Modulation(d, 6))
            setattr(self, f"{s}_norm1", FP32LayerNorm(d, cfg.eps, elementwise_affine=False))
            setattr(self, f"{s}_attn_qkv", ops.Linear(d, 3 * d))
            setattr(self, f"{s}_attn_q_norm", RMSNorm(hd, cfg.eps))
            setattr(self, f"{s}_attn_k_norm", RMSNorm(hd, cfg.eps))
            setattr(self, f"{s}_attn_proj", ops.Linear(d, d))
            setattr(self, f"{s}_norm2", FP32LayerNorm(d, cfg.eps, elementwise_affine=False))
            setattr(self, f"{s}_mlp", MLP(d, cfg.mlp_dim, nn.GELU(approximate="tanh")))
        self.backend = "auto"

    def _qkv(self, s: str, x: torch.Tensor, mod: Mod, tr: TokenReplace | None):
        q, k, v = _heads(getattr(self, f"{s}_attn_qkv")(
            modulate(getattr(self, f"{s}_norm1")(x), mod, 0, tr)), self.heads)
        return getattr(self, f"{s}_attn_q_norm")(q), getattr(self, f"{s}_attn_k_norm")(k), v

    def forward(self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                tr_vec: torch.Tensor | None = None, tr_tokens: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """img [B, Lv, C]; txt [B, Lt, C]; vec [B, C] float32; rope (cos, sin) [Lv, D/2];
        mask [B, Lv + Lt] bool keys or None; tr_vec [B, C]: modulation of the first tr_tokens
        video tokens (token replace) or None."""
        dt = img.dtype
        im = self.img_mod(vec, dt)
        tr = (tr_tokens, self.img_mod(tr_vec, dt)) if tr_vec is not None else None
        tm = self.txt_mod(vec, dt)
        iq, ik, iv = self._qkv("img", img, im, tr)
        iq, ik = apply_rope_interleaved(iq, *rope), apply_rope_interleaved(ik, *rope)
        tq, tk, tv = self._qkv("txt", txt, tm, None)
        out = attention(torch.cat([iq, tq], 1), torch.cat([ik, tk], 1), torch.cat([iv, tv], 1),
                        mask=mask, backend=self.backend)
        lv = img.shape[1]
        img = gated(img, self.img_attn_proj(out[:, :lv]), im, 2, tr)
        img = gated(img, self.img_mlp(modulate(self.img_norm2(img), im, 3, tr)), im, 5, tr)
        txt = gated(txt, self.txt_attn_proj(out[:, lv:]), tm, 2)
        txt = gated(txt, self.txt_mlp(modulate(self.txt_norm2(txt), tm, 3)), tm, 5)
        return img, txt


class SingleBlock(nn.Module):
    """`single_blocks.N`: linear1(modulated LN(x)) -> q, k, v, mlp; linear2(cat(attention,
    gelu_tanh(mlp))) gated; modulation shift, scale, gate."""

    def __init__(self, cfg: HunyuanConfig):
        super().__init__()
        d = cfg.hidden
        self.heads, self.mlp_dim = cfg.heads, cfg.mlp_dim
        self.linear1 = ops.Linear(d, 3 * d + cfg.mlp_dim)
        self.linear2 = ops.Linear(d + cfg.mlp_dim, d)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.eps)
        self.pre_norm = FP32LayerNorm(d, cfg.eps, elementwise_affine=False)
        self.modulation = Modulation(d, 3)
        self.backend = "auto"

    def forward(self, x: torch.Tensor, vec: torch.Tensor, lv: int,
                rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                tr_vec: torch.Tensor | None = None, tr_tokens: int = 0) -> torch.Tensor:
        """x [B, Lv + Lt, C] (video tokens first); vec [B, C]; rope for the first lv tokens."""
        dt = x.dtype
        mod = self.modulation(vec, dt)
        tr = (tr_tokens, self.modulation(tr_vec, dt)) if tr_vec is not None else None
        qkv, mlp = self.linear1(modulate(self.pre_norm(x), mod, 0, tr)).split(
            [3 * x.shape[-1], self.mlp_dim], dim=-1)
        q, k, v = _heads(qkv, self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        q = torch.cat([apply_rope_interleaved(q[:, :lv], *rope), q[:, lv:]], dim=1)
        k = torch.cat([apply_rope_interleaved(k[:, :lv], *rope), k[:, lv:]], dim=1)
        a = attention(q, k, v, mask=mask, backend=self.backend)
        y = self.linear2(torch.cat([a, F.gelu(mlp, approximate="tanh")], dim=-1))
        return gated(x, y, mod, 2, tr)


class FinalLayer(nn.Module):
    """`final_layer`: LN (no affine), modulation [shift; scale] from vec, linear to patches."""

    def __init__(self, cfg: HunyuanConfig):
        super().__init__()
        d = cfg.hidden
        self.norm_final = FP32LayerNorm(d, cfg.eps, elementwise_affine=False)
        self.linear = ops.Linear(d, math.prod(cfg.patch) * cfg.out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), ops.Linear(d, 2 * d))

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """x [B, Lv, C]; vec [B, C] -> [B, Lv, out * pt * ph * pw]."""
        mod = self.adaLN_modulation(vec.to(x.dtype)).float().unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), mod, 0))


class HunyuanDiT(nn.Module):
    def __init__(self, cfg: HunyuanConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden
        self.img_in = nn.Module()
        self.img_in.proj = ops.Conv3d(cfg.in_channels, d, cfg.patch, stride=cfg.patch)
        self.txt_in = TokenRefiner(cfg)
        self.time_in = TimestepEmbedder(d, cfg.freq_dim)
        self.vector_in = VectorEmbedder(cfg.pooled_dim, d)
        if cfg.guidance_embed:
            self.guidance_in = TimestepEmbedder(d, cfg.freq_dim)
        self.double_blocks = nn.ModuleList(DoubleBlock(cfg) for _ in range(cfg.double_depth))
        self.single_blocks = nn.ModuleList(SingleBlock(cfg) for _ in range(cfg.single_depth))
        self.final_layer = FinalLayer(cfg)

    def set_attention(self, backend: str) -> None:
        for m in self.modules():
            if hasattr(m, "backend"):
                m.backend = backend

    @staticmethod
    def text_tokens(txt: torch.Tensor, txt_mask: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Drop the columns that are padding in every prompt of the batch; mask None when what
        is left is all valid (then no mask is built and fused attention kernels can run).

        Exact: a padded token is never a key for a valid query (main blocks: key mask; refiner:
        `mask_i & mask_j`, plus key 0, which is kept), so only the padded tokens' own outputs,
        which nothing reads, would differ.
        """
        if txt_mask is None:
            return txt, None
        mask = txt_mask.to(device=txt.device, dtype=torch.bool)
        if mask.shape != txt.shape[:2]:
            raise VideoForgeError(f"text mask {tuple(mask.shape)} does not match the text "
                                  f"tokens {tuple(txt.shape[:2])}.")
        if not mask.any(dim=1).all():
            raise VideoForgeError("a prompt has no valid text token (its text mask is all 0).")
        keep = int(mask.any(dim=0).nonzero().max()) + 1
        txt, mask = txt[:, :keep], mask[:, :keep]
        return txt, (None if bool(mask.all()) else mask)

    def forward(self, x: torch.Tensor, t: torch.Tensor, txt: torch.Tensor,
                txt_mask: torch.Tensor | None, clip_pooled: torch.Tensor,
                guidance: torch.Tensor | float | None = None,
                token_replace: bool = False) -> torch.Tensor:
        """
        Args:
            x: [B, in_channels, T, H, W] noisy latent (I2V v1: latent 16 + image latent 16 +
                mask 1 already concatenated); T, H, W divisible by the patch (1, 2, 2)
            t: [B] timesteps in 0..1000 (sigma * 1000)
            txt: [B, L, text_dim] LLM text states
            txt_mask: [B, L] 1 = valid token, 0 = padding (None: all valid)
            clip_pooled: [B, pooled_dim] CLIP-L pooled output
            guidance: [B] (or a number) embedded guidance scale g, e.g. 6.0; `guidance_in` sees
                g * 1000. Needed by guidance-distilled models, ignored by the others.
            token_replace: I2V v2: the first latent frame is the clean image; its tokens are
                modulated with time_in(0) + vector_in(clip) (no guidance term).
        Returns:
            [B, out_channels, T, H, W] flow velocity, in x's dtype
        """
        cfg = self.cfg
        b, c, f, h, w = x.shape
        pt, ph, pw = cfg.patch
        if c != cfg.in_channels:
            raise VideoForgeError(
                f"this HunyuanVideo model takes {cfg.in_channels} input channels, got {c}"
                + (f" (I2V: concatenate the {cfg.concat_channels} image-condition channels)."
                   if cfg.concat_channels else "."))
        if f % pt or h % ph or w % pw:
            raise VideoForgeError(f"latent {f}x{h}x{w} (T x H x W) is not divisible by the patch "
                                  f"{pt}x{ph}x{pw}.")
        if clip_pooled is None:
            raise VideoForgeError("HunyuanVideo needs the CLIP-L pooled text embedding (clip_pooled).")
        dt, dev = x.dtype, x.device
        grid = (f // pt, h // ph, w // pw)
        t = torch.as_tensor(t, dtype=torch.float32, device=dev).reshape(-1).expand(b)

        clip = self.vector_in(clip_pooled.to(dev, dt)).float()
        vec = self.time_in(t, dt).float() + clip
        tr_vec = None
        if token_replace:
            tr_vec = self.time_in(torch.zeros_like(t), dt).float() + clip
        if cfg.guidance_embed:
            if guidance is None:
                raise VideoForgeError("this HunyuanVideo model is guidance-distilled: give an "
                                      "embedded guidance scale (e.g. 6.0).")
            g = torch.as_tensor(guidance, dtype=torch.float32, device=dev).reshape(-1).expand(b)
            vec = vec + self.guidance_in(g * GUIDANCE_SCALE, dt).float()

        txt, mask = self.text_tokens(txt.to(dev, dt), txt_mask)
        txt = self.txt_in(txt, t, mask)
        img = self.img_in.proj(x).flatten(2).transpose(1, 2)            # [B, Lv, C]
        lv = img.shape[1]
        rope = nd_rope_freqs(grid, ROPE_AXES, ROPE_THETA, torch.float32, dev)
        keys = None if mask is None else torch.cat([mask.new_ones(b, lv), mask], dim=1)
        n0 = grid[1] * grid[2]                                           # first latent frame's tokens

        for block in self.double_blocks:
            img, txt = block(img, txt, vec, rope, keys, tr_vec, n0)
        x = torch.cat([img, txt], dim=1)
        for block in self.single_blocks:
            x = block(x, vec, lv, rope, keys, tr_vec, n0)
        out = self.final_layer(x[:, :lv], vec)
        return self.unpatchify(out, grid)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, L, out * pt * ph * pw] (channels outermost, as the reference) -> [B, out, T, H, W]."""
        f, h, w = grid
        pt, ph, pw = self.cfg.patch
        c = self.cfg.out_channels
        x = x.reshape(x.shape[0], f, h, w, c, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(x.shape[0], c, f * pt, h * ph, w * pw)


def build_dit(sd: dict[str, torch.Tensor], name: str,
              storage: torch.dtype | None = None) -> HunyuanDiT:
    """State dict (official / ComfyUI / diffusers layout) -> HunyuanDiT on CPU.

    Built on the meta device, then the file's tensors are taken over (`ops.load_weights`, no
    second copy): 2-D+ weights kept in `storage` (None: as stored; fp8_e4m3fn / bf16 / fp16 /
    fp32, fp8 `scale_weight`s honoured), norms and biases in float32. Raises VideoForgeError naming
    `name` when the file is not a HunyuanVideo DiT or does not match the inferred architecture.
    """
    sd = normalize_dit_keys(sd, name)
    if dit_layout(sd) is None:
        raise VideoForgeError(f"{name}: not a HunyuanVideo diffusion model ({len(sd)} tensors, "
                              f"e.g. {list(sd)[:3]}).")
    cfg = HunyuanConfig.infer(sd, name)        # names what is missing or inconsistent
    with torch.device("meta"):
        dit = HunyuanDiT(cfg)
    dit = dit.to_empty(device="cpu")
    ops.load_weights(dit, sd, name, storage=storage)
    return dit.eval().requires_grad_(False)
