"""Wan2.1 behind the family interface (`models.common.family`): the sampler and the nodes see
a `WanVideoModel`, a `WanVideoVAE` and a `WanTextEncoder`, never Wan internals."""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..common.errors import VideoForgeError
from ..common.family import NodeModel, NodeVAE
from ..common.tiling import TilePlan
from ..common.ops import load_weights
from .convert import is_wan_dit, normalize_dit_keys
from .model import WanConfig, WanModel
from .vae import LATENT_FORMAT

FAMILY = "wan"
LATENT = LATENT_FORMAT


class WanVideoModel(NodeModel):
    """Wan DiT + where and in what dtype it runs. `denoise` predicts flow velocity."""
    family = FAMILY
    latent = LATENT
    prediction = "flow"
    default_shift = 5.0
    TITLE, TEXT_ENCODER = "Wan2.1", "the Wan UMT5 text encoder"

    @property
    def dit(self) -> WanModel:
        return self.net

    @property
    def variant(self) -> str:
        return f"{self.dit.cfg.model_type}-{self.dit.cfg.size_name}"

    # Measured fp32 (bench/activation_memory.py): 1.3B 137 KB/token + 54 MB, 14B 205 KB/token
    # + 116 MB, width 512 / ffn 2048 (tests/unit/test_memory.py) 115..178 MB at 3840 tokens
    # (glibc's heap: what the process freed before is or is not reused). These coefficients
    # cover all three: 168 KB + 153 MB, 337 KB + 512 MB (+64%), 217 MB (+22% over the worst).
    ACT_DIM, ACT_FFN, ACT_FIXED = 7.0, 3.5, 25000.0

    @property
    def text_width(self) -> int:
        return self.dit.cfg.text_dim

    @property
    def widths(self) -> tuple[int, int]:
        return self.dit.cfg.dim, self.dit.cfg.ffn_dim

    @property
    def takes_images(self) -> bool:
        return self.dit.cfg.image_dim is not None

    def image_condition(self, vae: Any, clip_vision: Any, start: torch.Tensor,
                        end: torch.Tensor | None, frames: int, plan: TilePlan | None = None,
                        callback: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """start / end: IMAGE [1, H, W, 3] in 0..1 already at the video size ->
        {"y": [1, 20, T, h, w], "clip": [1, 257 or 514, 1280]} for `denoise`."""
        from ..common.video import to_video
        from .i2v import image_condition
        cfg = self.dit.cfg
        if start is None:
            raise VideoForgeError("an end image needs a start image (first-last-frame): connect start_image.")
        if cfg.image_dim is None:
            raise VideoForgeError(f"{self.name or 'this model'} is a Wan2.1 text-to-video model; "
                                  "Image To Video Latent needs an image-to-video model "
                                  "(e.g. wan2.1_i2v_480p_14B_fp16.safetensors, or FLF2V for start + end).")
        if getattr(vae, "family", None) != FAMILY:
            raise VideoForgeError(f"the VAE is {getattr(vae, 'family', type(vae).__name__)}; "
                                  "Wan2.1 image-to-video needs the Wan2.1 VAE (wan_2.1_vae.safetensors).")
        if clip_vision is None:
            raise VideoForgeError("Wan2.1 image-to-video needs CLIP vision features: connect Load "
                                  "CLIP Vision with clip_vision_h.safetensors.")
        if clip_vision.hidden_size != cfg.image_dim:
            raise VideoForgeError(f"the CLIP vision model is {clip_vision.hidden_size} wide but this "
                                  f"Wan model expects {cfg.image_dim} (CLIP-H: clip_vision_h.safetensors).")
        images = start if end is None else torch.cat([start, end], dim=0)
        tokens = clip_vision.encode(images).float().cpu()            # [1 or 2, N, 1280]
        clip = tokens.reshape(1, -1, tokens.shape[-1])                # start then end tokens
        if cfg.image_pos_len is not None and clip.shape[1] != cfg.image_pos_len:
            raise VideoForgeError(f"this first-last-frame model expects {cfg.image_pos_len} image "
                                  f"tokens (start and end image), got {clip.shape[1]}: connect "
                                  "an end image." if end is None else
                                  f"image tokens {clip.shape[1]} do not fit the model's {cfg.image_pos_len}.")
        y = image_condition(vae, to_video(start)[0, :, 0],
                            None if end is None else to_video(end)[0, :, 0], frames, plan, callback)
        return {"y": y, "clip": clip}

    @torch.inference_mode()
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        """x [B, 16, T, H, W], sigma [B] -> velocity [B, 16, T, H, W] (float32)."""
        dt, dev = self.compute_dtype, self.device
        ctx = cond["context"].to(dev, dt)
        if ctx.shape[0] != x.shape[0]:
            ctx = ctx.expand(x.shape[0], *ctx.shape[1:])
        extra = {k: cond[k].to(dev, dt) for k in ("clip", "y") if cond.get(k) is not None}
        for k, v in extra.items():  # one image conditions every batch item and both CFG passes
            if v.shape[0] != x.shape[0]:
                extra[k] = v.expand(x.shape[0], *v.shape[1:])
        lens = cond.get("lengths")
        if lens is not None and lens.shape[0] != x.shape[0]:
            lens = lens.expand(x.shape[0])
        v = self.dit(x.to(dev, dt), (sigma * 1000).to(dev, torch.float32), ctx,
                     context_lens=lens, **extra)
        return v.float()


def build_dit(sd: dict[str, torch.Tensor], name: str, storage: torch.dtype | None) -> WanVideoModel:
    sd = normalize_dit_keys(sd)
    if not is_wan_dit(sd):
        raise VideoForgeError(f"{name}: not a Wan2.1 diffusion model.")
    cfg = WanConfig.infer(sd)
    with torch.device("meta"):
        dit = WanModel(cfg)
    # Built on "meta" so a 14B model never allocates a throw-away fp32 copy; weights are then
    # taken over from the (memory-mapped) file (the rotary angles are computed per forward).
    dit = dit.to_empty(device="cpu")
    load_weights(dit, sd, name, storage=storage)
    return WanVideoModel(dit, name)


class WanVideoVAE(NodeVAE):
    """Wan VAE with the family interface; video in/out as [B, 3, F, H, W] in [-1, 1]."""
    family = FAMILY
    latent = LATENT
    # The causal cache streams time exactly: temporal chunks add nothing (tiling.auto_plan).
    streams_time = True
    # Working memory per output pixel-frame of one decode step (one latent frame -> 4 frames),
    # fp32: peak RSS growth of a 9-frame decode (tests/unit/test_memory.py), three runs each,
    # default and AVX2 kernels: dim 96 6.2-7.1 KB (192x192 / 256x256), dim 32 2.3-4.9 KB. The
    # spread is glibc's heap (what it keeps after a free), not the kernels; over half does not
    # scale with the width. 8600 with a fixed share of 0.55 is >= 1.2x every worst case.
    BYTES_PER_PIXEL, REF_WIDTH, FIXED_SHARE = 8600.0, 96, 0.55

    @property
    def width(self) -> int:
        return self.vae.dim


class WanTextEncoder:
    """UMT5-XXL; `encode` returns conditioning for the Wan DiT: context [B, 512, 4096]."""
    family = FAMILY
    ROLE = "text_encoder"

    @property
    def networks(self) -> list[torch.nn.Module]:
        return [self.te]

    def __init__(self, te: Any, name: str = "") -> None:
        self.te = te
        self.name = name

    @torch.inference_mode()
    def encode(self, prompts: list[str], device: torch.device | str | None = None) -> dict[str, Any]:
        """-> {"context": [B, 512, 4096] float32 on CPU (zero past each prompt's length)}."""
        ctx, lens = self.te.encode(prompts, device=device)
        return {"family": FAMILY, "context": ctx.float().cpu(), "lengths": lens.cpu()}

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
           ) -> "WanTextEncoder":
        """Move to `device`; `dtype` casts the weights and becomes the compute dtype."""
        if device is not None:
            self.te.to(device)
        if dtype is not None:
            self.te.to(dtype)
            self.te.compute_dtype = dtype
        return self
