"""The family registry (models/common/registry.py): the loader knows families only through it,
so one `register(...)` makes a new family's files recognised and loaded, with the loader's
usual wrong-part messages."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from models import loader
from models.common import registry
from models.common.errors import VideoForgeError


def test_builtin_families_in_detection_order():
    names = [f.name for f in registry.families()]
    assert names[:5] == ["wan", "common", "sd15", "easyanimate", "hunyuan"]
    parts = {(k.family, k.part) for k in registry.kinds()}
    for fam in ("wan", "easyanimate", "hunyuan"):
        assert {(fam, "model"), (fam, "vae"), (fam, "text_encoder")} <= parts
    assert ("sd15", "checkpoint") in parts and ("common", "clip_vision") in parts


def test_a_registered_family_is_detected_and_built(tmp_path):
    built = []

    def build(sd, name, dtype, path):
        built.append((sorted(sd), name, dtype, path))
        return "toy model"

    registry.register(registry.Family("toy", (
        registry.Kind("a Toy diffusion model", "model", lambda sd: "toy.embed.weight" in sd),
    ), {"model": build}))
    try:
        path = str(tmp_path / "toy.safetensors")
        save_file({"toy.embed.weight": torch.zeros(2, 2)}, path)
        assert loader.identify({"toy.embed.weight": torch.zeros(1)}) == ("a Toy diffusion model", "model")
        model_like = loader._build(path, "model", torch.float16)
        assert model_like == "toy model"
        assert built == [(["toy.embed.weight"], "toy.safetensors", torch.float16, path)]
        with pytest.raises(VideoForgeError, match="toy.safetensors is a Toy diffusion model, not a vae: "
                                                  "load it with Load Video Model"):
            loader.load_video_vae(path, "fp32")
    finally:
        registry._FAMILIES[:] = [f for f in registry._FAMILIES if f.name != "toy"]


def test_hunyuan_files_route_through_the_registry(tmp_path):
    """The HunyuanVideo registration: its DiT loads through Load Video Model's path, the LLM
    file alone is refused with what to do, and the two text-encoder files load together in
    either order."""
    import tests_fixtures as fx
    if fx.hy_llama_tokenizer_dir() is None:
        pytest.skip("ComfyUI's llama tokenizer not found (CI always has it)")
    dit = str(tmp_path / "hunyuan_video_t2v_720p_bf16.safetensors")
    fx.write_hunyuan_dit(dit, "t2v", layout="official")
    model = loader.load_video_model(dit, "auto")
    assert (model.family, model.variant.split("-")[0], model.latent.channels) == ("hunyuan", "t2v", 16)
    llama = str(tmp_path / "llava_llama3_fp16.safetensors")
    clip = str(tmp_path / "clip_l.safetensors")
    fx.hy_write_llama(llama, fx.hy_tiny_llama())
    fx.hy_write_clip_l(clip, fx.hy_tiny_clip())
    with pytest.raises(VideoForgeError, match="load both with Load Text Encoders"):
        loader.load_text_encoder(llama, "fp32")
    for a, b in ((llama, clip), (clip, llama)):
        te = loader.load_text_encoders(a, b, "fp32")
        out = te.encode(["a cat walks"])
        assert out["family"] == "hunyuan" and out["context"].shape[-1] == 256
        assert out["pooled"].shape[-1] == fx.hy_tiny_clip().config.hidden_size
    with pytest.raises(VideoForgeError, match="do not make a two-file text encoder"):
        loader.load_text_encoders(clip, clip, "fp32")
