"""Control preprocessor throughput on this machine (CPU unless --device cuda).

- Canny: a 64-frame 512x512 batch (textured frames with shapes), frames/s of
  models.preprocess.canny (thread pool) against a plain per-frame loop the way single-image
  annotator nodes run it (float -> uint8 per frame, cv2.Canny, back to a tensor), same output.
- Depth: s/frame of the full pipeline (resize, normalise, network, resize back, clip-wise
  normalisation) with a Depth-Anything-V2-Small-sized network (random weights, the real config:
  ViT-S/14, 384 wide, 12 layers) at resolution 512 (network 518 x 518), and with the tiny test
  model (pipeline overhead).
- DWPose: s/frame of the pipeline with the tiny test ONNX models (letterbox, crops, SimCC
  decoding, drawing; the real yolox_l / dw-ll_ucoco_384 are not downloaded here).

Run:  python bench/preprocess.py [--frames 64] [--size 512] [--skip depth,dwpose] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import cv2
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from models.preprocess.canny import canny_images  # noqa: E402
from models.preprocess import depth as depth_mod  # noqa: E402
from models.preprocess import dwpose as dwpose_mod  # noqa: E402
from models.preprocess.frames import as_uint8_frames  # noqa: E402
from models.preprocess.openpose_draw import draw_pose  # noqa: E402

DA_V2_SMALL = {  # depth-anything/Depth-Anything-V2-Small-hf config.json (architecture fields)
    "model_type": "depth_anything", "patch_size": 14, "reassemble_hidden_size": 384,
    "reassemble_factors": [4, 2, 1, 0.5], "neck_hidden_sizes": [48, 96, 192, 384],
    "fusion_hidden_size": 64, "head_hidden_size": 32, "head_in_index": -1,
    "backbone_config": {"model_type": "dinov2", "hidden_size": 384, "num_hidden_layers": 12,
                        "num_attention_heads": 6, "patch_size": 14, "image_size": 518,
                        "out_indices": [9, 10, 11, 12], "reshape_hidden_states": False,
                        "out_features": ["stage9", "stage10", "stage11", "stage12"]}}


def textured(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """IMAGE batch [n, size, size, 3]: blurred noise with moving rectangles and circles."""
    rng = np.random.default_rng(seed)
    base = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    base = cv2.GaussianBlur(base, (0, 0), 2.0)
    frames = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        f = np.roll(base, i * 3, axis=1).copy()
        cv2.rectangle(f, (40 + i, 60), (200 + i, 300), (240, 240, 240), -1)
        cv2.circle(f, (size - 120, 200 + i), 80, (20, 40, 200), -1)
        frames[i] = f
    return torch.from_numpy(frames).float() / 255.0


def timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_canny(images: torch.Tensor) -> dict:
    n = images.shape[0]

    def ours():  # what the VFCanny node does end to end (IMAGE in, IMAGE out)
        return canny_images(images, 100, 200, resolution=images.shape[1])

    def per_frame_loop():  # one frame at a time, the way single-image annotator nodes run
        out = []
        for img in images:
            u8 = np.asarray(img.cpu() * 255.0, dtype=np.uint8)
            e = cv2.Canny(u8, 100, 200)
            out.append(torch.from_numpy(np.stack([e] * 3, -1).astype(np.float32) / 255.0))
        return torch.stack(out)

    def single_thread():
        return canny_images(images, 100, 200, resolution=images.shape[1], workers=1)

    a, b = ours(), per_frame_loop()
    # the loop truncates to uint8 where we round: the maps differ only at a few pixels
    diff = float((a != b).float().mean())
    t_ours, t_loop, t_one = timed(ours), timed(per_frame_loop), timed(single_thread)
    return {"frames": n, "size": list(images.shape[1:3]), "fps_ours": n / t_ours,
            "fps_ours_1thread": n / t_one, "fps_per_frame_loop": n / t_loop,
            "speedup_vs_loop": t_loop / t_ours, "pixels_differing": diff,
            "cv2_threads": cv2.getNumThreads()}


def _depth_model(config: dict) -> depth_mod.DepthModel:
    from transformers import CONFIG_MAPPING, DepthAnythingForDepthEstimation

    torch.manual_seed(0)
    net = DepthAnythingForDepthEstimation(CONFIG_MAPPING["depth_anything"].from_dict(dict(config)))
    return depth_mod.DepthModel(net.float().eval())


def bench_depth_models(images: torch.Tensor, device: str, n: int) -> dict:
    from fixtures.preprocess import tiny_depth_config

    frames = as_uint8_frames(images[:n])
    out = {}
    for name, cfg, res in (("da_v2_small_size", DA_V2_SMALL, 512), ("tiny", tiny_depth_config(), 512)):
        m = _depth_model(cfg).to(device)
        dt = depth_mod.default_dtype(device)
        m.net.to(dtype=dt)
        for bs in (1, n):
            t = timed(lambda: depth_mod.estimate_depth(m, frames, resolution=res, normalize="clip",
                                                       batch_size=bs, device=device, dtype=dt), repeats=1)
            out[f"{name}_bs{bs}_s_per_frame"] = t / n
    return out


def bench_dwpose(images: torch.Tensor, n: int) -> dict:
    from fixtures.preprocess import write_dwpose_onnx, write_yolox_onnx

    d = tempfile.mkdtemp(prefix="vf_bench_dwpose_")
    det = write_yolox_onnx(os.path.join(d, "yolox_l.onnx"), [(100, 80, 260, 400, 0.9), (380, 60, 560, 420, 0.8)])
    pose = write_dwpose_onnx(os.path.join(d, "dw-ll_ucoco_384.onnx"), None)
    model = dwpose_mod.DWPose(det, pose)
    frames = as_uint8_frames(images[:n])

    def run():
        poses = model(frames, resolution=images.shape[1])
        return [draw_pose(p) for p in poses]
    t = timed(run, repeats=1)
    return {"tiny_models_s_per_frame": t / n, "people_per_frame": 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--depth-frames", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip", default="", help="comma list of canny,depth,dwpose")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    images = textured(args.frames, args.size)
    res = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": args.device}
    if "canny" not in skip:
        res["canny"] = bench_canny(images)
        c = res["canny"]
        print(f"Canny {args.frames} x {args.size}x{args.size}: {c['fps_ours']:.0f} frames/s "
              f"(1 thread {c['fps_ours_1thread']:.0f}; per-frame loop {c['fps_per_frame_loop']:.0f}; "
              f"x{c['speedup_vs_loop']:.2f})")
    if "depth" not in skip:
        res["depth"] = bench_depth_models(images, args.device, args.depth_frames)
        for k, v in res["depth"].items():
            print(f"Depth {k}: {v:.3f}")
    if "dwpose" not in skip:
        res["dwpose"] = bench_dwpose(images, min(args.frames, 16))
        print(f"DWPose tiny models, 2 people, {args.size}px: {res['dwpose']['tiny_models_s_per_frame'] * 1000:.1f} ms/frame")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
