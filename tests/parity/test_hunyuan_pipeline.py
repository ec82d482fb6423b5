"""HunyuanVideo text-to-video end to end: prompt -> final latent -> frames through our loaders,
text encoder, sampler and VAE against diffusers 0.42's `HunyuanVideoPipeline` on the same tiny
weights and the same initial noise.

Parts, written in the files users have and loaded through `models.loader` as the nodes do:
a tiny DiT (heads of 128, text width = the tiny Llama's 256, pooled width = the tiny CLIP's 32;
official names), the tiny VAE in ComfyUI's layout, the tiny llava-llama-3 (fp16 file) + CLIP-L
with the REAL tokenizers (ComfyUI's llama_tokenizer and sd1 CLIP tokenizer), as
test_hunyuan_text.py does. Ours: `generate(solver="euler", cfg=1, shift=7)` with the text
encoder's conditioning plus the embedded guidance `{"guidance": 6.0}`; the reference: the
pipeline with `FlowMatchEulerDiscreteScheduler(shift=7.0)`, `guidance_scale=6.0` (embedded,
passed x1000 to the transformer) and `true_cfg_scale` 1 (one pass per step).

The pipeline runs with its own schedule: it shifts `linspace(1, 0, steps + 1)[:-1]` (as the
official HunyuanVideo sampler and ComfyUI's "simple" scheduler do), which our sampler uses for
this family (`HunyuanVideoModel.flow_sigma_end = 0`; Wan / EasyAnimate end at 1/1000).
"""
from __future__ import annotations

import os

import pytest
import torch

import tests_fixtures as fx
from models import loader
from models.sampling.noise import make_noise
from models.sampling.schedules import flow_sigmas
from models.sampling.video import generate

LLAMA_TOK = fx.hy_llama_tokenizer_dir()
pytestmark = pytest.mark.skipif(LLAMA_TOK is None, reason="ComfyUI's comfy/text_encoders/llama_tokenizer not "
                                                          "found (set COMFYUI_DIR)")
CLIP_TOK = os.path.join(fx.hy_comfy_dir(), "comfy", "sd1_tokenizer") if LLAMA_TOK else None

PROMPT = "A cat walks on the grass, realistic style."
FRAMES, H, W, STEPS, SHIFT, GUIDANCE, SEED = 5, 32, 32, 4, 7.0, 6.0, 5
SHAPE = (1, 16, (FRAMES - 1) // 4 + 1, H // 8, W // 8)

# Tolerances (fp32 on both sides). The parts are each at float32 rounding of the reference
# (text: test_hunyuan_text.py, 1e-5 bound; DiT: ~4e-7 measured; VAE: <2.3e-5 absolute in
# [-1, 1]); the sampler adds only the rounding of the sigmas (ours shifted in float64 then
# rounded, diffusers in float32 numpy: 6e-8 here). Euler carries the velocity's error into the
# latent with weights (sigma - sigma_next) that sum to 1, so the latent error stays at the DiT's
# level. Measured: latent 1.4e-7 relative (1.8e-7 with kernels capped at AVX2), frames 2.5e-6
# (2.8e-6) absolute in [0, 1]. The bounds leave >= 18x for other CPUs and are >= 500x below what
# a real divergence changes: the pipeline's own schedule (sigmas 8e-4 apart) moves the latent by
# 5.3e-3 relative, another prompt or guidance 3.5 instead of 6 by ~4e-2.
LATENT_TOL = 1e-5   # max abs error / max |reference latent|
FRAMES_TOL = 5e-5   # max abs error of frames in [0, 1] (the VAE test's 1e-4 in [-1, 1], halved)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    from transformers import AutoTokenizer, CLIPTokenizer

    d = tmp_path_factory.mktemp("hy_pipe")
    llama, clip = fx.hy_tiny_llama(seed=21), fx.hy_tiny_clip(seed=22)
    llama_path, clip_path = str(d / "llava_llama3_fp16.safetensors"), str(d / "clip_l.safetensors")
    fx.hy_write_llama(llama_path, llama, "fp16", extra=True)
    fx.hy_write_clip_l(clip_path, clip)
    dit_path = str(d / "hunyuan_video_t2v_720p_bf16.safetensors")
    dit = fx.write_hunyuan_dit(dit_path, "t2v", "official", seed=23,
                               text_embed_dim=llama.config.hidden_size,
                               pooled_projection_dim=clip.config.hidden_size)
    vae_path = str(d / "hunyuan_video_vae_bf16.safetensors")
    vae = fx.write_hunyuan_vae(vae_path, layout="comfy", seed=24)["model"]
    return {
        "ref": dict(text_encoder=llama, tokenizer=AutoTokenizer.from_pretrained(LLAMA_TOK),
                    text_encoder_2=clip, tokenizer_2=CLIPTokenizer.from_pretrained(CLIP_TOK),
                    transformer=dit, vae=vae),
        "te": loader.load_text_encoders(llama_path, clip_path, "fp32"),
        "model": loader.load_video_model(dit_path, "fp32"),
        "vae": loader.load_video_vae(vae_path, "fp32"),
    }


def _pipeline(parts):
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

    pipe = HunyuanVideoPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT), **parts["ref"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _reference(parts, noise, sigmas=None, output_type="pt"):
    """(final latent, frames [B, 3, F, H, W] in [0, 1] or None, the scheduler's sigmas)."""
    pipe = _pipeline(parts)
    seen = {}

    def keep(pipe, i, t, kw):  # the latent after the last step, before the VAE
        seen["latents"] = kw["latents"].clone()
        return {}

    with torch.no_grad():
        out = pipe(prompt=PROMPT, height=H, width=W, num_frames=FRAMES, num_inference_steps=STEPS,
                   sigmas=sigmas, guidance_scale=GUIDANCE, true_cfg_scale=1.0, latents=noise.clone(),
                   output_type=output_type, return_dict=False, callback_on_step_end=keep,
                   callback_on_step_end_tensor_inputs=["latents"])[0]
    frames = None if output_type == "latent" else out.permute(0, 2, 1, 3, 4)  # [B, F, C, ...] -> [B, C, F, ...]
    return seen["latents"], frames, pipe.scheduler.sigmas.clone()


def _ours(parts, prompt=PROMPT, guidance=GUIDANCE):
    cond = {**parts["te"].encode([prompt]), "guidance": guidance}
    return generate(parts["model"], torch.zeros(SHAPE), cond, None, seed=SEED, steps=STEPS, cfg=1.0,
                    solver="euler", shift=SHIFT)


def _rel(a, b) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def test_t2v_matches_hunyuan_video_pipeline(parts):
    noise = make_noise(SHAPE, SEED)
    want, want_frames, ref_sigmas = _reference(parts, noise)   # the pipeline's own schedule
    ours_sigmas = flow_sigmas(STEPS, SHIFT, end=parts["model"].flow_sigma_end)
    serr = (ours_sigmas - ref_sigmas).abs().max().item()
    assert serr <= 1e-6, (ours_sigmas.tolist(), ref_sigmas.tolist())

    got = _ours(parts)
    assert got.shape == want.shape == SHAPE and got.dtype == torch.float32
    err = _rel(got, want)
    frames = parts["vae"].decode(got) * 0.5 + 0.5  # [-1, 1] -> the pipeline's [0, 1]
    assert frames.shape == want_frames.shape == (1, 3, FRAMES, H, W)
    ferr = (frames - want_frames).abs().max().item()
    # random weights must not saturate the [0, 1] clamp, or the frame comparison would be vacuous
    inside = ((want_frames > 0) & (want_frames < 1)).float().mean().item()
    print(f"\nHunyuanVideoPipeline euler shift {SHIFT}, {STEPS} steps, guidance {GUIDANCE}: sigma err {serr:.2e}; "
          f"latent max rel err {err:.2e} (max |ref| {want.abs().max():.3f}); frames max abs err {ferr:.2e} "
          f"({inside:.0%} of values inside (0, 1))")
    assert err <= LATENT_TOL and ferr <= FRAMES_TOL and inside > 0.5

    # Sensitivity: the prompt and the embedded guidance really steer the result, far beyond the
    # tolerance (the conditioning paths are not silently dropped).
    for kw in (dict(prompt="a blue square moving up"), dict(guidance=3.5)):
        diff = _rel(_ours(parts, **kw), want)
        print(f"  {kw}: latent max rel change {diff:.2e}")
        assert diff > 1000 * LATENT_TOL, kw
