"""Stable Diffusion 1.5 (+ AnimateDiff motion modules) behind the family interface: the sampler
and the nodes see an `SDVideoModel`, an `SDVideoVAE` and an `SDTextEncoder`.

An SD model is a discrete-time eps model (`prediction = "eps"`, `noise_schedule`); the shared
sampler rewrites it as a flow model (models/sampling/discrete.py). Without a motion module
every frame is denoised on its own; `with_motion` returns a model whose UNet calls the motion
modules (the UNet weights stay shared, nothing is patched in place).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..common.errors import VideoForgeError
from ..common.family import NodeModel
from ..common.ops import load_weights
from ..sampling.discrete import NoiseSchedule
from .motion import MotionSet, check_fits
from .unet import UNet, UNetConfig, is_sd_unet
from .vae import LATENT_FORMAT

FAMILY = "sd15"
UNET_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "unet.")
# Official AnimateDiff inference configs (v1 / v2 / v3): betas "linear" 0.00085..0.012,
# steps_offset 1 -- the schedule the motion modules were trained with. SD1.5's own is
# "scaled_linear" with the same ends.
ANIMATEDIFF_SCHEDULE = NoiseSchedule(beta_schedule="linear")


def strip_unet(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The UNet part of a single-file checkpoint (or a bare UNet file), prefix removed."""
    for p in UNET_PREFIXES:
        part = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
        if part:
            return part
    return dict(sd)


def is_sd_checkpoint(sd: dict[str, torch.Tensor]) -> bool:
    """An SD single-file checkpoint: UNet plus VAE and/or text encoder in one file."""
    has_unet = "model.diffusion_model.input_blocks.0.0.weight" in sd
    return has_unet and any(k.startswith(("first_stage_model.", "cond_stage_model.")) for k in sd)


def is_sd_unet_file(sd: dict[str, torch.Tensor]) -> bool:
    return is_sd_unet(strip_unet(sd))


class SDVideoModel(NodeModel):
    """SD UNet (+ motion modules) and where / in what dtype it runs; `denoise` predicts eps."""
    family = FAMILY
    latent = LATENT_FORMAT
    prediction = "eps"
    default_shift = 1.0  # unused: eps models are placed by their noise schedule
    TITLE, TEXT_ENCODER = "Stable Diffusion 1.5", "the CLIP-L text encoder of the same checkpoint"

    def __init__(self, unet: UNet, name: str = "", motion: MotionSet | None = None,
                 noise_schedule: NoiseSchedule | None = None) -> None:
        super().__init__(unet, name)
        self.motion = motion
        self.noise_schedule = noise_schedule or NoiseSchedule()

    @property
    def unet(self) -> UNet:
        return self.net

    # One token per latent pixel of every frame; working memory scales with the base width.
    # Measured fp32 (bench/activation_memory.py), SD1.5 (320): 36 KB per latent pixel + 108 MB;
    # width 64 (tests/unit/test_memory.py): 138..206 MB at 18432 pixels, depending on what the
    # process ran before; these give 54 KB + 230 MB (+49%) and 244 MB (+18% over the worst).
    PATCH = (1, 1, 1)
    ACT_DIM, ACT_FFN, ACT_FIXED = 42.0, 0.0, 180000.0

    @property
    def text_width(self) -> int:
        return self.unet.cfg.context_dim

    @property
    def widths(self) -> tuple[int, int]:
        return self.unet.cfg.model_channels, 0

    @property
    def variant(self) -> str:
        base = "sd1.5" if self.unet.cfg.context_dim == 768 else "sd2"
        if self.motion is None:
            return base
        return f"{base}+animatediff-{self.motion.info.version}"

    @property
    def max_frames(self) -> int | None:
        """Frames one UNet call may see: the motion module's positional-encoding length."""
        return None if self.motion is None else self.motion.info.pe_len

    def with_motion(self, motion: MotionSet, beta_schedule: str = "linear") -> "SDVideoModel":
        """A model that runs `motion` in this UNet (weights shared, nothing modified)."""
        if self.motion is not None:
            raise VideoForgeError(f"{self.name or 'the model'} already has motion module "
                                  f"{self.motion.name}; apply one motion module per model.")
        check_fits(motion.info, self.unet.cfg, motion.name, self.name or "the base model")
        schedule = replace(self.noise_schedule, beta_schedule=beta_schedule)
        model = SDVideoModel(self.unet, self.name, motion, schedule)
        model.compute_dtype, model.device = self.compute_dtype, self.device
        return model

    @property
    def networks(self) -> list[torch.nn.Module]:
        return [self.unet] + ([self.motion.model] if self.motion is not None else [])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "SDVideoModel":
        super().to(device, dtype)
        if self.motion is not None:
            self.motion.to(self.device)
        return self

    takes_images = False

    def image_condition(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise VideoForgeError("Stable Diffusion 1.5 / AnimateDiff here is text-to-video; Image To "
                              "Video Latent needs an image-to-video model (e.g. Wan2.1 I2V).")

    @torch.inference_mode()
    def denoise(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        """x [B, 4, T, H, W] VP latent, t [B] timesteps (0..999) -> eps [B, 4, T, H, W] float32.

        Frames run as one UNet batch; the motion modules mix them."""
        dt, dev = self.compute_dtype, self.device
        b, c, frames, h, w = x.shape
        xs = x.to(dev, dt).transpose(1, 2).reshape(b * frames, c, h, w)
        ctx = cond["context"].to(dev, dt)
        if ctx.shape[0] != b:
            ctx = ctx.expand(b, *ctx.shape[1:])
        out = self.unet(xs, t.to(dev, torch.float32).repeat_interleave(frames),
                        ctx.repeat_interleave(frames, dim=0), frames=frames, motion=self.motion)
        return out.float().view(b, frames, -1, h, w).transpose(1, 2)


def build_unet(sd: dict[str, torch.Tensor], name: str, storage: torch.dtype | None) -> SDVideoModel:
    """Single-file checkpoint or bare UNet file -> `SDVideoModel` (built on meta, file tensors
    taken over, no second copy)."""
    unet_sd = strip_unet(sd)
    if not is_sd_unet(unet_sd):
        raise VideoForgeError(f"{name}: no Stable Diffusion UNet (model.diffusion_model.*) in it.")
    try:
        cfg = UNetConfig.infer(unet_sd)
    except VideoForgeError as e:
        raise VideoForgeError(f"{name}: {e}") from e
    with torch.device("meta"):
        unet = UNet(cfg)
    unet = unet.to_empty(device="cpu")
    load_weights(unet, unet_sd, name, storage=storage)
    return SDVideoModel(unet, name)
