"""Context Options."""
from __future__ import annotations

from ..models.sampling.context import ContextOptions as _Options
from .bridge import CATEGORY


class ContextOptions:
    DISPLAY_NAME = "Context Options"
    CATEGORY = f"{CATEGORY}/sampling"
    RETURN_TYPES = ("VF_CONTEXT_OPTIONS",)
    FUNCTION = "create"
    DESCRIPTION = ("Denoises a long clip in overlapping windows of latent frames at every step "
                   "and blends the windows, for any model. AnimateDiff needs it for clips longer "
                   "than its motion module (trained on 16 frames; Sample Video says when). "
                   "Connect to Sample Video's context_options. A clip no longer than a window is "
                   "sampled exactly as without it.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "length": ("INT", {"default": 16, "min": 1, "max": 128, "tooltip":
                       "Latent frames per window (AnimateDiff: its motion module's length, "
                       "usually 16)."}),
            "overlap": ("INT", {"default": 4, "min": 0, "max": 127, "tooltip":
                        "Frames shared by neighbouring windows; more overlap blends seams better "
                        "but needs more windows. Must be smaller than length."}),
            "schedule": (["uniform", "static"], {"default": "static", "tooltip":
                         "static: the same windows at every step. uniform: the windows shift at "
                         "each step so their seams move and average out (AnimateDiff-CLI's "
                         "uniform)."}),
            "stride": ("INT", {"default": 1, "min": 1, "max": 8, "tooltip":
                       "uniform only: levels of dilated windows (1: contiguous frames only; 2: "
                       "also windows of every 2nd frame; 3: also every 4th, ...) for long-range "
                       "coherence."}),
            "closed_loop": ("BOOLEAN", {"default": False, "tooltip":
                            "Let windows wrap from the last frames to the first, for a video "
                            "that loops seamlessly."}),
            "fuse": (["pyramid", "flat"], {"default": "pyramid", "tooltip":
                     "How overlapping windows are blended: pyramid weighs each window's middle "
                     "frames most (smoother seams); flat weighs all frames alike."}),
        }}

    def create(self, length: int, overlap: int, schedule: str, stride: int, closed_loop: bool,
               fuse: str):
        return (_Options(length=length, overlap=overlap, schedule=schedule, stride=stride,
                         closed_loop=closed_loop, fuse=fuse),)


NODES = {"VFContextOptions": ContextOptions}
