"""The committed demo model (demo/train.py) does what its prompts ask.

For every colour x direction prompt, over 10 seeds, the clip generated with the shipped demo
workflow's settings (workflows/videoforge_demo_t2v.json) through our loaders, sampler and VAE
must show a blob of the asked colour whose centroid moves the asked way in at least 9 of 10
seeds. A sign error in the sampler, a wrong timestep scale, a broken text path or a VAE that
swaps channels each fails it: random or mis-wired weights give noise or one fixed video.

Users type prompts the captions never had ("A blue circle moving right."): the demo tokenizer
normalises case, punctuation, quotes and spaces away (demo/train.py `demo_normalization_rules`),
so each spelling gets the caption's ids (checked for every caption and spelling, fast), and one
spelled-out variant per colour x direction does what it asks on 10 other seeds (10..19).
"""
from __future__ import annotations

import itertools
import json
import os

import pytest
import torch

from demo.data import COLORS, DIRECTIONS
from demo.semantics import analyse, colour_masks, parse_prompt
from demo.train import CAPTIONS, DIT_PATH, TE_PATH, VAE_PATH, train_tokenizer
from models.loader import load_text_encoder, load_video_model, load_video_vae
from models.sampling.video import generate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKFLOW = os.path.join(ROOT, "workflows", "videoforge_demo_t2v.json")
SEEDS = range(10)
# every colour x direction; the shape alternates so both shapes are asked for
PROMPTS = [f"a {c} {('circle', 'square')[i % 2]} moving {d}"
           for i, (c, d) in enumerate(itertools.product(COLORS, DIRECTIONS))]
# How people write a caption: each must mean exactly what the caption does.
SPELLINGS = [
    lambda p: f"'{p}'",
    lambda p: p + "!",
    lambda p: p.replace(" moving", ", moving") + ",",
    lambda p: p.upper(),
    lambda p: p.title() + "?",
    lambda p: "  " + p.replace(" ", "   ") + "  ",
    lambda p: f'"{p}"',
    lambda p: f"\u201c{p}.\u201d",            # “...”
    lambda p: p + ".",                        # (blue circle right: the prompt)
    lambda p: f"\u2018{p}!\u2019",            # ‘...’
    lambda p: p.capitalize() + ";",
    lambda p: p.replace(" moving ", ": moving ") + ":",
    lambda p: p.capitalize().replace(" ", "\t") + "...\n",
    lambda p: f"\u00ab{p}\u00bb \u2026",      # «...» …
    lambda p: p.upper().replace("A ", "\uff21 ") + "\uff01",   # fullwidth Ａ, ！
    lambda p: "(" + p.replace(" moving", ") - (moving") + ")",
    lambda p: f"&quot;{p}&quot;",             # HTML-escaped quotes (the prompt cleaner unescapes)
]
# one spelled-out variant per colour x direction, on seeds the plain prompts do not use
VARIANT_SEEDS = range(10, 20)
VARIANTS = [SPELLINGS[i % len(SPELLINGS)](p) for i, p in enumerate(PROMPTS)]


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


def test_prompt_spellings_do_the_same(demo):
    """Capitals, trailing punctuation, quotes and extra spaces: still the asked colour moving
    the asked way, on seeds the test above does not use."""
    s = workflow_settings()
    rates, report = {}, []
    for prompt in VARIANTS:
        want = parse_prompt(prompt)
        tracks = [analyse(v) for v in render(demo, prompt, VARIANT_SEEDS, s)]
        rates[prompt] = sum(t.matches(*want) for t in tracks)
        report.append(f"{prompt!r}: {rates[prompt]}/10  " + "; ".join(t.describe() for t in tracks))
    print("\n".join(report))
    failing = {p: r for p, r in rates.items() if r < 9}
    assert not failing, "prompts below 9/10 seeds:\n" + "\n".join(report)


def committed_spm() -> bytes:
    from safetensors import safe_open

    with safe_open(TE_PATH, "pt") as f:
        return f.get_tensor("spiece_model").numpy().tobytes()


def demo_tokenizer(spm_bytes: bytes):
    """The tokenizer the text-encoder loader builds from these `spiece_model` bytes."""
    from models.wan.text_encoder import UMT5Tokenizer

    return UMT5Tokenizer(spm_bytes=spm_bytes, source=TE_PATH)


def test_tokenizer_ignores_case_punctuation_quotes_and_spaces():
    """Every caption, in every spelling, gives the caption's ids; words outside the vocabulary
    stay <unk> (the normaliser does not make everything match)."""
    tok = demo_tokenizer(committed_spm())
    unk = 2  # T5's
    wrong = []
    for caption in CAPTIONS:
        ids = tok.encode(caption)
        assert unk not in ids and len(ids) == len(caption.split()) + 1, (caption, ids)
        wrong += [(v, tok.encode(v), ids) for v in (f(caption) for f in SPELLINGS) if tok.encode(v) != ids]
    assert not wrong, "spellings with other ids than their caption:\n" + "\n".join(map(repr, wrong))
    assert tok.encode("a red circle moving right") != tok.encode("a red circle moving left")
    assert tok.encode("a purple circle moving right.")[1] == unk
    assert tok.encode("It's a red square")[:2] == [unk, tok.encode("a")[0]]  # "it s": one merged <unk>


def test_train_builds_the_committed_tokenizer():
    """demo/train.py's `train_tokenizer` makes the tokenizer the text encoder ships with: the
    same pieces (the embeddings' ids) and the same normalisation of every BMP character."""
    import sentencepiece

    from demo.train import spm_pieces

    built, shipped = train_tokenizer(CAPTIONS), committed_spm()
    assert spm_pieces(built) == spm_pieces(shipped)
    every_char = " ".join(chr(c) for c in range(0x20, 0x10000) if not 0xD800 <= c <= 0xDFFF)
    ours, theirs = (sentencepiece.SentencePieceProcessor(model_proto=b) for b in (built, shipped))
    assert ours.normalize(every_char) == theirs.normalize(every_char)
    for text in CAPTIONS + VARIANTS + ["a purple giraffe, dancing!", "\uff32\uff25\uff24 \u00c9t\u00e9"]:
        assert ours.encode(text) == theirs.encode(text), text


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
