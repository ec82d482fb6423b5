"""Empty Video Latent / Image To Video Latent."""
from __future__ import annotations

import torch

from ..models.common.errors import VideoForgeError
from ..models.common.family import check_same_family
from ..models.common.memory import Estimate, describe_latent, sampling_estimate, tensor_bytes
from ..models.common.video import FIT_MODES, fit_image
from .bridge import CATEGORY, Progress, check_memory, device, offload_device, oom_guard, use
from .vae import check_vae_memory, tile_plan


def empty_latent(model, shape: tuple[int, ...]) -> torch.Tensor:
    """The zero latent of `shape`, after checking that it fits in RAM and that the least any
    Sample Video of it needs (one latent frame per network call) fits where the model runs:
    an oversized request is refused here, in a moment, before anything is allocated."""
    size = describe_latent(model.latent, shape)
    least = sampling_estimate(model, shape, 1, device())
    least.parts.pop("weights")
    least.what = f"sampling this latent ({size}) later"
    check_memory(least, device())
    check_memory(Estimate(f"the latent ({size})", {"latent": tensor_bytes(shape)}, least.advice),
                 offload_device())
    return torch.zeros(shape, device=offload_device())


class EmptyVideoLatent:
    DISPLAY_NAME = "Empty Video Latent"
    CATEGORY = f"{CATEGORY}/latent"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "create"
    DESCRIPTION = ("An all-zero latent video shaped for the model's VAE (SD1.5 / AnimateDiff: any "
                   "frame count, sizes multiples of 8; Wan2.1: frames 4k+1, "
                   "width/height multiples of 16).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("VF_MODEL",),
            "width": ("INT", {"default": 832, "min": 16, "max": 4096, "step": 16}),
            "height": ("INT", {"default": 480, "min": 16, "max": 4096, "step": 16}),
            "frames": ("INT", {"default": 81, "min": 1, "max": 1025, "step": 4}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64}),
        }}

    def create(self, model, width: int, height: int, frames: int, batch_size: int):
        shape = model.latent.shape(batch_size, frames, height, width)  # raises with advice
        return ({"samples": empty_latent(model, shape), "vf_family": model.family},)


class ImageToVideoLatent:
    DISPLAY_NAME = "Image To Video Latent"
    CATEGORY = f"{CATEGORY}/latent"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "create"
    DESCRIPTION = ("Starts a video from an image (and optionally ends it on another: first-last-"
                   "frame models such as Wan2.1 FLF2V). The images are fitted to the video size, "
                   "encoded with the VAE and CLIP vision, and travel with the latent to Sample "
                   "Video. A batch of images: the first is the start, the last is the end.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("VF_MODEL",),
            "vae": ("VF_VAE",),
            "start_image": ("IMAGE",),
            "width": ("INT", {"default": 832, "min": 16, "max": 4096, "step": 16}),
            "height": ("INT", {"default": 480, "min": 16, "max": 4096, "step": 16}),
            "frames": ("INT", {"default": 81, "min": 1, "max": 1025, "step": 4}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64}),
            "resize": (list(FIT_MODES), {"default": "crop", "tooltip":
                       "crop: cover the video and cut the overflow; pad: fit inside, grey "
                       "borders; stretch: resize to the video size (official Wan)."}),
        }, "optional": {
            "clip_vision": ("VF_CLIP_VISION",),
            "end_image": ("IMAGE",),
        }}

    def create(self, model, vae, start_image, width: int, height: int, frames: int,
               batch_size: int, resize: str, clip_vision=None, end_image=None):
        check_same_family(model=model, vae=vae)
        shape = model.latent.shape(batch_size, frames, height, width)  # raises with advice
        start = fit_image(start_image[:1], width, height, resize, "start_image")
        end = None if end_image is None else fit_image(end_image[-1:], width, height, resize, "end_image")
        samples = empty_latent(model, shape)
        plan = tile_plan(vae, height, width, frames, True, 0, 0, 0, 0)
        # the conditioning video (start / end image, the rest grey or zero) and its VAE input
        est = check_vae_memory(f"Image To Video Latent ({width}x{height}, {frames} frames)", vae,
                               plan, frames, height, width, pixel_copies=3)
        with oom_guard(est.what, est.advice):
            use(vae, clip_vision, memory_required=est.total - est.parts["weights"])
            bar = Progress(1)
            cond = model.image_condition(vae, clip_vision, start, end, frames, plan,
                                         callback=lambda d, n: bar(d, n))
        return ({"samples": samples, "vf_family": model.family, "vf_cond": cond},)


class ControlVideoLatent:
    DISPLAY_NAME = "Control Video Latent"
    CATEGORY = f"{CATEGORY}/latent"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "create"
    DESCRIPTION = ("Starts a video that follows a control video (e.g. the output of Canny Edges, "
                   "Depth Map or OpenPose) and, optionally, the look of a reference image, for "
                   "control models such as EasyAnimate V5.1 Control. The control frames are fitted "
                   "to the video size and VAE-encoded; `frames` control frames are used, every "
                   "`frame_stride`-th from the start. The conditioning travels with the latent to "
                   "Sample Video.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("VF_MODEL",),
            "vae": ("VF_VAE",),
            "control_video": ("IMAGE", {"tooltip": "Control frames (IMAGE batch), at least `frames` of them."}),
            "width": ("INT", {"default": 672, "min": 16, "max": 4096, "step": 16}),
            "height": ("INT", {"default": 384, "min": 16, "max": 4096, "step": 16}),
            "frames": ("INT", {"default": 49, "min": 1, "max": 1025, "step": 4}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 64}),
            "resize": (list(FIT_MODES), {"default": "crop", "tooltip":
                       "How control frames and the reference image are fitted to the video size."}),
            "frame_stride": ("INT", {"default": 1, "min": 1, "max": 16, "tooltip":
                             "Use every n-th control frame. EasyAnimate was trained at about 8 fps "
                             "and its scripts sample the control clip so: 3 for a 24 fps clip, 4 "
                             "for 30 fps (then save the video at source fps / n)."}),
        }, "optional": {
            "reference_image": ("IMAGE", {"tooltip": "Optional: the look of the video (first image of the batch)."}),
        }}

    def create(self, model, vae, control_video, width: int, height: int, frames: int,
               batch_size: int, resize: str, frame_stride: int = 1, reference_image=None):
        check_same_family(model=model, vae=vae)
        if not getattr(model, "takes_control", False):
            raise VideoForgeError(f"{getattr(model, 'name', '') or 'the model'} ({model.family} "
                                  f"{model.variant}) takes no control video; load a control model "
                                  "(e.g. EasyAnimateV5.1-12b-zh-Control).")
        shape = model.latent.shape(batch_size, frames, height, width)  # raises with advice
        total = int(control_video.shape[0]) if control_video.dim() == 4 else 1
        picked = control_video[::frame_stride] if control_video.dim() == 4 else control_video
        have = int(picked.shape[0]) if picked.dim() == 4 else 1
        if have < frames:
            fit = model.latent.pixel_frames(model.latent.latent_frames(have)) if have else 0
            every = f" (1 in {frame_stride} of its {total})" if frame_stride > 1 else ""
            raise VideoForgeError(f"the control video has {have} frames{every} but frames={frames}; "
                                  f"give a longer control video, a smaller frame_stride, or set "
                                  f"frames to {fit or 1} or fewer.")
        samples = empty_latent(model, shape)
        plan = tile_plan(vae, height, width, frames, True, 0, 0, 0, 0)
        # the fitted control frames, their video form and its VAE input
        est = check_vae_memory(f"Control Video Latent ({width}x{height}, {frames} frames)", vae,
                               plan, frames, height, width, pixel_copies=3)
        control = fit_image(picked[:frames], width, height, resize, "control_video")
        ref = None if reference_image is None else fit_image(reference_image[:1], width, height,
                                                             resize, "reference_image")
        with oom_guard(est.what, est.advice):
            use(vae, memory_required=est.total - est.parts["weights"])
            bar = Progress(1)
            cond = model.control_condition(vae, control, ref, plan,
                                           callback=lambda d, n: bar(d, n))
        return ({"samples": samples, "vf_family": model.family, "vf_cond": cond},)


NODES = {"VFEmptyVideoLatent": EmptyVideoLatent, "VFImageToVideoLatent": ImageToVideoLatent,
         "VFControlVideoLatent": ControlVideoLatent}
