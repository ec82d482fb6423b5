"""The one small interface between family code and the family-agnostic sampler / nodes.

Nodes and the sampler only ever talk to a `VideoModel`, a `VideoVAE` and a `TextEncoder`;
they never branch on family names. A family provides the latent layout, what the network
predicts, and `denoise()`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch

from .errors import VideoForgeError


@dataclass(frozen=True)
class LatentFormat:
    """How pixel video maps to latent video for one family's VAE."""
    channels: int = 16
    time_ratio: int = 4       # pixel frames per latent frame (after the first)
    space_ratio: int = 8      # pixels per latent pixel
    first_frame_alone: bool = True  # causal VAEs: frames = time_ratio * k + 1
    size_multiple: int = 16   # pixel width/height multiple (space_ratio * patch size)

    def check_frames(self, frames: int) -> None:
        """Raise a VideoForgeError saying what to use when the frame count does not fit."""
        r = self.time_ratio
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise VideoForgeError(f"frames={frames!r}: a video needs at least 1 frame.")
        if self.first_frame_alone and (frames - 1) % r:
            lo = (frames - 1) // r * r + 1
            raise VideoForgeError(f"frames={frames}: this model needs {r}k+1 frames "
                                  f"(1, {r + 1}, {2 * r + 1}, ...); use {lo} or {lo + r}.")
        if not self.first_frame_alone and frames % r:
            raise VideoForgeError(f"frames={frames}: must be a multiple of {r}.")

    def check(self, frames: int, height: int, width: int) -> None:
        """Raise a VideoForgeError saying what to change when the size is not valid."""
        self.check_frames(frames)
        m = self.size_multiple
        for name, v in (("width", width), ("height", height)):
            if v % m or v <= 0:
                lo = max(m, v // m * m)
                raise VideoForgeError(f"{name}={v}: must be a positive multiple of {m}; "
                                      f"use {lo} or {lo + m}.")

    def latent_frames(self, frames: int) -> int:
        return (frames - 1) // self.time_ratio + 1 if self.first_frame_alone \
            else frames // self.time_ratio

    def pixel_frames(self, latent_frames: int) -> int:
        return (latent_frames - 1) * self.time_ratio + 1 if self.first_frame_alone \
            else latent_frames * self.time_ratio

    def shape(self, batch: int, frames: int, height: int, width: int) -> tuple[int, ...]:
        self.check(frames, height, width)
        s = self.space_ratio
        return (batch, self.channels, self.latent_frames(frames), height // s, width // s)


class VideoModel(Protocol):
    """A loaded diffusion network ready for the sampler."""
    family: str              # e.g. "wan"
    variant: str             # e.g. "t2v-1.3B"
    latent: LatentFormat
    prediction: str          # "flow" (velocity), "eps" or "v"
    default_shift: float     # flow models
    flow_sigma_end: float    # flow models: last unshifted point of the schedule (1/1000 or 0)
    # eps / v models also carry `noise_schedule` (models.sampling.discrete.NoiseSchedule).

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        """flow: x [B, C, T, H, W] flow latent, sigma [B] in [0, 1] -> velocity like x.
        eps / v: x the VP latent (a diffusers UNet's input), sigma [B] the network timestep
        (float32, 0..999) -> the raw eps / v output like x; see models/sampling/discrete.py."""
        ...

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "VideoModel":
        """Run on `device`, computing in `dtype` (default: the weights' choice there)."""
        ...


class VideoVAE(Protocol):
    family: str
    latent: LatentFormat

    def encode(self, video: torch.Tensor) -> torch.Tensor: ...
    def decode(self, latent: torch.Tensor, callback: Callable[[int, int], None] | None = None
               ) -> torch.Tensor: ...
    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "VideoVAE": ...


def check_prompts(prompts: Any, name: str) -> list[str]:
    """A prompt or a list of prompts -> a non-empty list of strings; a VideoForgeError naming
    the encoder `name` otherwise (for every text encoder's `encode` / `tokenize`)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise VideoForgeError(f"{name}: no prompts to encode.")
    for p in prompts:
        if not isinstance(p, str):
            raise VideoForgeError(f"{name}: prompt must be a string, got {type(p).__name__}.")
    return prompts


class TextEncoder(Protocol):
    family: str

    def encode(self, prompts: list[str], device: torch.device | str | None = None
               ) -> dict[str, torch.Tensor]: ...
    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
           ) -> "TextEncoder": ...


class NodeModel:
    """What the nodes hold for any family's diffusion network: the module (`net`), its name,
    and where / in what dtype it runs. A family sets `family`, `latent`, `prediction`,
    `default_shift`, `TITLE` and `TEXT_ENCODER` (for messages), implements `text_width` and
    `denoise`, and may extend `to` (e.g. AnimateDiff's motion modules)."""
    family: str
    latent: LatentFormat
    prediction: str = "flow"
    default_shift: float = 1.0
    flow_sigma_end: float = 1.0 / 1000   # Wan / EasyAnimate (diffusers' default)
    TITLE: str            # "Wan2.1": what the model is called in messages
    TEXT_ENCODER: str     # "the Wan UMT5 text encoder": what to load instead of a wrong one

    ROLE = "model"   # which of ComfyUI's device / offload pairs it runs on (nodes/bridge.py)

    def __init__(self, net: torch.nn.Module, name: str = "") -> None:
        self.net = net.eval().requires_grad_(False)
        self.name = name
        self.compute_dtype = torch.float32
        self.device = torch.device("cpu")

    @property
    def networks(self) -> list[torch.nn.Module]:
        """The networks a memory manager loads and unloads for this model."""
        return [self.net]

    @property
    def text_width(self) -> int:
        raise NotImplementedError

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "NodeModel":
        """Run on `device`, computing in `dtype` (default: what the stored weights compute in
        there, `ops.compute_dtype_for`); the weights keep their storage dtype."""
        from .ops import compute_dtype_for, storage_dtype_of
        self.device = torch.device(device)
        storage = storage_dtype_of(dict(self.net.named_parameters()))
        self.compute_dtype = dtype or compute_dtype_for(storage, self.device)
        self.net.to(self.device)
        return self

    # Memory pre-check (models/common/memory.py): one forward's working memory is
    # tokens x (ACT_DIM x width + ACT_FFN x ffn width) + ACT_FIXED x width elements of the
    # compute dtype (ACT_FIXED: the text tokens and everything else that does not grow with the
    # video); the coefficients are fitted per family to bench/activation_memory.py's figures.
    PATCH: tuple[int, int, int] = (1, 2, 2)   # latent (frames, rows, cols) per token
    ACT_DIM: float
    ACT_FFN: float
    ACT_FIXED: float

    @property
    def widths(self) -> tuple[int, int]:
        """(model width, feed-forward width) that the per-token working memory scales with."""
        raise NotImplementedError

    def tokens(self, shape: tuple[int, ...]) -> int:
        """Tokens one forward on a latent of `shape` [B, C, T, H, W] processes (all batch items)."""
        b, _, t, h, w = shape
        pt, ph, pw = self.PATCH
        return b * -(-t // pt) * -(-h // ph) * -(-w // pw)

    def activation_bytes(self, shape: tuple[int, ...], device: torch.device | str | None = None) -> float:
        """Peak working memory of one `denoise` on a latent of `shape`, on `device` (default:
        where the model is), in the dtype it would compute in there."""
        from .ops import compute_dtype_for, storage_dtype_of
        dev = torch.device(device) if device is not None else self.device
        dt = compute_dtype_for(storage_dtype_of(dict(self.net.named_parameters())), dev)
        dim, ffn = self.widths
        elems = self.tokens(shape) * (self.ACT_DIM * dim + self.ACT_FFN * ffn) + self.ACT_FIXED * dim
        return elems * torch.finfo(dt).bits / 8

    def check_cond(self, cond: dict[str, Any]) -> None:
        """Raise when the conditioning comes from another family's or a mismatched encoder."""
        if cond.get("family", self.family) != self.family:
            raise VideoForgeError(f"conditioning is from a {cond['family']} text encoder but the "
                                  f"model is {self.TITLE}; use {self.TEXT_ENCODER}.")
        want, got = self.text_width, cond["context"].shape[-1]
        if got != want:
            raise VideoForgeError(f"text embeddings are {got} wide but this {self.TITLE} model "
                                  f"expects {want}; load {self.TEXT_ENCODER} that matches it.")


class NodeVAE:
    """What the nodes hold for any family's VAE: a module with `encode(video, plan, callback)` and
    `decode(latent, callback, plan)` (both through models/common/tiling), plus the device / dtype
    it runs in and its working memory per output pixel for `tiling.auto_plan`. A family sets
    `family`, `latent`, `streams_time`, `BYTES_PER_PIXEL` (measured, fp32, at the module width
    `REF_WIDTH`) and `width` (the loaded module's)."""
    family: str
    latent: LatentFormat
    streams_time: bool = True
    BYTES_PER_PIXEL: float
    REF_WIDTH: int

    ROLE = "vae"

    def __init__(self, vae: torch.nn.Module, name: str = "") -> None:
        self.vae = vae.eval().requires_grad_(False)
        self.name = name
        self.device = torch.device("cpu")
        self.dtype = next(vae.parameters()).dtype

    @property
    def networks(self) -> list[torch.nn.Module]:
        return [self.vae]

    @property
    def width(self) -> int:
        raise NotImplementedError

    FIXED_SHARE: float = 0.0   # share of BYTES_PER_PIXEL that does not scale with the width

    @property
    def bytes_per_pixel(self) -> float:
        size = torch.finfo(self.dtype).bits / 32
        scale = self.FIXED_SHARE + (1 - self.FIXED_SHARE) * self.width / self.REF_WIDTH
        return self.BYTES_PER_PIXEL * scale * size

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "NodeVAE":
        """Run on `device`; `dtype` also casts the weights (the VAE computes in its weights' dtype)."""
        self.device = torch.device(device)
        self.vae.to(self.device, dtype)
        if dtype is not None:
            self.dtype = dtype
        return self

    @torch.inference_mode()
    def encode(self, video: torch.Tensor, plan: Any = None,
               callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
        return self.vae.encode(video.to(self.device, self.dtype), plan, callback).float()

    @torch.inference_mode()
    def decode(self, latent: torch.Tensor, callback: Callable[[int, int], None] | None = None,
               plan: Any = None) -> torch.Tensor:
        return self.vae.decode(latent.to(self.device, self.dtype), callback, plan).float()


def check_same_family(**parts: Any) -> None:
    """Raise when e.g. a Wan model meets a HunyuanVideo VAE; names each part's family."""
    fams = {name: getattr(p, "family", p) for name, p in parts.items() if p is not None}
    if len(set(fams.values())) > 1:
        desc = ", ".join(f"{n} is {f}" for n, f in fams.items())
        raise VideoForgeError(f"mismatched model families: {desc}. Load matching files "
                              "(model, VAE, text encoder and latent of one family).")
