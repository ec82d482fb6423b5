"""Canny edge maps for a batch of frames (OpenCV, run on the colour image like the reference
annotators: cv2.Canny takes the strongest gradient over the three channels)."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..common.errors import VideoForgeError
from ._deps import optional, require
from .frames import (Callback, check_images, detection_size, frame_to_uint8, output_size,
                     resize_binary, resize_image)

WHAT = "Canny Edges"
cv2 = optional("cv2", WHAT)


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def canny_frame(frame: np.ndarray, low: float, high: float, blur: float = 0.0,
                det_size: tuple[int, int] | None = None,
                out_size: tuple[int, int] | None = None) -> np.ndarray:
    """One uint8 RGB frame -> uint8 edge map (0 / 255) [H, W] at `out_size`."""
    img = frame if det_size is None else resize_image(frame, det_size)
    if blur > 0:
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=float(blur))
    edges = cv2.Canny(img, float(low), float(high))
    return edges if out_size is None else resize_binary(edges, out_size)


def check_thresholds(low: float, high: float, blur: float = 0.0) -> None:
    if low < 0 or high < 0:
        raise VideoForgeError(f"Canny thresholds must be >= 0, got low {low}, high {high}.")
    if low > high:
        raise VideoForgeError(f"Canny low threshold ({low}) is above the high threshold ({high}); "
                              "swap them.")
    if blur < 0:
        raise VideoForgeError(f"blur (Gaussian sigma) must be >= 0, got {blur}.")


def _for_each(n: int, fn, callback: Callback | None, workers: int | None) -> None:
    """fn(i) for i < n in a thread pool (OpenCV and NumPy release the GIL); callback(done, n)
    from this thread after each frame, in order; it may raise to stop (interrupt): frames not
    started yet are dropped."""
    workers = workers or _workers()
    if workers == 1 or n == 1:
        for i in range(n):
            fn(i)
            if callback is not None:
                callback(i + 1, n)
        return
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(fn, i) for i in range(n)]
        for i, f in enumerate(futures):
            f.result()
            if callback is not None:
                callback(i + 1, n)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _sizes(h: int, w: int, resolution: int, output: str):
    det = detection_size(h, w, resolution)
    out = output_size(h, w, resolution, output)
    return det, out, (None if det == (h, w) else det), (None if out == det else out)


def canny(frames: np.ndarray, low: float = 100, high: float = 200, *, resolution: int = 512,
          output: str = "input", blur: float = 0.0, callback: Callback | None = None,
          workers: int | None = None) -> np.ndarray:
    """uint8 RGB frames [N, H, W, 3] -> uint8 edge maps [N, h, w] (h, w per `output`)."""
    require(WHAT, "cv2")
    check_thresholds(low, high, blur)
    n, h, w = frames.shape[:3]
    _, out, det_arg, out_arg = _sizes(h, w, resolution, output)
    result = np.empty((n, *out), np.uint8)

    def one(i: int) -> None:
        result[i] = canny_frame(frames[i], low, high, blur, det_arg, out_arg)
    _for_each(n, one, callback, workers)
    return result


def canny_images(images, low: float = 100, high: float = 200, *, resolution: int = 512,
                 output: str = "input", blur: float = 0.0, callback: Callback | None = None,
                 workers: int | None = None) -> torch.Tensor:
    """IMAGE batch in, IMAGE batch (white edges on black, float32 [N, h, w, 3]) out: the same
    maps as `canny`, with the float <-> uint8 conversions done per frame inside the workers
    (at 512x512 they cost more than Canny itself when done batch-wide)."""
    require(WHAT, "cv2")
    check_thresholds(low, high, blur)
    x = check_images(images, "Canny images")
    n, h, w = x.shape[:3]
    _, out, det_arg, out_arg = _sizes(h, w, resolution, output)
    result = torch.empty((n, *out, 3), dtype=torch.float32)
    res = result.numpy()
    scale = np.float32(1.0 / 255.0)

    def one(i: int) -> None:
        edges = canny_frame(frame_to_uint8(x[i]), low, high, blur, det_arg, out_arg)
        np.multiply(cv2.cvtColor(edges, cv2.COLOR_GRAY2RGB), scale, out=res[i], casting="unsafe")
    _for_each(n, one, callback, workers)
    return result
