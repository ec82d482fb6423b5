"""Whole AnimateDiff generation vs diffusers' AnimateDiffPipeline with the same initial noise.

One tiny SD1.5 single-file checkpoint (UNet + VAE + CLIP-L) and one motion module; ours loads
them through the loaders the nodes use and samples with `generate()`, the reference is
`AnimateDiffPipeline` built from the diffusers / transformers models the file was written from,
with the motion module's norms patched to the official AnimateDiff behaviour (see
test_animatediff_unet.py), the tokenizer ComfyUI ships, and the scheduler each solver stands for.
"""
from __future__ import annotations

import pytest
import torch

import tests_fixtures as fx
from models import loader
from models.animatediff.motion import MotionSet
from models.sampling.noise import noise_stream
from models.sampling.video import generate

FRAMES, H, W, STEPS, CFG, SEED = 6, 64, 64, 6, 7.5, 11
PROMPT, NEGATIVE = "a red fox running through snow", "blurry"
_ADCFG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", steps_offset=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("adpipe")
    ckpt, mm = str(d / "sd15_tiny.safetensors"), str(d / "mm_tiny_v2.safetensors")
    refs = fx.write_tiny_sd15_checkpoint(ckpt, seed=5)
    adapter = fx.write_tiny_motion_module(mm, seed=6, mid=True, pe_len=32)
    model, te, vae = loader.load_checkpoint(ckpt)
    model = model.with_motion(MotionSet(loader.load_motion_module(mm), "mm"), "linear")
    return refs, adapter, model, te, vae


def _scheduler(solver: str):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
    if solver == "ddim":  # AnimateDiff's own choice; "leading" spacing (see sampling/discrete.py)
        return DDIMScheduler(**_ADCFG, clip_sample=False, set_alpha_to_one=False,
                             timestep_spacing="leading")
    if solver == "euler":
        return EulerDiscreteScheduler(**_ADCFG)
    return DPMSolverMultistepScheduler(**_ADCFG, use_karras_sigmas=True, solver_order=2,
                                       algorithm_type="dpmsolver++")


@pytest.mark.parametrize("solver,karras", [("ddim", False), ("euler", False), ("dpm++_2m", True)])
def test_final_latent_matches_animatediff_pipeline(setup, solver, karras):
    from diffusers import AnimateDiffPipeline
    from transformers import CLIPTokenizer
    refs, adapter, model, te, vae = setup
    shape = (1, 4, FRAMES, H // 8, W // 8)
    noise = noise_stream(shape, SEED)()  # the first draw is generate()'s start noise
    sched = _scheduler(solver)
    pipe = AnimateDiffPipeline(vae=refs["vae"], text_encoder=refs["text_encoder"],
                               tokenizer=CLIPTokenizer.from_pretrained(fx.sd_clip_tokenizer_dir(), model_max_length=77),
                               unet=refs["unet"], motion_adapter=adapter, scheduler=sched)
    fx.official_motion_norms(pipe.unet)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        want = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, height=H, width=W,
                    num_inference_steps=STEPS, guidance_scale=CFG, latents=noise.clone(),  # scaled by init_noise_sigma inside
                    output_type="latent").frames
    pos, neg = te.encode([PROMPT]), te.encode([NEGATIVE])
    got = generate(model, torch.zeros(shape), pos, neg, seed=SEED, steps=STEPS, cfg=CFG,
                   solver=solver, karras=karras,
                   spacing="leading" if solver == "ddim" else None)
    assert want.shape == got.shape
    err = (got - want).abs().max().item()
    print(f"PARITY {solver} karras={karras}: max abs error {err:.2e}")  # pytest -s
    assert err <= 1e-3, err
    assert want.abs().mean() > 0.05  # a real latent, not a vanishing one


def test_part_loaders_take_their_part_of_the_checkpoint(setup, tmp_path_factory):
    """Load Video Model / VAE / Text Encoder accept the single-file checkpoint too, and give what
    Load SD Checkpoint gives; a checkpoint's part loaders refuse a motion module with advice."""
    from models.common.errors import VideoForgeError
    d = tmp_path_factory.mktemp("adparts")
    ckpt = str(d / "sd15_tiny.safetensors")
    fx.write_tiny_sd15_checkpoint(ckpt, seed=5)
    model, te, vae = loader.load_checkpoint(ckpt)
    m2, te2, vae2 = loader.load_video_model(ckpt), loader.load_text_encoder(ckpt), loader.load_video_vae(ckpt, "fp32")
    for a, b in ((model.unet, m2.unet), (vae.vae, vae2.vae)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(te.encode([PROMPT])["context"], te2.encode([PROMPT])["context"])
    mm = str(d / "mm.safetensors")
    fx.write_tiny_motion_module(mm, seed=6)
    with pytest.raises(VideoForgeError, match="motion module.*Apply Motion Module"):
        loader.load_video_vae(mm)
    with pytest.raises(VideoForgeError, match="Stable Diffusion 1.5 checkpoint.*not a motion module"):
        loader.load_motion_module(ckpt)
