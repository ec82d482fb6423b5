"""The official Tencent HunyuanVideo checkpoints load through the same loader entry points the
nodes call: `mp_rank_00_model_states.pt` (a torch.save'd dict whose "module" holds the DiT's
state dict, official names) and `vae/pytorch_model.pt` (the VAE's state dict, diffusers names),
both read with torch.load(weights_only=True). They hold the same weights as the safetensors
files, so the networks built from them are the same; anything pickled beyond tensors is refused.
"""
from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import load_file

import tests_fixtures as fx
from models import loader
from models.common.errors import VideoForgeError


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:  # copies of one file's values: exact (no arithmetic happened)
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def test_official_dit_checkpoint(tmp_path):
    st = tmp_path / "hunyuan_video_t2v_720p_bf16.safetensors"
    fx.write_hunyuan_dit(str(st), "t2v", "official", seed=3)
    pt = tmp_path / "mp_rank_00_model_states.pt"
    # the official file: DeepSpeed's dict, the weights under "module"
    torch.save({"module": load_file(str(st)), "dp_world_size": 1, "mp_world_size": 1}, pt)
    a, b = loader.load_video_model(str(st), "fp32"), loader.load_video_model(str(pt), "fp32")
    assert (b.family, b.variant) == (a.family, a.variant) == ("hunyuan", a.variant)
    _same(a.net, b.net)


def test_official_vae_checkpoint(tmp_path):
    st = tmp_path / "hunyuan_video_vae_bf16.safetensors"
    sd = fx.write_hunyuan_vae(str(st), layout="diffusers", seed=4)["state_dict"]
    pt = tmp_path / "pytorch_model.pt"
    torch.save(sd, pt)
    a, b = loader.load_video_vae(str(st), "fp32"), loader.load_video_vae(str(pt), "fp32")
    assert b.family == a.family == "hunyuan"
    _same(a.vae, b.vae)


def test_pickled_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pickle ran",))

    pt = tmp_path / "mp_rank_00_model_states.pt"
    with open(pt, "wb") as f:
        pickle.dump({"module": Payload()}, f)
    with pytest.raises(VideoForgeError, match="mp_rank_00_model_states.pt"):
        loader.load_video_model(str(pt), "fp32")
