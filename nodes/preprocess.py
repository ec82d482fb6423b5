"""Canny / Depth / OpenPose control preprocessors: IMAGE batch (a video's frames) in, IMAGE batch
of the same length out. The work is in models/preprocess; these only pick files and devices.

Their optional packages (OpenCV, onnxruntime) are imported when a node runs, never when the pack
loads: without them every node still registers, and the one that needs them says what to install
(`models/preprocess/_deps.py`)."""
from __future__ import annotations

import os

import numpy as np
import torch

from ..models.common.errors import VideoForgeError
from ..models.common.memory import Estimate
from ..models.preprocess.canny import canny_images
from ..models.preprocess import depth as depth_mod
from ..models.preprocess import dwpose as dwpose_mod
from ..models.preprocess._deps import require
from ..models.preprocess.frames import (OUTPUT_SIZES, as_uint8_frames, detection_size,
                                        output_size as map_size, to_image)
from ..models.preprocess.openpose_draw import draw_pose
from .bridge import CATEGORY, Progress, check_memory, device, files, free_memory, offload_device

FOLDER = "annotators"
DET_DEFAULT = "yolox_l.onnx"
POSE_DEFAULT = "dw-ll_ucoco_384.onnx"
DEPTH_DEFAULT = "Depth-Anything-V2-Small-hf/model.safetensors"
WHERE = {
    DET_DEFAULT: "download yolox_l.onnx from huggingface.co/yzd-v/DWPose",
    POSE_DEFAULT: "download dw-ll_ucoco_384.onnx from huggingface.co/yzd-v/DWPose",
    DEPTH_DEFAULT: ("download config.json, model.safetensors and preprocessor_config.json of "
                    "huggingface.co/depth-anything/Depth-Anything-V2-Small-hf into a folder "
                    "Depth-Anything-V2-Small-hf (Base / Large and Intel/dpt-hybrid-midas work the "
                    "same way)"),
}

RESOLUTION = ("INT", {"default": 512, "min": 64, "max": 8192, "step": 8,
                      "tooltip": "Short side of the frames used for detection (aspect ratio kept)."})
OUTPUT_SIZE = (list(OUTPUT_SIZES), {"default": "input", "tooltip":
                                    "input: maps at the size of the input frames; detection: at the "
                                    "detection size (short side = resolution)."})


def _choices(suffixes: tuple[str, ...], default: str) -> tuple[list[str], dict]:
    """Annotator files with these endings; the default name is always offered (found in any
    subfolder at run time, or reported missing with where to get it)."""
    names = [f for f in files(FOLDER) if f.lower().endswith(suffixes)]
    names = [default] + [n for n in names if n != default]
    return names, {"default": default}


def annotator_path(name: str) -> str:
    """Full path of an annotator file: as named, else the same name in any subfolder of
    models/annotators; a clear error that says what to put where when it is missing."""
    import folder_paths

    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        tail = "/" + name.replace("\\", "/").lstrip("/")
        hits = sorted((f for f in files(FOLDER) if ("/" + f.replace("\\", "/")).endswith(tail)),
                      key=lambda f: (f.count("/") + f.count("\\"), f))
        path = folder_paths.get_full_path(FOLDER, hits[0]) if hits else None
    if path is None:
        hint = WHERE.get(name, "put it there")
        raise VideoForgeError(f"{name!r} not found in ComfyUI's models/{FOLDER} folder(s) "
                              f"{folder_paths.get_folder_paths(FOLDER)} (nor in a subfolder): {hint}.")
    return path


# Working memory per detection-size pixel of one frame in flight. Canny / DWPose: a few uint8 /
# float32 copies of the frame per worker (resize, blur, letterbox, normalised input): <= 64 B.
# Depth: the DPT head runs 256 channels in fp32 up to the detection size, two such tensors
# alive: 2 KB (from the architecture; the transformer part is far smaller at these sizes).
WORK_PER_PIXEL = {"canny": 64, "dwpose": 64, "depth": 2048}


def check_preprocess_memory(what: str, kind: str, images, resolution: int, output: str,
                            in_flight: int = 2) -> None:
    """Refuse a preprocessor run whose frames, maps and working memory cannot fit in RAM
    (the maps come back as float32 IMAGEs, 12 bytes per pixel, after a uint8 copy)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        return  # as_uint8_frames reports the bad input
    f, h, w = (int(s) for s in images.shape[:3])
    oh, ow = map_size(h, w, resolution, output)
    dh, dw = detection_size(h, w, resolution)
    est = Estimate(f"{what} ({f} frames of {w}x{h}, maps {ow}x{oh})",
                   advice="use fewer frames or a lower resolution" + (
                       ", or output_size=detection (maps at the detection size)"
                       if output == "input" else ""))
    est.add("frames (uint8)", f * h * w * 3)
    est.add("maps", f * oh * ow * 3 * (1 + 4))
    work = in_flight * dh * dw * WORK_PER_PIXEL[kind]
    work_dev = device() if kind == "depth" else offload_device()  # the depth model may run on a GPU
    if work_dev == offload_device():
        est.add("working memory", work)
    else:
        check_memory(Estimate(est.what, {"working memory": work}, "use a lower batch_size or "
                              "resolution"), work_dev)
    check_memory(est, offload_device())


class Canny:
    DISPLAY_NAME = "Canny Edges (video)"
    CATEGORY = f"{CATEGORY}/preprocess"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("edges",)
    FUNCTION = "run"
    DESCRIPTION = ("Canny edge maps for every frame (OpenCV on the colour image, like the "
                   "reference annotators): white edges on black.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE",),
            "low_threshold": ("INT", {"default": 100, "min": 0, "max": 1000, "step": 1}),
            "high_threshold": ("INT", {"default": 200, "min": 0, "max": 1000, "step": 1}),
            "resolution": RESOLUTION,
            "blur": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1,
                               "tooltip": "Gaussian pre-blur sigma in pixels; 0 = off. Fewer "
                                          "texture edges, steadier edges across frames."}),
            "output_size": OUTPUT_SIZE,
        }}

    def run(self, images, low_threshold, high_threshold, resolution, blur, output_size):
        require(self.DISPLAY_NAME, "cv2")
        check_preprocess_memory(self.DISPLAY_NAME, "canny", images, resolution, output_size,
                                in_flight=os.cpu_count() or 2)
        edges = canny_images(images, low_threshold, high_threshold, resolution=resolution,
                             output=output_size, blur=blur, callback=Progress(len(images)))
        return (edges,)


class Depth:
    DISPLAY_NAME = "Depth Map (video)"
    CATEGORY = f"{CATEGORY}/preprocess"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("depth",)
    FUNCTION = "run"
    DESCRIPTION = ("Depth maps (near = white) with Depth-Anything V2 / V1 or DPT-Hybrid MiDaS in "
                   "transformers format from models/annotators. normalize=clip uses one range for "
                   "the whole clip, which removes the per-frame flicker.")

    @classmethod
    def INPUT_TYPES(cls):
        names, opts = _choices((".safetensors", ".sft"), DEPTH_DEFAULT)
        return {"required": {
            "images": ("IMAGE",),
            "model_name": (names, dict(opts, tooltip=(
                "A transformers depth model in models/annotators: the model.safetensors of a "
                "folder with config.json (e.g. Depth-Anything-V2-Small-hf/model.safetensors), or "
                "a single .safetensors with its config as <name>.json or in its metadata."))),
            "resolution": (RESOLUTION[0], dict(RESOLUTION[1], tooltip=(
                "Short side used for detection. Depth-Anything runs at this size rounded to a "
                "multiple of 14 (512 -> 518, its training size); DPT models run at their square "
                "config size (384)."))),
            "normalize": (["clip", "frame"], {"default": "clip", "tooltip": (
                "clip: one depth range for all frames (no flicker); frame: each frame stretched "
                "to black..white on its own (what single-image annotators do).")}),
            "output_size": OUTPUT_SIZE,
            "batch_size": ("INT", {"default": 4, "min": 1, "max": 256,
                                   "tooltip": "Frames per network call."}),
            "dtype": (["auto", "fp32", "fp16", "bf16"], {"default": "auto",
                      "tooltip": "auto: fp16 on CUDA, fp32 on CPU."}),
        }}

    def run(self, images, model_name, resolution, normalize, output_size, batch_size, dtype):
        require(self.DISPLAY_NAME, "transformers")  # no OpenCV needed
        check_preprocess_memory(self.DISPLAY_NAME, "depth", images, resolution, output_size,
                                in_flight=batch_size)
        frames = as_uint8_frames(images, "Depth images")
        dev = device()
        dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(dtype) \
            or depth_mod.default_dtype(dev)
        if dt == torch.bfloat16 and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
            dt = torch.float16
        model = depth_mod.cached_depth_model(annotator_path(model_name), dt)
        model.to(dev)
        try:
            maps = depth_mod.estimate_depth(
                model, frames, resolution=resolution, normalize=normalize, output=output_size,
                batch_size=batch_size, device=dev, dtype=dt, callback=Progress(len(frames)))
        finally:
            model.to(offload_device())
            free_memory()
        return (to_image(maps),)


class OpenPose:
    DISPLAY_NAME = "OpenPose (DWPose, video)"
    CATEGORY = f"{CATEGORY}/preprocess"
    RETURN_TYPES = ("IMAGE", "POSE_KEYPOINT")
    RETURN_NAMES = ("pose", "keypoints")
    FUNCTION = "run"
    DESCRIPTION = ("OpenPose maps (body, hands, face) from DWPose: a YOLOX person detector and the "
                   "dw-ll_ucoco_384 whole-body model (ONNX, onnxruntime; CUDA when available). "
                   "Also returns the keypoints per frame in OpenPose JSON (POSE_KEYPOINT, as "
                   "comfyui_controlnet_aux).")

    @classmethod
    def INPUT_TYPES(cls):
        det, det_opts = _choices((".onnx",), DET_DEFAULT)
        pose, pose_opts = _choices((".onnx",), POSE_DEFAULT)
        return {"required": {
            "images": ("IMAGE",),
            "bbox_detector": (det, dict(det_opts, tooltip="yolox_l.onnx from huggingface.co/yzd-v/DWPose, "
                                        "in models/annotators (a subfolder is fine).")),
            "pose_estimator": (pose, dict(pose_opts, tooltip="dw-ll_ucoco_384.onnx from "
                                          "huggingface.co/yzd-v/DWPose, in models/annotators.")),
            "resolution": RESOLUTION,
            "body": ("BOOLEAN", {"default": True}),
            "hands": ("BOOLEAN", {"default": True}),
            "face": ("BOOLEAN", {"default": True}),
            "output_size": OUTPUT_SIZE,
        }}

    def run(self, images, bbox_detector, pose_estimator, resolution, body, hands, face, output_size):
        require(self.DISPLAY_NAME, "cv2", "onnxruntime")  # before the files: one message for both
        check_preprocess_memory(self.DISPLAY_NAME, "dwpose", images, resolution, output_size)
        frames = as_uint8_frames(images, "OpenPose images")
        det_path, pose_path = annotator_path(bbox_detector), annotator_path(pose_estimator)
        if os.path.realpath(det_path) == os.path.realpath(pose_path):
            raise VideoForgeError(f"bbox_detector and pose_estimator are the same file ({bbox_detector}); "
                                  f"pick {DET_DEFAULT} and {POSE_DEFAULT}.")
        model = dwpose_mod.DWPose(det_path, pose_path, use_gpu=device().type == "cuda")
        poses = model(frames, resolution=resolution, output=output_size,
                      callback=Progress(len(frames)))
        maps = [draw_pose(p, body=body, hands=hands, face=face) for p in poses]
        keypoints = [dwpose_mod.pose_to_openpose_json(p, body=body, hands=hands, face=face) for p in poses]
        return (to_image(np.stack(maps)), keypoints)


NODES = {"VFCanny": Canny, "VFDepth": Depth, "VFOpenPose": OpenPose}
