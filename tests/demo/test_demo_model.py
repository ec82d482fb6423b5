"""The committed demo model (demo/train.py) does what its prompts ask.

For every colour x direction prompt, over 10 seeds, the clip generated with the shipped demo
workflow's settings (workflows/videoforge_demo_t2v.json) through our loaders, sampler and VAE
must show a blob of the asked colour whose centroid moves the asked way in at least 9 of 10
seeds. A sign error in the sampler, a wrong timestep scale, a broken text path or a VAE that
swaps channels each fails it: random or mis-wired weights give noise or one fixed video.
"""
from __future__ import annotations

import itertools
import json
import os

import pytest
import torch

from demo.data import COLORS, DIRECTIONS
from demo.semantics import analyse, colour_masks, parse_prompt
from demo.train import DIT_PATH, TE_PATH, VAE_PATH
from models.loader import load_text_encoder, load_video_model, load_video_vae
from models.sampling.video import generate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKFLOW = os.path.join(ROOT, "workflows", "videoforge_demo_t2v.json")
SEEDS = range(10)
# every colour x direction; the shape alternates so both shapes are asked for
PROMPTS = [f"a {c} {('circle', 'square')[i % 2]} moving {d}"
           for i, (c, d) in enumerate(itertools.product(COLORS, DIRECTIONS))]


def workflow_settings() -> dict:
    """The demo workflow's own widget values: the test checks what users get."""
    with open(WORKFLOW, encoding="utf-8") as f:
        nodes = {n["type"]: n["widgets_values"] for n in json.load(f)["nodes"]}
    width, height, frames, _ = nodes["VFEmptyVideoLatent"]
    _, _, steps, cfg, sampler, shift, denoise, karras = nodes["VFSampleVideo"]
    assert karras is False  # a flow model: no Karras sigmas
    return dict(width=width, height=height, frames=frames, steps=steps, cfg=cfg, solver=sampler,
                shift=shift, denoise=denoise, negative=nodes["VFEncodePrompt"][1])


@pytest.fixture(scope="module")
def demo():
    for p in (DIT_PATH, TE_PATH, VAE_PATH):
        assert os.path.isfile(p), f"{p} missing: the demo weights are committed (demo/train.py makes them)"
    return load_video_model(DIT_PATH), load_text_encoder(TE_PATH), load_video_vae(VAE_PATH)


def render(demo, prompt: str, seeds, s: dict) -> torch.Tensor:
    """-> frames [len(seeds), F, H, W, 3] in 0..1, as Decode Video gives them."""
    model, te, vae = demo
    pos, neg = te.encode([prompt]), te.encode([s["negative"]])
    shape = model.latent.shape(1, s["frames"], s["height"], s["width"])
    lat = torch.cat([generate(model, torch.zeros(shape), pos, neg, seed=seed, steps=s["steps"],
                              cfg=s["cfg"], solver=s["solver"], shift=s["shift"], denoise=s["denoise"])
                     for seed in seeds])
    return ((vae.decode(lat) + 1) / 2).permute(0, 2, 3, 4, 1)


def test_each_prompt_shows_its_colour_moving_its_way(demo):
    s = workflow_settings()
    rates, report = {}, []
    for prompt in PROMPTS:
        want = parse_prompt(prompt)
        videos = render(demo, prompt, SEEDS, s)
        tracks = [analyse(v) for v in videos]
        rates[prompt] = sum(t.matches(*want) for t in tracks)
        report.append(f"{prompt!r}: {rates[prompt]}/10  " + "; ".join(t.describe() for t in tracks))
    print("\n".join(report))
    failing = {p: r for p, r in rates.items() if r < 9}
    assert not failing, "prompts below 9/10 seeds:\n" + "\n".join(report)


def test_prompt_changes_the_video(demo):
    """Same seed, different prompts: the colour follows the prompt (the text path is live),
    and an unknown-word prompt does not crash."""
    s = workflow_settings()
    a = render(demo, "a red circle moving right", [3], s)[0]
    b = render(demo, "a blue circle moving right", [3], s)[0]
    assert colour_masks(a)["red"].sum() > 10 * max(1, colour_masks(a)["blue"].sum())
    assert colour_masks(b)["blue"].sum() > 10 * max(1, colour_masks(b)["red"].sum())
    render(demo, "a purple giraffe dancing", [0], s)  # words outside the vocabulary -> <unk>


def test_demo_files_are_the_real_layouts():
    """The three files are in the ComfyUI repackaged layouts real Wan users have."""
    from safetensors import safe_open

    with safe_open(DIT_PATH, "pt") as f:
        keys = set(f.keys())
        assert "model.diffusion_model.head.modulation" in keys
        assert f.get_tensor("model.diffusion_model.patch_embedding.weight").dtype == torch.float16
    with safe_open(TE_PATH, "pt") as f:
        keys = set(f.keys())
        assert {"spiece_model", "shared.weight", "encoder.embed_tokens.weight"} <= keys
        assert f.get_tensor("spiece_model").dtype == torch.uint8
    with safe_open(VAE_PATH, "pt") as f:
        assert "decoder.head.2.weight" in set(f.keys())
    total = sum(os.path.getsize(p) for p in (DIT_PATH, TE_PATH, VAE_PATH))
    assert total < 20e6, f"demo weights {total / 1e6:.1f} MB: keep them under 20 MB"
