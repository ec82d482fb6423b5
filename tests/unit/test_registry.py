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
    assert names[:4] == ["wan", "common", "sd15", "easyanimate"]
    parts = {(k.family, k.part) for k in registry.kinds()}
    for fam in ("wan", "easyanimate"):
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
