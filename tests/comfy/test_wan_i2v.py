"""The shipped image-to-video and first-last-frame workflows through a real headless ComfyUI
(tiny random checkpoints), plus the image inputs users get wrong."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from harness import REPO_ROOT, TINY_NAMES, check_ui_workflow, find_comfyui, find_node, set_inputs, video_info

pytestmark = pytest.mark.skipif(find_comfyui() is None, reason="ComfyUI not found")

CLIP_AS_MODEL = "clip_vision_in_model_dir.safetensors"
WORKFLOWS = {m: os.path.join(REPO_ROOT, "workflows", f"wan21_{m}.json") for m in ("i2v", "flf2v")}


@pytest.fixture(scope="module")
def images(comfy):
    """Test pictures in ComfyUI's input folder: RGB, RGBA, grayscale, and one smaller than the video."""
    from PIL import Image
    yy, xx = np.mgrid[0:96, 0:128]
    rgb = np.stack([xx * 2, yy * 2, 255 - xx * 2], -1).clip(0, 255).astype(np.uint8)
    names = {"rgb": "vf_start.png", "end": "vf_end.png", "rgba": "vf_rgba.png",
             "gray": "vf_gray.png", "small": "vf_small.png"}
    Image.fromarray(rgb).save(os.path.join(comfy.input_dir, names["rgb"]))
    Image.fromarray(rgb[::-1].copy()).save(os.path.join(comfy.input_dir, names["end"]))
    alpha = (xx % 32 < 16).astype(np.uint8) * 255
    Image.fromarray(np.dstack([rgb, alpha])).save(os.path.join(comfy.input_dir, names["rgba"]))
    Image.fromarray(rgb[..., 0]).save(os.path.join(comfy.input_dir, names["gray"]))
    Image.fromarray(rgb[:24, :20].copy()).save(os.path.join(comfy.input_dir, names["small"]))
    # a CLIP vision file dropped into diffusion_models by mistake
    shutil.copyfile(os.path.join(comfy.model_dir("clip_vision"), TINY_NAMES["clip_vision"]),
                    os.path.join(comfy.model_dir("diffusion_models"), CLIP_AS_MODEL))
    return names


def prompt(comfy, mode: str, images: dict, *, start="rgb", prefix=None, seed=1) -> dict:
    with open(WORKFLOWS[mode], encoding="utf-8") as f:
        api = comfy.ui_to_api(json.load(f))
    set_inputs(api, "VFLoadVideoModel", model_name=TINY_NAMES[mode])
    set_inputs(api, "VFLoadVideoVAE", vae_name=TINY_NAMES["vae"])
    set_inputs(api, "VFLoadTextEncoder", text_encoder_name=TINY_NAMES["text_encoder"])
    set_inputs(api, "VFLoadClipVision", clip_name=TINY_NAMES["clip_vision"])
    set_inputs(api, "VFImageToVideoLatent", width=64, height=48, frames=9)
    set_inputs(api, "VFSampleVideo", steps=2, seed=seed)
    set_inputs(api, "SaveVideo", filename_prefix=prefix or f"video/tiny_{mode}_{start}")
    loads = sorted(k for k, v in api.items() if v["class_type"] == "LoadImage")
    api[loads[0]]["inputs"]["image"] = images[start]
    for k in loads[1:]:
        api[k]["inputs"]["image"] = images["end"]
    return api


def mp4s(comfy, result):
    return [p for p in comfy.output_files(result) if p.endswith(".mp4")]


@pytest.mark.parametrize("mode", ["i2v", "flf2v"])
def test_workflow_settings(comfy, mode):
    with open(WORKFLOWS[mode], encoding="utf-8") as f:
        wf = json.load(f)
    check_ui_workflow(wf)
    api = comfy.ui_to_api(wf)
    kinds = sorted(v["class_type"] for v in api.values())
    assert kinds.count("LoadImage") == (2 if mode == "flf2v" else 1)
    lat_id, lat = find_node(api, "VFImageToVideoLatent")
    assert lat["inputs"]["clip_vision"] == [find_node(api, "VFLoadClipVision")[0], 0]
    assert ("end_image" in lat["inputs"]) == (mode == "flf2v")
    assert find_node(api, "VFSampleVideo")[1]["inputs"]["latent"] == [lat_id, 0]
    assert find_node(api, "VFLoadClipVision")[1]["inputs"]["clip_name"] == "clip_vision_h.safetensors"
    want = "wan2.1_flf2v_720p_14B_fp16.safetensors" if mode == "flf2v" else "wan2.1_i2v_480p_14B_fp16.safetensors"
    assert find_node(api, "VFLoadVideoModel")[1]["inputs"]["model_name"] == want
    assert find_node(api, "VFDecodeVideo")[1]["inputs"]["auto"] is True


@pytest.mark.parametrize("mode", ["i2v", "flf2v"])
def test_shipped_workflow_runs_tiny(comfy, images, mode):
    result = comfy.run(prompt(comfy, mode, images), timeout=600)
    assert result["status"] == "success", f"{result.get('error')}\n{result.get('traceback', '')}\n{comfy.log_tail()}"
    files = mp4s(comfy, result)
    assert len(files) == 1 and video_info(files[0]) == (9, 64, 48)


@pytest.mark.parametrize("start", ["rgba", "gray", "small"])
def test_awkward_images_are_handled(comfy, images, start):
    """RGBA (alpha dropped), grayscale (to RGB) and smaller-than-video images (upscaled) all run."""
    result = comfy.run(prompt(comfy, "i2v", images, start=start), timeout=600)
    assert result["status"] == "success", f"{start}: {result.get('error')}\n{result.get('traceback', '')}"
    assert video_info(mp4s(comfy, result)[0]) == (9, 64, 48)


def _drop_input(node_type, name):
    def edit(api):
        del find_node(api, node_type)[1]["inputs"][name]
    return edit


BAD = {
    # the end image alone: the start image is a required input -> refused before running
    "no_start_image": (_drop_input("VFImageToVideoLatent", "start_image"), "rejected", ["start_image"]),
    "no_clip_vision": (_drop_input("VFImageToVideoLatent", "clip_vision"), "error", ["Load CLIP Vision"]),
    "t2v_model": (lambda api: set_inputs(api, "VFLoadVideoModel", model_name=TINY_NAMES["model"]),
                  "error", ["text-to-video", "image-to-video model"]),
    "clip_in_model_loader": (lambda api: set_inputs(api, "VFLoadVideoModel", model_name=CLIP_AS_MODEL),
                             "error", ["CLIP vision encoder", "Load CLIP Vision"]),
    "frames_8": (lambda api: set_inputs(api, "VFImageToVideoLatent", frames=8), "error", ["frames=8", "4k+1"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gives_clear_error(comfy, images, case):
    edit, status, words = BAD[case]
    api = prompt(comfy, "flf2v" if case == "no_start_image" else "i2v", images, prefix=f"video/bad_i2v_{case}")
    edit(api)
    result = comfy.run(api, timeout=300)
    assert result["status"] == status, result
    msg = (result.get("exception_message") or "") + (result.get("error") or "")
    for w in words:
        assert w.lower() in msg.lower(), f"{case}: {w!r} not in {msg!r}"
    assert comfy.alive()
