"""Sample Video."""
from __future__ import annotations

import torch

from ..models.common.family import check_same_family
from ..models.common.memory import sampling_estimate
from ..models.common.video import check_finite
from ..models.sampling import SOLVERS
from ..models.sampling.video import generate
from .bridge import CATEGORY, Progress, check_memory, device, offload_device, oom_guard, use


class SampleVideo:
    DISPLAY_NAME = "Sample Video"
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    DESCRIPTION = ("Denoises a latent video with classifier-free guidance. The noise comes from "
                   "the seed alone (drawn on the CPU), so a seed gives the same video on any device.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("VF_MODEL",),
            "conditioning": ("VF_CONDITIONING",),
            "latent": ("LATENT",),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                             "control_after_generate": True}),
            "steps": ("INT", {"default": 30, "min": 1, "max": 200}),
            "cfg": ("FLOAT", {"default": 6.0, "min": 1.0, "max": 30.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Guidance scale; 1.0 skips the negative prompt (2x faster)."}),
            "sampler": (list(SOLVERS), {"default": "unipc"}),
            "shift": ("FLOAT", {"default": 5.0, "min": 0.01, "max": 100.0, "step": 0.1,
                                "tooltip": "Flow shift of the sigma schedule (Wan2.1: 3 for 480p, 5 for 720p)."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01}),
        }, "optional": {
            "context_options": ("VF_CONTEXT_OPTIONS", {"tooltip":
                                "Context Options: denoise long clips in overlapping windows of "
                                "frames (AnimateDiff beyond its motion module's length)."}),
            "karras": ("BOOLEAN", {"default": False, "tooltip": "Karras sigmas (e.g. dpm++_2m "
                       "karras) for noise-schedule models such as SD1.5 / AnimateDiff; flow "
                       "models (Wan) use shift instead."}),
        }}

    def sample(self, model, conditioning, latent, seed: int, steps: int, cfg: float,
               sampler: str, shift: float, denoise: float, context_options=None,
               karras: bool = False):
        check_same_family(model=model, conditioning=conditioning["family"],
                          latent=latent.get("vf_family", model.family))
        model.check_cond(conditioning["positive"])
        samples, dev = latent["samples"], device()
        if denoise < 1.0:  # the latent's content is used only then
            check_finite(samples, "Sample Video: the input latent")
        for k, v in (latent.get("vf_cond") or {}).items():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                check_finite(v, f"Sample Video: the latent's {k} conditioning")
        est = sampling_estimate(model, tuple(samples.shape),
                                getattr(context_options, "length", None), dev)
        check_memory(est, dev)
        bar = Progress(steps)
        with oom_guard(est.what, est.advice):
            use(model, memory_required=est.total - est.parts["weights"])
            out = generate(model, samples, conditioning["positive"], conditioning["negative"],
                           seed=seed, steps=steps, cfg=cfg, solver=sampler, shift=shift,
                           denoise=denoise, extra=latent.get("vf_cond"), context=context_options,
                           karras=karras, callback=lambda i, n, *_: bar(i + 1, n))
        check_finite(out, "Sample Video: the sampled latent")
        return ({**latent, "samples": out.to(offload_device())},)


NODES = {"VFSampleVideo": SampleVideo}
