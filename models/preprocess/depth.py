"""Depth maps with Depth-Anything (V1 / V2: Small, Base, Large) or DPT (DPT-Hybrid MiDaS, DPT-Large)
through transformers, loaded from local files only. Output: near = white, 0..1.

Accepted files (in ComfyUI's models/annotators, any subfolder):
- a transformers folder: `config.json` + `model.safetensors` (or shards + index), e.g. a clone of
  depth-anything/Depth-Anything-V2-Small-hf or Intel/dpt-hybrid-midas; pick its
  `model.safetensors` in the node. `preprocessor_config.json`, when present, gives mean / std.
- a single `<name>.safetensors` with the same config.json content next to it as `<name>.json`,
  or embedded in the safetensors metadata under the key "config" (a JSON string).
Weights are read from safetensors only; no remote code, no download.

Network input: Depth-Anything keeps the aspect ratio, short side = `resolution` rounded to a
multiple of 14 (518 for the default 512, its training size). transformers' DPT models only take
square inputs (the neck reshapes to a square grid; DPT-Hybrid also checks the size), so DPT runs
at its config's `image_size` square (384 for DPT-Hybrid MiDaS), as its image processor does.
The prediction is resized to the output size before normalisation.

Normalisation: "frame" maps each frame's min..max to 0..1 (as the reference annotators do;
flickers when the scene's depth range changes), "clip" uses one min..max for the whole batch.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..common.checkpoint import SAFETENSORS_EXT, load_state_dict
from ..common.errors import VideoForgeError
from ._deps import require
from .frames import Callback, detection_size, output_size

NORMALIZE = ("frame", "clip")
KINDS = {"depth_anything": "DepthAnythingForDepthEstimation", "dpt": "DPTForDepthEstimation"}
_MEAN_STD = {"depth_anything": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
             "dpt": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])}

EXPECTED = ("Expected a transformers depth model: a folder with config.json + model.safetensors "
            "(e.g. depth-anything/Depth-Anything-V2-Small-hf, Intel/dpt-hybrid-midas), or a single "
            ".safetensors file with its config.json content next to it as <name>.json or in its "
            "metadata under \"config\". The original Depth-Anything-V2 .pth files "
            "(depth_anything_v2_vits.pth) are not in this format: use the -hf versions.")


@dataclass
class DepthModel:
    """A loaded depth network and what its input needs."""
    net: torch.nn.Module
    kind: str = "depth_anything"          # "depth_anything" | "dpt"
    mean: list[float] = field(default_factory=lambda: list(_MEAN_STD["depth_anything"][0]))
    std: list[float] = field(default_factory=lambda: list(_MEAN_STD["depth_anything"][1]))
    multiple: int = 14                    # network input sides are multiples of this
    square: int | None = None             # fixed square input side (DPT), else aspect kept
    metric: bool = False                  # metric depth (far = large): inverted for near = white
    path: str = ""

    def network_size(self, det: tuple[int, int]) -> tuple[int, int]:
        if self.square:
            return self.square, self.square
        m = self.multiple
        return tuple(max(m, int(round(s / m)) * m) for s in det)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "DepthModel":
        self.net.to(device=device, dtype=dtype)
        return self


# ---------------------------------------------------------------------------- loading
def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise VideoForgeError(f"{path}: cannot read the model config ({e}). {EXPECTED}") from e
    if not isinstance(data, dict):
        raise VideoForgeError(f"{path}: the config is not a JSON object. {EXPECTED}")
    return data


def find_config(path: str) -> tuple[dict, str | None]:
    """(config dict, folder holding preprocessor_config.json or None) for a weights file."""
    folder, name = os.path.split(path)
    stem = os.path.splitext(name)[0]
    sibling = os.path.join(folder, stem + ".json")
    if os.path.isfile(sibling):
        return _read_json(sibling), None
    try:
        from safetensors import safe_open
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - unreadable header: load_state_dict names the problem
        meta = {}
    if meta.get("config"):
        try:
            cfg = json.loads(meta["config"])
        except ValueError as e:
            raise VideoForgeError(f"{path}: the \"config\" metadata is not valid JSON ({e}).") from e
        return cfg, None
    if os.path.isfile(os.path.join(folder, "config.json")):
        return _read_json(os.path.join(folder, "config.json")), folder
    raise VideoForgeError(f"{path}: no model config found (looked for {stem}.json next to it, "
                          f"a \"config\" entry in its metadata and config.json in its folder). {EXPECTED}")


def _mean_std(kind: str, folder: str | None) -> tuple[list[float], list[float]]:
    mean, std = _MEAN_STD[kind]
    if folder and os.path.isfile(os.path.join(folder, "preprocessor_config.json")):
        pp = _read_json(os.path.join(folder, "preprocessor_config.json"))
        mean, std = pp.get("image_mean", mean), pp.get("image_std", std)
    return [float(v) for v in mean], [float(v) for v in std]


def load_depth_model(path: str) -> DepthModel:
    """Build the transformers model named by the config and load the file's weights (CPU, fp32).
    Raises VideoForgeError for anything that is not such a model, naming the file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        cand = [f for f in sorted(os.listdir(path)) if f.endswith(SAFETENSORS_EXT)]
        if not cand:
            raise VideoForgeError(f"{path}: folder has no .safetensors weights. {EXPECTED}")
        path = os.path.join(path, cand[0])
    if not os.path.isfile(path):
        raise VideoForgeError(f"{path}: file not found. {EXPECTED}")
    if not path.lower().endswith(SAFETENSORS_EXT):
        raise VideoForgeError(f"{path}: depth models load from .safetensors only (no pickled "
                              f".pth / .bin). {EXPECTED}")
    cfg, folder = find_config(path)
    kind = cfg.get("model_type")
    if kind not in KINDS:
        raise VideoForgeError(f"{path}: config model_type is {kind!r}; expected one of {sorted(KINDS)} "
                              f"(Depth-Anything or DPT / MiDaS). {EXPECTED}")
    transformers = require("Depth Map", "transformers")
    from transformers import CONFIG_MAPPING

    try:
        config = CONFIG_MAPPING[kind].from_dict(dict(cfg))
    except Exception as e:  # noqa: BLE001
        raise VideoForgeError(f"{path}: invalid {kind} config ({e}).") from e
    sd = load_state_dict(path)  # safetensors, memory-mapped; all shards of a sharded file
    cls = getattr(transformers, KINDS[kind])
    try:
        # from_pretrained(None, state_dict=...) applies transformers' own key renames, so files
        # saved by older transformers versions load in newer ones.
        net, info = cls.from_pretrained(None, config=config, state_dict=sd, output_loading_info=True)
    except Exception as e:  # noqa: BLE001
        raise VideoForgeError(f"{path}: the weights do not fit a {KINDS[kind]} with this config ({e}).") from e
    missing = list(info.get("missing_keys") or [])
    bad = list(info.get("mismatched_keys") or [])
    if missing or bad:
        raise VideoForgeError(f"{path}: checkpoint does not match its config: "
                              f"{len(missing)} missing weights (e.g. {missing[:3]}), "
                              f"{len(bad)} shape mismatches (e.g. {[str(b) for b in bad[:2]]}). {EXPECTED}")
    net = net.float().eval().requires_grad_(False)
    mean, std = _mean_std(kind, folder)
    if kind == "dpt":
        size = config.image_size
        size = size[0] if isinstance(size, (list, tuple)) else size
        return DepthModel(net, kind, mean, std, multiple=32, square=int(size), path=path)
    metric = getattr(config, "depth_estimation_type", "relative") == "metric"
    return DepthModel(net, kind, mean, std, multiple=int(getattr(config, "patch_size", 14) or 14),
                      metric=metric, path=path)


_cache: dict[tuple, DepthModel] = {}
_cache_lock = threading.Lock()


def cached_depth_model(path: str, dtype: torch.dtype = torch.float32) -> DepthModel:
    """load_depth_model in `dtype`, with a one-entry cache keyed by the file (path, size, mtime)
    and the dtype (another dtype reloads from the file rather than casting a cast)."""
    if not os.path.isfile(path):
        raise VideoForgeError(f"{path}: file not found. {EXPECTED}")
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, dtype)
    with _cache_lock:
        if key not in _cache:
            _cache.clear()
            _cache[key] = load_depth_model(path).to(dtype=dtype)
        return _cache[key]


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


# ---------------------------------------------------------------------------- inference
def default_dtype(device: torch.device | str) -> torch.dtype:
    """fp16 on CUDA (the models are trained / shipped for it), fp32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def normalize_depth(depth: torch.Tensor, mode: str) -> torch.Tensor:
    """[N, H, W] raw prediction (larger = nearer) -> 0..1 per frame or over the whole clip.
    A constant map (no depth range) becomes 0."""
    if mode not in NORMALIZE:
        raise VideoForgeError(f"normalize must be one of {NORMALIZE}, got {mode!r}.")
    d = depth.float()
    if mode == "clip":
        lo, hi = d.min(), d.max()
    else:
        flat = d.reshape(d.shape[0], -1)
        lo = flat.min(dim=1).values.view(-1, 1, 1)
        hi = flat.max(dim=1).values.view(-1, 1, 1)
    rng = hi - lo
    out = (d - lo) / torch.where(rng > 0, rng, torch.ones_like(rng))
    return torch.where(rng > 0, out, torch.zeros_like(out)).clamp_(0.0, 1.0)


@torch.inference_mode()
def estimate_depth(model: DepthModel, frames: np.ndarray, *, resolution: int = 512,
                   normalize: str = "frame", output: str = "input", batch_size: int = 4,
                   device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                   callback: Callback | None = None) -> torch.Tensor:
    """uint8 RGB frames [N, H, W, 3] -> depth maps [N, h, w] float 0..1 (near = 1) on the CPU.

    Frames go through the network `batch_size` at a time on `device` in `dtype`
    (default_dtype(device) when None). `callback(done, total)` after each batch; it may raise
    to stop.
    """
    if normalize not in NORMALIZE:
        raise VideoForgeError(f"normalize must be one of {NORMALIZE}, got {normalize!r}.")
    if batch_size < 1:
        raise VideoForgeError(f"batch_size must be >= 1, got {batch_size}.")
    device = torch.device(device)
    dtype = dtype or default_dtype(device)
    n, h, w = frames.shape[:3]
    det = detection_size(h, w, resolution)
    out = output_size(h, w, resolution, output)
    net_hw = model.network_size(det)
    mean = torch.tensor(model.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=device).view(1, 3, 1, 1)
    maps = torch.empty((n, *out), dtype=torch.float32)
    for i in range(0, n, batch_size):
        j = min(n, i + batch_size)
        x = torch.from_numpy(frames[i:j]).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != net_hw:
            shrink = net_hw[0] * net_hw[1] < h * w
            x = F.interpolate(x, size=net_hw, mode="bicubic", align_corners=False,
                              antialias=shrink).clamp_(0.0, 1.0)
        x = ((x - mean) / std).to(dtype)
        pred = model.net(pixel_values=x).predicted_depth
        pred = pred.float().unsqueeze(1)
        if model.metric:
            pred = -pred
        pred = F.interpolate(pred, size=out, mode="bilinear", align_corners=False)[:, 0]
        maps[i:j] = pred.cpu() if normalize == "clip" else normalize_depth(pred, "frame").cpu()
        if callback is not None:
            callback(j, n)
    return normalize_depth(maps, "clip") if normalize == "clip" else maps
