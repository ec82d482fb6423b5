"""EasyAnimate V5.1 end to end vs diffusers' pipelines with the same initial noise.

Tiny transformer (T2V / InP / Control), MagVIT VAE and Qwen2-VL text encoder, written in the
files users have (official layouts, sharded text encoder with its tokenizer folder); ours loads
them through the loaders the nodes use and samples with `generate()` plus the conditioning the
Image To Video Latent / Control Video Latent nodes build, the reference is
`EasyAnimatePipeline` / `EasyAnimateInpaintPipeline` / `EasyAnimateControlPipeline` with
`FlowMatchEulerDiscreteScheduler` given our shifted schedule as custom timesteps (its default
`set_timesteps(n)` spaces them differently, see models/sampling/schedules.py).
"""
from __future__ import annotations

import os

import pytest
import torch

import tests_fixtures as fx
from models import loader
from models.common.errors import VideoForgeError
from models.easyanimate.conditioning import NOISE_AUG_SEED
from models.sampling.noise import noise_stream
from models.sampling.schedules import flow_sigmas
from models.sampling.video import generate

FRAMES, H, W, STEPS, CFG, SHIFT, SEED = 5, 32, 32, 4, 5.0, 3.0, 7
PROMPT, NEGATIVE = "一只猫在草地上奔跑, a cat running on grass", "blurry, low quality"

pytestmark = pytest.mark.skipif(fx.ea_comfy_qwen25_tokenizer_dir() is None,
                                reason="needs ComfyUI's qwen25 tokenizer files")


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ea_pipe")
    text = fx.write_easyanimate_text_encoder(str(d / "EasyAnimateV5.1-tiny"), seed=1)
    vae = fx.write_easyanimate_vae(str(d / "vae.safetensors"), layout="original", seed=2)
    width = text["model"].config.text_config.hidden_size if hasattr(text["model"].config, "text_config") \
        else text["model"].config.hidden_size
    dits = {v: fx.write_easyanimate_dit(str(d / f"dit_{v}.safetensors"), v, "official", seed=3,
                                        text_embed_dim=width) for v in ("t2v", "inp", "control")}
    te = loader.load_text_encoder(text["shards"][0])
    return {"text": text, "vae": vae, "dits": dits, "te": te,
            "our_vae": loader.load_video_vae(str(d / "vae.safetensors"), "fp32"),
            "ref_te": fx.ea_dequantised_model(text["model"], text["state_dict"])}


def _reference(kind: str, parts, dit):
    from diffusers import (EasyAnimateControlPipeline, EasyAnimateInpaintPipeline, EasyAnimatePipeline,
                           FlowMatchEulerDiscreteScheduler)
    from transformers import Qwen2Tokenizer
    cls = {"t2v": EasyAnimatePipeline, "inp": EasyAnimateInpaintPipeline,
           "control": EasyAnimateControlPipeline}[kind]
    pipe = cls(vae=parts["vae"]["model"], text_encoder=parts["ref_te"],
               tokenizer=Qwen2Tokenizer.from_pretrained(parts["text"]["tokenizer_dir"]),
               transformer=dit, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0))
    pipe.set_progress_bar_config(disable=True)
    # diffusers' inpaint pipeline reads `init_noise_sigma` when given latents, which the flow
    # scheduler lacks (UnboundLocalError otherwise); 1 is what a flow start means
    pipe.scheduler.init_noise_sigma = 1.0
    # ... and `vae.config.cache_mag_vae`, which AutoencoderKLMagvit's config does not declare;
    # V5.1's config sets it (mask resized with the first frame alone)
    pipe.vae.register_to_config(cache_mag_vae=True)
    # ... and the control pipeline passes `text_encoder_index` to its own encode_prompt, which
    # does not take it; the encoding itself is the shared one
    encode = pipe.encode_prompt
    pipe.encode_prompt = lambda *a, text_encoder_index=None, **k: encode(*a, **k)
    # the pipelines take custom `timesteps` but not `sigmas`: hand it our shifted schedule with
    # shift 1 so timesteps and sigmas agree (sigma = t / 1000)
    return pipe, [float(s) * 1000 for s in flow_sigmas(STEPS, SHIFT)[:-1]]


def _load(parts, kind: str):
    model = loader.load_video_model(parts["dits"][kind][1])
    # diffusers >= 0.32 places RoPE positions differently from the official code the weights
    # were trained with, except on 2:3 grids (models/easyanimate/model.py); match it here
    model.dit.rope_grid = "diffusers"
    return model


def _ours(parts, kind: str, extra=None):
    model = _load(parts, kind)
    te = parts["te"]
    shape = model.latent.shape(1, FRAMES, H, W)
    return model, shape, dict(positive=te.encode([PROMPT]), negative=te.encode([NEGATIVE]),
                              seed=SEED, steps=STEPS, cfg=CFG, solver="euler", shift=SHIFT,
                              extra=extra)


def _compare(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape
    assert want.abs().mean() > 0.05
    err = (got - want).abs().max().item()
    print(f"PARITY max abs error {err:.2e} (max |ref| {want.abs().max().item():.2f})")  # pytest -s
    return err


def _images(seed: int, n: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth content so the tiny VAE sees an image, not noise
    base = torch.rand(n, 3, H // 8, W // 8, generator=g)
    return torch.nn.functional.interpolate(base, size=(H, W), mode="bilinear", align_corners=False)


def test_t2v_matches_easyanimate_pipeline(parts):
    ref_dit = parts["dits"]["t2v"][0]
    model, shape, kw = _ours(parts, "t2v")
    noise = noise_stream(shape, SEED)()
    pipe, timesteps = _reference("t2v", parts, ref_dit)
    with torch.no_grad():
        want = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, height=H, width=W,
                    num_inference_steps=STEPS, guidance_scale=CFG, timesteps=timesteps,
                    latents=noise.clone(), output_type="latent").frames
    got = generate(model, torch.zeros(shape), **kw)
    assert _compare(got, want) <= 1e-3


@pytest.mark.parametrize("with_end", [False, True], ids=["start", "start_end"])
def test_inp_image_to_video_matches_inpaint_pipeline(parts, with_end):
    ref_dit = parts["dits"]["inp"][0]
    start = _images(11)                                       # [1, 3, H, W] in 0..1
    end = _images(14) if with_end else None
    model = _load(parts, "inp")
    cond = model.image_condition(parts["our_vae"], None, start.permute(0, 2, 3, 1),
                                 None if end is None else end.permute(0, 2, 3, 1), FRAMES)
    model, shape, kw = _ours(parts, "inp", extra=cond)
    noise = noise_stream(shape, SEED)()
    pipe, timesteps = _reference("inp", parts, ref_dit)
    video = start[:, :, None].expand(1, 3, FRAMES, H, W).clone()  # get_image_to_video_latent
    mask = torch.zeros(1, 1, FRAMES, H, W)
    mask[:, :, 1:] = 255
    if end is not None:
        video[:, :, -1] = end
        mask[:, :, -1] = 0
    with torch.no_grad():
        want = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, height=H, width=W,
                    video=video, mask_video=mask, num_inference_steps=STEPS, guidance_scale=CFG,
                    timesteps=timesteps, latents=noise.clone(), output_type="latent",
                    generator=torch.Generator().manual_seed(NOISE_AUG_SEED)).frames
    got = generate(model, torch.zeros(shape), **kw)
    assert _compare(got, want) <= 1e-3


def test_control_matches_control_pipeline(parts):
    ref_dit = parts["dits"]["control"][0]
    control = _images(12, FRAMES)                              # [F, 3, H, W]
    ref_image = _images(13)
    model = _load(parts, "control")
    cond = model.control_condition(parts["our_vae"], control.permute(0, 2, 3, 1),
                                   ref_image.permute(0, 2, 3, 1))
    model, shape, kw = _ours(parts, "control", extra=cond)
    noise = noise_stream(shape, SEED)()
    pipe, timesteps = _reference("control", parts, ref_dit)
    with torch.no_grad():
        want = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, height=H, width=W,
                    control_video=control.permute(1, 0, 2, 3)[None],
                    ref_image=ref_image[:, :, None], num_inference_steps=STEPS,
                    guidance_scale=CFG, timesteps=timesteps, latents=noise.clone(),
                    output_type="latent").frames
    got = generate(model, torch.zeros(shape), **kw)
    assert _compare(got, want) <= 1e-3


def test_variant_mismatches_are_refused(parts):
    t2v = loader.load_video_model(parts["dits"]["t2v"][1])
    inp = loader.load_video_model(parts["dits"]["inp"][1])
    ctrl = loader.load_video_model(parts["dits"]["control"][1])
    assert (t2v.dit.cfg.variant, inp.dit.cfg.variant, ctrl.dit.cfg.variant) == ("t2v", "inp", "control")
    te = parts["te"]
    run = dict(seed=1, steps=1, cfg=1.0, solver="euler")
    lat = torch.zeros(t2v.latent.shape(1, FRAMES, H, W))
    pos = te.encode(["x"])
    with pytest.raises(VideoForgeError, match="InP.*Image To Video Latent|Image To Video Latent"):
        generate(inp, lat, pos, None, **run)
    with pytest.raises(VideoForgeError, match="Control Video Latent"):
        generate(ctrl, lat, pos, None, **run)
    control = ctrl.control_condition(parts["our_vae"], _images(3, FRAMES).permute(0, 2, 3, 1), None)
    with pytest.raises(VideoForgeError, match="text-to-video model.*control"):
        generate(t2v, lat, pos, None, extra=control, **run)
    with pytest.raises(VideoForgeError, match="not a control model"):
        t2v.control_condition(parts["our_vae"], _images(3, FRAMES).permute(0, 2, 3, 1), None)
    with pytest.raises(VideoForgeError, match="InP model"):
        t2v.image_condition(parts["our_vae"], None, _images(4).permute(0, 2, 3, 1), None, FRAMES)
    # a Wan text encoder / VAE handed in where EasyAnimate's are needed
    with pytest.raises(VideoForgeError, match="EasyAnimate needs its MagVIT VAE"):
        inp.image_condition(type("V", (), {"family": "wan"})(), None, _images(4).permute(0, 2, 3, 1),
                            None, FRAMES)
    assert os.path.basename(parts["dits"]["t2v"][1]) in t2v.name


def test_nothing_is_kept_after_a_run(parts):
    """Memory returns to its baseline: once a run's objects are dropped, nothing in our code
    (caches, globals, hooks) still holds the transformer, the VAE or their outputs."""
    import gc
    import weakref
    model = _load(parts, "inp")
    vae = loader.load_video_vae(parts["dits"]["inp"][1].replace("dit_inp", "vae"), "fp32")
    cond = model.image_condition(vae, None, _images(21).permute(0, 2, 3, 1), None, FRAMES)
    _, shape, kw = _ours(parts, "inp", extra=cond)
    out = generate(model, torch.zeros(shape), **kw)
    video = vae.decode(out)
    assert video.shape == (1, 3, FRAMES, H, W)
    refs = [weakref.ref(o) for o in (model.dit, vae.vae, out, video, cond["inpaint"])]
    weights = weakref.ref(next(model.dit.parameters()))
    del model, vae, cond, out, video, kw
    gc.collect()
    assert all(r() is None for r in refs) and weights() is None
