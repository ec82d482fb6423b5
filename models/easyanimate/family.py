"""EasyAnimate V5.1 behind the family interface: the sampler and the nodes see an
`EasyAnimateVideoModel`, an `EasyAnimateVideoVAE` (vae.py) and an `EasyAnimateTextEncoder`
(text_encoder.py). A flow model (FlowMatchEulerDiscreteScheduler in the reference), sampled by
the shared flow loop; its variant (T2V / InP / Control) is read off the checkpoint.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..common.errors import VideoForgeError
from ..common.family import NodeModel
from ..common.tiling import TilePlan
from . import conditioning
from .model import EasyAnimateDiT, build_easyanimate_dit
from .vae import LATENT_FORMAT

FAMILY = "easyanimate"
_NEEDS = {"inp": ("inpaint", "Image To Video Latent with a start image"),
          "control": ("control", "Control Video Latent with a control video")}


class EasyAnimateVideoModel(NodeModel):
    """EasyAnimate MMDiT + where and in what dtype it runs. `denoise` predicts flow velocity."""
    family = FAMILY
    latent = LATENT_FORMAT
    prediction = "flow"
    default_shift = 1.0  # FlowMatchEulerDiscreteScheduler's default; Sample Video's shift overrides
    TITLE, TEXT_ENCODER = "EasyAnimate V5.1", "its Qwen2-VL text encoder"

    @property
    def dit(self) -> EasyAnimateDiT:
        return self.net

    @property
    def variant(self) -> str:
        return f"{self.dit.cfg.variant}-{self.dit.cfg.size_name}"

    # Measured fp32 (bench/activation_memory.py), V5.1 12B: 276 KB/token + 58 MB (the 256
    # text tokens ride in the fixed part), width 512 / ffn 2048 (tests/unit/test_memory.py)
    # 142..211 MB at 3840 tokens (glibc's heap reuse); these give 344 KB + 246 MB (+25%) and
    # 261 MB (+24% over the worst).
    ACT_DIM, ACT_FFN, ACT_FIXED = 10.0, 4.5, 20000.0

    @property
    def text_width(self) -> int:
        return self.dit.cfg.text_dim

    @property
    def widths(self) -> tuple[int, int]:
        return self.dit.cfg.dim, self.dit.cfg.ffn_dim

    @property
    def takes_images(self) -> bool:
        return self.dit.cfg.variant == "inp"

    @property
    def takes_control(self) -> bool:
        return self.dit.cfg.variant == "control"

    def _check_vae(self, vae: Any) -> None:
        if getattr(vae, "family", None) != FAMILY:
            raise VideoForgeError(f"the VAE is {getattr(vae, 'family', type(vae).__name__)}; "
                                  "EasyAnimate needs its MagVIT VAE (the vae/ folder of the model).")

    def image_condition(self, vae: Any, clip_vision: Any, start: torch.Tensor,
                        end: torch.Tensor | None, frames: int, plan: TilePlan | None = None,
                        callback: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """start / end: IMAGE [1, H, W, 3] in 0..1 at the video size -> {"inpaint": [1, 17, T, h, w]}."""
        from ..common.video import to_video
        if start is None:
            raise VideoForgeError("an end image needs a start image: connect start_image.")
        if not self.takes_images:
            raise VideoForgeError(f"{self.name or 'this model'} is an EasyAnimate "
                                  f"{self.dit.cfg.variant} model; Image To Video Latent needs the "
                                  "InP model (EasyAnimateV5.1-12b-zh-InP).")
        self._check_vae(vae)
        y = conditioning.inpaint_condition(vae, to_video(start)[0, :, 0],
                                           None if end is None else to_video(end)[0, :, 0],
                                           frames, plan, callback)
        return {"inpaint": y}

    def control_condition(self, vae: Any, control: torch.Tensor, reference: torch.Tensor | None,
                          plan: TilePlan | None = None,
                          callback: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """control: IMAGE [F, H, W, 3], reference: IMAGE [1, H, W, 3] or None, both 0..1 at the
        video size -> {"control": [1, 32, T, h, w]}."""
        from ..common.video import to_video
        if not self.takes_control:
            raise VideoForgeError(f"{self.name or 'this model'} is an EasyAnimate "
                                  f"{self.dit.cfg.variant} model, not a control model; Control "
                                  "Video Latent needs EasyAnimateV5.1-12b-zh-Control.")
        self._check_vae(vae)
        ref = None if reference is None else to_video(reference)[0, :, 0]
        return {"control": conditioning.control_condition(vae, to_video(control), ref, plan, callback)}

    def _extras(self, cond: dict[str, Any], b: int) -> dict[str, torch.Tensor]:
        variant = self.dit.cfg.variant
        given = [k for k in ("inpaint", "control") if cond.get(k) is not None]
        need = _NEEDS.get(variant)
        if need is None and given:
            raise VideoForgeError(f"{self.name or 'this model'} is an EasyAnimate text-to-video "
                                  f"model but the latent carries {given[0]} conditioning; load the "
                                  f"{'InP' if given[0] == 'inpaint' else 'Control'} model or use "
                                  "Empty Video Latent.")
        if need is not None and need[0] not in given:
            raise VideoForgeError(f"{self.name or 'this model'} is an EasyAnimate {variant} model: "
                                  f"make its latent with {need[1]} (not Empty Video Latent).")
        out = {}
        for k in given:
            v = cond[k].to(self.device, self.compute_dtype)
            out[k] = v.expand(b, *v.shape[1:]) if v.shape[0] != b else v
        return out

    @torch.inference_mode()
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        """x [B, 16, T, H, W], sigma [B] -> velocity [B, 16, T, H, W] (float32)."""
        dt, dev = self.compute_dtype, self.device
        ctx = cond["context"].to(dev, dt)
        if ctx.shape[0] != x.shape[0]:
            ctx = ctx.expand(x.shape[0], *ctx.shape[1:])
        v = self.dit(x.to(dev, dt), (sigma * 1000).to(dev, torch.float32), ctx,
                     **self._extras(cond, x.shape[0]))
        return v.float()


def build_model(sd: dict[str, torch.Tensor], name: str, storage: torch.dtype | None) -> EasyAnimateVideoModel:
    return EasyAnimateVideoModel(build_easyanimate_dit(sd, name, storage), name)
