"""End to end: prompt -> final latent through our loaders, text encoder and sampler against
diffusers' WanPipeline on the same tiny weights and the same initial noise."""
import pytest
import torch

from models.loader import load_text_encoder, load_video_model
from models.sampling import make_noise
from models.sampling.video import generate
from tests_fixtures import hf_reference_tokenizer, reference_model, write_umt5, write_wan_dit

PROMPT = "a red circle moving right"
NEGATIVE = "blurry, static"


def _schedulers(shift):
    from diffusers import (DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler,
                           UniPCMultistepScheduler)
    flow = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                num_train_timesteps=1000)
    return {
        "unipc": UniPCMultistepScheduler(**flow),
        "dpm++_2m": DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, **flow),
        "euler": FlowMatchEulerDiscreteScheduler(shift=shift),
    }


# WanPipeline's own scheduler is UniPC (as the official Wan code's default); the other solvers
# are compared step by step against their diffusers schedulers in test_sampler.py, because
# diffusers' Euler / DPM++ build different sigma schedules than set_timesteps(N) here.
@pytest.mark.parametrize("solver", ["unipc"])
def test_t2v_latent_matches_wan_pipeline(tmp_path, solver):
    from diffusers import AutoencoderKLWan, WanPipeline

    te_info = write_umt5(str(tmp_path / "umt5.safetensors"), fmt="comfy", seed=3)
    dit_ref = write_wan_dit(str(tmp_path / "dit.safetensors"), seed=4)
    shift, steps, cfg, seed = 3.0, 6, 5.0, 11
    # The VAE only maps frame counts to latent sizes here (output_type="latent").
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    pipe = WanPipeline(tokenizer=hf_reference_tokenizer(te_info["spm_bytes"]),
                       text_encoder=reference_model(te_info), transformer=dit_ref, vae=vae,
                       scheduler=_schedulers(shift)[solver])
    frames, h, w = 9, 32, 48
    shape = (1, 16, (frames - 1) // 4 + 1, h // 8, w // 8)
    noise = make_noise(shape, seed)
    with torch.no_grad():
        want = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=h, width=w, num_frames=frames,
                    num_inference_steps=steps, guidance_scale=cfg, latents=noise.clone(),
                    output_type="latent", return_dict=False)[0]

    te = load_text_encoder(te_info["path"])
    model = load_video_model(str(tmp_path / "dit.safetensors"))
    pos, neg = te.encode([PROMPT]), te.encode([NEGATIVE])
    got = generate(model, torch.zeros(shape), pos, neg, seed=seed, steps=steps, cfg=cfg,
                   solver=solver, shift=shift)
    err = ((got - want).abs().max() / want.abs().max()).item()
    print(f"WanPipeline {solver}: max rel err {err:.2e}")
    assert got.shape == want.shape
    assert err <= 1e-3
    # A different prompt must change the result (the conditioning is really used).
    other = generate(model, torch.zeros(shape), te.encode(["a blue square moving up"]), neg,
                     seed=seed, steps=steps, cfg=cfg, solver=solver, shift=shift)
    assert (other - got).abs().max() > 100 * (got - want).abs().max()
