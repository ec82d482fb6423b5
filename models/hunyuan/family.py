"""HunyuanVideo behind the family interface (`models.common.family`): the sampler and the nodes
see a `HunyuanVideoModel`; the text encoder (`text_encoder.HunyuanTextEncoder`, llava-llama-3 +
CLIP-L) and the VAE (`vae`) already speak the interface."""
from __future__ import annotations

from typing import Any

import torch

from ..common.family import LatentFormat, NodeModel
from .model import HunyuanDiT, build_dit

FAMILY = "hunyuan"
# Causal 3D VAE: 16 channels, 8x space, 4x time (4k+1 frames); patch (1, 2, 2) -> sides of 16.
LATENT = LatentFormat(channels=16, time_ratio=4, space_ratio=8, first_frame_alone=True,
                      size_multiple=16)
# Embedded guidance of the guidance-distilled T2V release (official default; ComfyUI's examples).
DEFAULT_GUIDANCE = 6.0


class HunyuanVideoModel(NodeModel):
    """HunyuanVideo DiT + where and in what dtype it runs. `denoise` predicts flow velocity.

    Guidance-distilled files (T2V, I2V v2) take an embedded guidance scale, `cond["guidance"]`
    (default 6.0): true CFG is then usually off (cfg 1, one pass per step)."""
    family = FAMILY
    latent = LATENT
    prediction = "flow"
    default_shift = 7.0
    flow_sigma_end = 0.0   # linspace(1, 0, N + 1): the official scheduler and diffusers' pipeline
    TITLE, TEXT_ENCODER = "HunyuanVideo", "the HunyuanVideo text encoders (llava_llama3 + clip_l)"
    # Measured fp32 (bench/activation_memory.py), 13B width (1 double + 1 single block, a
    # 40-token prompt): 345 KB/token + 43 MB; width 512 (tests/unit/test_memory.py) 212..289 MB
    # at 3840 tokens, depending on what the process ran before. These give 479 KB + 160 MB
    # (+39%) and 318 MB (+10..50%).
    ACT_DIM, ACT_FFN, ACT_FIXED = 21.0, 4.5, 13000.0

    @property
    def dit(self) -> HunyuanDiT:
        return self.net

    @property
    def variant(self) -> str:
        return f"{self.dit.cfg.variant}-{self.dit.cfg.size_name}"

    @property
    def text_width(self) -> int:
        return self.dit.cfg.text_dim

    @property
    def widths(self) -> tuple[int, int]:
        return self.dit.cfg.hidden, self.dit.cfg.mlp_dim

    @torch.inference_mode()
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        """x [B, 16, T, H, W], sigma [B] -> velocity [B, 16, T, H, W] (float32)."""
        dt, dev, b = self.compute_dtype, self.device, x.shape[0]

        def batch(v: torch.Tensor | None) -> torch.Tensor | None:
            if v is None:
                return None
            v = v.to(dev)
            return v if v.shape[0] == b else v.expand(b, *v.shape[1:])

        guidance = cond.get("guidance", DEFAULT_GUIDANCE) if self.dit.cfg.guidance_embed else None
        v = self.dit(x.to(dev, dt), (sigma * 1000).to(dev, torch.float32),
                     batch(cond["context"]).to(dt), batch(cond.get("mask")),
                     batch(cond["pooled"]).to(dt), guidance=guidance)
        return v.float()


def build_model(sd: dict[str, torch.Tensor], name: str, storage: torch.dtype | None) -> HunyuanVideoModel:
    return HunyuanVideoModel(build_dit(sd, name, storage), name)
