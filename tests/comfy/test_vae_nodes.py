"""Encode Video / Decode Video tiling inputs through a real headless ComfyUI."""
from __future__ import annotations

import os

import numpy as np
import pytest

from harness import TINY_NAMES, find_comfyui, video_info

pytestmark = pytest.mark.skipif(find_comfyui() is None, reason="ComfyUI not found")


@pytest.fixture(scope="module")
def frame(comfy):
    from PIL import Image
    yy, xx = np.mgrid[0:48, 0:80]
    rgb = np.stack([xx * 3, yy * 5, 255 - xx * 3], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(os.path.join(comfy.input_dir, "vf_frame.png"))
    return "vf_frame.png"


def roundtrip(frame: str, decode: dict, encode: dict | None = None, prefix: str = "video/vae_rt") -> dict:
    """Load Image -> Encode Video -> Decode Video -> Create / Save Video, as an API prompt."""
    tiling = dict(auto=True, tile_size=512, overlap=64, temporal_size=0, temporal_overlap=8)
    return {
        "1": {"class_type": "VFLoadVideoVAE", "inputs": {"vae_name": TINY_NAMES["vae"], "dtype": "auto"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": frame}},
        "3": {"class_type": "VFEncodeVideo", "inputs": {"vae": ["1", 0], "frames": ["2", 0], **tiling, **(encode or {})}},
        "4": {"class_type": "VFDecodeVideo", "inputs": {"vae": ["1", 0], "latent": ["3", 0], **tiling, **decode}},
        "5": {"class_type": "CreateVideo", "inputs": {"images": ["4", 0], "fps": 16.0}},
        "6": {"class_type": "SaveVideo", "inputs": {"video": ["5", 0], "filename_prefix": prefix,
                                                    "format": "mp4", "codec": "h264"}},
    }


@pytest.mark.parametrize("decode", [{}, dict(auto=False, tile_size=32, overlap=16)],
                         ids=["auto", "tiled_32"])
def test_encode_decode_roundtrip(comfy, frame, decode):
    result = comfy.run(roundtrip(frame, decode, encode=dict(auto=False, tile_size=48, overlap=16),
                                 prefix=f"video/vae_rt_{len(decode)}"), timeout=300)
    assert result["status"] == "success", f"{result.get('error')}\n{result.get('traceback', '')}"
    mp4 = [p for p in comfy.output_files(result) if p.endswith(".mp4")]
    assert len(mp4) == 1 and video_info(mp4[0]) == (1, 80, 48)


@pytest.mark.parametrize("decode, words", [
    (dict(auto=False, tile_size=100, overlap=16), ["tile_size=100", "multiple of 8"]),
    (dict(auto=False, tile_size=64, overlap=64), ["overlap=64", "smaller than tile_size=64"]),
    (dict(auto=False, tile_size=0, temporal_size=8, temporal_overlap=0), ["temporal_overlap=0", "at least 4"]),
])
def test_bad_tiling_values_are_named(comfy, frame, decode, words):
    result = comfy.run(roundtrip(frame, decode, prefix="video/vae_bad"), timeout=300)
    assert result["status"] == "error", result
    msg = result.get("exception_message") or result.get("error") or ""
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    assert comfy.alive()
