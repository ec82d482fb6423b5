"""Frames in and out of the preprocessors, and the one size rule all three share.

`resolution` is the short side used for detection; the aspect ratio is kept. A map comes back
either at the input size (`output="input"`, the default) or at the detection size
(`output="detection"`). Frames travel as uint8 RGB numpy arrays [N, H, W, 3] between the steps
(what OpenCV and onnxruntime want) and leave as ComfyUI IMAGE tensors [N, H, W, 3] float 0..1.

Non-finite pixels are defined, not left to the platform (a NaN cast to uint8 is 0 on one CPU and
255 on another): before any cast, float pixels become NaN -> 0, +inf -> 1, -inf -> 0 and are
clamped to 0..1, i.e. torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1)
(`models.common.video.clean_pixels`, the rule every IMAGE input follows).

The conversions and checks here need only NumPy / torch (the Depth node runs without OpenCV);
the resizes import OpenCV when first used (`_deps.optional`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..common.errors import VideoForgeError
from ..common.video import clean_pixels
from ._deps import optional

cv2 = optional("cv2", "Frame resizing (Canny, OpenPose)")

OUTPUT_SIZES = ("input", "detection")
MAX_SIDE = 16384  # a detection size beyond this is a typo or an absurd aspect ratio
Callback = Callable[[int, int], None]


def check_images(images, what: str = "image") -> torch.Tensor:
    """Validate an IMAGE batch (torch or numpy; [N, H, W, C] with C = 1, 3 or 4, or [N, H, W]
    grayscale) and return it as a CPU tensor [N, H, W, C]. Clear errors for anything else."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise VideoForgeError(f"{what}: expected an IMAGE batch (a tensor [frames, height, width, "
                              f"channels]), got {type(images).__name__}.")
    if images.dim() == 3:  # [N, H, W] grayscale
        images = images.unsqueeze(-1)
    if images.dim() != 4:
        raise VideoForgeError(f"{what}: expected an IMAGE batch [frames, height, width, channels], "
                              f"got a tensor of shape {tuple(images.shape)}.")
    n, h, w, c = images.shape
    if n == 0:
        raise VideoForgeError(f"{what}: the batch is empty (0 frames); connect frames to preprocess.")
    if h == 0 or w == 0:
        raise VideoForgeError(f"{what}: frames of {w}x{h} pixels have no pixels.")
    if c not in (1, 3, 4):
        raise VideoForgeError(f"{what}: expected 1 (gray), 3 (RGB) or 4 (RGBA) channels, got {c} "
                              f"(shape {tuple(images.shape)}; IMAGE is [frames, height, width, channels]).")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise VideoForgeError(f"{what}: expected float (0..1) or uint8 pixels, got {images.dtype}.")
    return images.detach().cpu()


def frame_to_uint8(frame: torch.Tensor) -> np.ndarray:
    """One frame [H, W, C] (float 0..1 or uint8; C = 1, 3, 4) -> contiguous uint8 RGB [H, W, 3].

    Float pixels, alpha included, are first cleaned (`clean_pixels`: NaN -> 0, +inf -> 1,
    -inf -> 0, clamped to 0..1), so the cast below never sees a non-finite or out-of-range
    value and the result is the same on every platform. RGBA is composited over white, then
    pixels are scaled by 255 and rounded half to even (as OpenCV's convertScaleAbs); gray is
    repeated into the three channels."""
    if frame.dtype == torch.uint8:
        f = frame.numpy()
        if f.shape[2] == 4:  # composite in float, like float RGBA below
            f = f.astype(np.float32) * np.float32(1.0 / 255.0)
    else:
        f = clean_pixels(frame.float()).numpy()
    if f.shape[2] == 4:  # composite over white (as the reference annotators do)
        alpha = f[..., 3:4]
        f = f[..., :3] * alpha + (np.float32(1.0) - alpha)  # <= 1 (+ 1 ulp): rounds to <= 255
    if f.dtype != np.uint8:
        np.multiply(f, np.float32(255.0), out=f)
        f = np.rint(f, out=f).astype(np.uint8)
    if f.shape[2] == 1:
        return np.repeat(f, 3, axis=2)
    return np.ascontiguousarray(f)


def as_uint8_frames(images, what: str = "image") -> np.ndarray:
    """IMAGE batch -> contiguous uint8 RGB frames [N, H, W, 3] (see check_images / frame_to_uint8)."""
    x = check_images(images, what)
    out = np.empty((*x.shape[:3], 3), np.uint8)
    for i in range(x.shape[0]):
        out[i] = frame_to_uint8(x[i])
    return out


def detection_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(height, width) with the short side = `resolution`, aspect ratio kept (rounded)."""
    resolution = int(resolution)
    if resolution < 1:
        raise VideoForgeError(f"resolution must be a positive number of pixels, got {resolution}.")
    k = resolution / min(height, width)
    h, w = max(1, int(round(height * k))), max(1, int(round(width * k)))
    if max(h, w) > MAX_SIDE:
        raise VideoForgeError(f"frames of {width}x{height} at resolution {resolution} (short side) "
                              f"would be {w}x{h}; the long side may be at most {MAX_SIDE}. "
                              "Lower the resolution or crop the frames.")
    return h, w


def output_size(height: int, width: int, resolution: int, output: str) -> tuple[int, int]:
    """Size of the returned maps: the input size or the detection size."""
    if output not in OUTPUT_SIZES:
        raise VideoForgeError(f"output size must be one of {OUTPUT_SIZES}, got {output!r}.")
    return (height, width) if output == "input" else detection_size(height, width, resolution)


def resize_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 image to (height, width): area when shrinking, cubic when enlarging
    (what the reference annotators use)."""
    h, w = img.shape[:2]
    if (h, w) == tuple(size):
        return img
    shrink = size[0] * size[1] < h * w
    return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def resize_binary(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 0/255 map (edges) and keep it binary and connected: nearest when enlarging,
    area coverage >= 1/4 when shrinking (a one-pixel line survives any shrink down to 1/2)."""
    h, w = mask.shape[:2]
    if (h, w) == tuple(size):
        return mask
    if size[0] >= h and size[1] >= w:
        return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    cover = cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return np.where(cover >= 64, 255, 0).astype(np.uint8)


def to_image(maps: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W] / [N, H, W, 3] or float 0..1 [N, H, W] / [N, H, W, 3] maps -> IMAGE float32
    [N, H, W, 3] (contiguous; converted frame by frame with NumPy, no big temporaries)."""
    m = maps.numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    n, h, w = m.shape[:3]
    out = torch.empty((n, h, w, 3), dtype=torch.float32)
    o = out.numpy()
    scale = np.float32(1.0 / 255.0) if m.dtype == np.uint8 else np.float32(1.0)
    for i in range(n):
        f = m[i]
        np.multiply(f[..., None] if f.ndim == 2 else f, scale, out=o[i], casting="unsafe")
    return out
