"""Image-to-video and first-last-frame end to end: our loaders, CLIP vision, I2V conditioning and
sampler against diffusers' WanImageToVideoPipeline on the same tiny weights and noise."""
import os

import pytest
import torch

from models.common.clip_vision import preprocess
from models.common.errors import VideoForgeError
from models.loader import load_clip_vision, load_text_encoder, load_video_model, load_video_vae
from models.sampling import make_noise
from models.sampling.video import generate
from models.wan.i2v import frame_mask
from tests_fixtures import (CLIP_VISION_TINY, build_reference, hf_reference_tokenizer,
                            reference_clip_vision, reference_model, write_clip_vision, write_umt5,
                            write_wan_dit, write_wan_vae)

PROMPT, NEGATIVE = "a red circle moving right", "blurry, static"
FRAMES, H, W = 9, 32, 48
CLIP_TOKENS = (224 // CLIP_VISION_TINY["patch_size"]) ** 2 + 1


def smooth_image(seed: int) -> torch.Tensor:
    """IMAGE [1, H, W, 3] in 0..1 with large smooth structures."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 3, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(H, W), mode="bilinear").permute(0, 2, 3, 1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("i2v")
    hid = CLIP_VISION_TINY["hidden_size"]
    dim = 256  # tiny DiT width (2 heads x 128)
    out = {"te": write_umt5(str(d / "umt5.safetensors"), fmt="comfy", seed=3),
           "clip": str(d / "clip_vision_h.safetensors"), "vae": str(d / "vae.safetensors")}
    write_clip_vision(out["clip"], fmt="comfy", seed=5)
    write_wan_vae(out["vae"], dim=8, seed=6)
    for name, over in {"i2v": {}, "flf2v": {"pos_embed_seq_len": 2 * CLIP_TOKENS}}.items():
        out[name] = str(d / f"{name}.safetensors")
        out[name + "_ref"] = write_wan_dit(out[name], seed=4, in_channels=36, image_dim=hid,
                                           added_kv_proj_dim=dim, **over)
    return out


class OfficialWanPreprocess:
    """Stands in for the pipeline's CLIPImageProcessor: official Wan feeds CLIP the whole image
    resized to 224x224 (no crop), which is what we do; diffusers' default processor crops."""

    def __call__(self, images, return_tensors="pt"):
        from transformers import BatchFeature
        x = torch.cat(images if isinstance(images, list) else [images])  # [N, 3, H, W] in 0..1
        return BatchFeature({"pixel_values": preprocess(x.permute(0, 2, 3, 1))})


def _pipeline(files, dit_ref, shift):
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline
    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                    flow_shift=shift, num_train_timesteps=1000)
    return WanImageToVideoPipeline(tokenizer=hf_reference_tokenizer(files["te"]["spm_bytes"]),
                                   text_encoder=reference_model(files["te"]),
                                   vae=build_reference(8, 6), transformer=dit_ref, scheduler=sched,
                                   image_encoder=reference_clip_vision(5),
                                   image_processor=OfficialWanPreprocess())


@pytest.mark.parametrize("mode", ["i2v", "flf2v"])
def test_latent_matches_wan_i2v_pipeline(files, mode, monkeypatch):
    import diffusers.pipelines.wan.pipeline_wan_i2v as ref
    if not hasattr(ref, "ftfy"):  # optional dependency; a no-op on these plain-ASCII prompts
        monkeypatch.setattr(ref, "basic_clean", lambda text: text.strip())
    shift, steps, cfg, seed = 3.0, 5, 5.0, 7
    start = smooth_image(1)
    end = smooth_image(2) if mode == "flf2v" else None
    shape = (1, 16, (FRAMES - 1) // 4 + 1, H // 8, W // 8)
    noise = make_noise(shape, seed)

    pipe = _pipeline(files, files[mode + "_ref"], shift)
    as_chw = lambda im: im.permute(0, 3, 1, 2)  # noqa: E731  0..1, diffusers maps to [-1, 1]
    with torch.no_grad():
        want = pipe(image=as_chw(start), last_image=None if end is None else as_chw(end),
                    prompt=PROMPT, negative_prompt=NEGATIVE, height=H,
                    width=W, num_frames=FRAMES, num_inference_steps=steps, guidance_scale=cfg,
                    latents=noise.clone(), output_type="latent", return_dict=False)[0]

    model = load_video_model(files[mode])
    assert model.takes_images and model.dit.cfg.model_type == mode
    te = load_text_encoder(files["te"]["path"])
    cond = model.image_condition(load_video_vae(files["vae"]), load_clip_vision(files["clip"]),
                                 start, end, FRAMES)
    assert cond["y"].shape == (1, 20, *shape[2:])
    assert cond["clip"].shape == (1, CLIP_TOKENS * (1 if end is None else 2), CLIP_VISION_TINY["hidden_size"])
    pos, neg = te.encode([PROMPT]), te.encode([NEGATIVE])
    got = generate(model, torch.zeros(shape), pos, neg, seed=seed, steps=steps, cfg=cfg,
                   solver="unipc", shift=shift, extra=cond)
    err = ((got - want).abs().max() / want.abs().max()).item()
    print(f"WanImageToVideoPipeline {mode}: max rel err {err:.2e}")
    assert err <= 1e-3
    # the image really conditions the result
    other = model.image_condition(load_video_vae(files["vae"]), load_clip_vision(files["clip"]),
                                  smooth_image(9), end, FRAMES)
    moved = generate(model, torch.zeros(shape), pos, neg, seed=seed, steps=steps, cfg=cfg,
                     solver="unipc", shift=shift, extra=other)
    assert (moved - got).abs().max() > 100 * (got - want).abs().max()


def test_mask_layout_matches_official():
    """Official Wan: ones at frame 0 (and F-1), first frame repeated 4x, folded 4 per latent."""
    f, h, w = 13, 2, 3
    for end in (False, True):
        msk = torch.ones(1, f, h, w)
        msk[:, 1:-1 if end else None] = 0
        msk = torch.concat([torch.repeat_interleave(msk[:, 0:1], repeats=4, dim=1), msk[:, 1:]], dim=1)
        msk = msk.view(1, msk.shape[1] // 4, 4, h, w).transpose(1, 2)[0]
        assert torch.equal(frame_mask(f, h, w, end), msk)


def test_bad_inputs_are_named(files):
    t2v = os.path.join(os.path.dirname(files["i2v"]), "t2v.safetensors")
    write_wan_dit(t2v, seed=1)
    vae, clip = load_video_vae(files["vae"]), load_clip_vision(files["clip"])
    with pytest.raises(VideoForgeError, match="text-to-video model.*image-to-video model"):
        load_video_model(t2v).image_condition(vae, clip, smooth_image(1), None, FRAMES)
    i2v = load_video_model(files["i2v"])
    with pytest.raises(VideoForgeError, match="connect Load CLIP Vision"):
        i2v.image_condition(vae, None, smooth_image(1), None, FRAMES)
    with pytest.raises(VideoForgeError, match="frames=8"):
        i2v.image_condition(vae, clip, smooth_image(1), None, 8)
    flf = load_video_model(files["flf2v"])
    with pytest.raises(VideoForgeError, match="connect an end image"):
        flf.image_condition(vae, clip, smooth_image(1), None, FRAMES)
