"""Shared pure-torch pieces: checkpoint reading, ops, attention, rope, latent formats."""
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from models.common import ops
from models.common.attention import attention
from models.common.checkpoint import load_state_dict, strip_prefix
from models.common.errors import VideoForgeError
from models.common.family import LatentFormat, check_same_family
from models.common.rope import apply_rope, axes_split, nd_rope_complex


def test_safetensors_roundtrip_and_truncation(tmp_path):
    p = str(tmp_path / "a.safetensors")
    save_file({"w": torch.arange(1000.0)}, p)
    assert torch.equal(load_state_dict(p)["w"], torch.arange(1000.0))
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) - 100])
    with pytest.raises(VideoForgeError, match="truncated"):
        load_state_dict(p)
    open(p, "wb").write(b"\x00\x01")
    with pytest.raises(VideoForgeError, match="not a safetensors"):
        load_state_dict(p)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pth_is_weights_only(tmp_path):
    good, bad = str(tmp_path / "good.pth"), str(tmp_path / "bad.pth")
    torch.save({"state_dict": {"w": torch.ones(2)}}, good)
    assert torch.equal(load_state_dict(good)["w"], torch.ones(2))
    torch.save({"w": torch.ones(2), "x": Evil()}, bad, pickle_module=pickle)
    with pytest.raises(VideoForgeError, match="weights-only"):
        load_state_dict(bad)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(VideoForgeError, match="not found"):
        load_state_dict(str(tmp_path / "nope.safetensors"))
    p = tmp_path / "x.gguf"
    p.write_bytes(b"1234")
    with pytest.raises(VideoForgeError, match="unsupported file type"):
        load_state_dict(str(p))


def test_strip_prefix_only_when_most_keys_have_it():
    sd = {"model.diffusion_model.a": 1, "model.diffusion_model.b": 2, "vae.c": 3}
    assert strip_prefix(sd, ["model.diffusion_model."]) == {"a": 1, "b": 2}
    assert strip_prefix({"a": 1, "x.b": 2, "c": 3}, ["x."]) == {"a": 1, "x.b": 2, "c": 3}


def test_fp8_linear_with_scale_computes_in_input_dtype():
    lin = ops.Linear(8, 4)
    w = torch.randn(4, 8)
    scale = w.abs().max() / 448
    sd = {"weight": (w / scale).to(torch.float8_e4m3fn), "bias": torch.zeros(4),
          "scale_weight": scale}
    ops.load_weights(lin, sd, "test")
    assert lin.weight.dtype == torch.float8_e4m3fn
    x = torch.randn(3, 8)
    y = lin(x)
    assert y.dtype == torch.float32
    assert (y - x @ w.T).abs().max() < 0.1 * (x @ w.T).abs().max()


def test_load_weights_names_the_problem():
    lin = ops.Linear(8, 4)
    with pytest.raises(VideoForgeError, match="missing 1 keys.*bias"):
        ops.load_weights(lin, {"weight": torch.zeros(4, 8)}, "f.safetensors")
    with pytest.raises(VideoForgeError, match="shape mismatches"):
        ops.load_weights(lin, {"weight": torch.zeros(4, 9), "bias": torch.zeros(4)}, "f")


def test_attention_matches_naive_and_mask():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 3, 8, generator=g) for _ in range(3))
    out = attention(q, k, v, backend="sdpa")
    w = torch.softmax(torch.einsum("blhd,bmhd->bhlm", q, k) / 8 ** 0.5, -1)
    ref = torch.einsum("bhlm,bmhd->blhd", w, v).flatten(2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    masked = attention(q, k, v, mask=mask)
    torch.testing.assert_close(masked[1], attention(q[1:], k[1:, :2], v[1:, :2])[0], atol=1e-5, rtol=0)
    with pytest.raises(VideoForgeError, match="backend"):
        attention(q, k, v, backend="xformers")


def test_rope_split_and_rotation_preserve_norm():
    assert axes_split(128) == (44, 42, 42)
    f = nd_rope_complex((2, 3, 4), axes_split(128), 10000.0, torch.float64)[:, None]
    assert f.shape == (24, 1, 64)
    x = torch.randn(1, 24, 2, 128)
    y = apply_rope(x, f)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[:, 0], x[:, 0])  # position (0, 0, 0) is not rotated


def test_latent_format_checks_and_shapes():
    fmt = LatentFormat()
    assert fmt.shape(1, 81, 480, 832) == (1, 16, 21, 60, 104)
    with pytest.raises(VideoForgeError, match="frames=80.*77 or 81"):
        fmt.check(80, 480, 832)
    with pytest.raises(VideoForgeError, match="width=100.*96 or 112"):
        fmt.check(81, 480, 100)
    assert fmt.pixel_frames(fmt.latent_frames(33)) == 33


def test_family_mismatch_is_named():
    check_same_family(model="wan", vae="wan")
    with pytest.raises(VideoForgeError, match="model is wan, vae is hunyuan"):
        check_same_family(model="wan", vae="hunyuan")


def test_mmap_reader_matches_safetensors_for_every_dtype(tmp_path):
    from safetensors.torch import load_file
    p = str(tmp_path / "all.safetensors")
    g = torch.Generator().manual_seed(0)
    sd = {f"t_{dt}".replace("torch.", ""): (torch.randn(3, 5, generator=g) * 10).to(dt)
          for dt in (torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn,
                     torch.int64, torch.uint8, torch.bool, torch.float64)}
    sd["scalar"] = torch.tensor(2.5)
    sd["empty"] = torch.empty(0, 4)
    save_file(sd, p, metadata={"format": "pt"})
    ours, ref = load_state_dict(p), load_file(p)
    assert ours.keys() == ref.keys()
    for k in ref:
        assert ours[k].dtype == ref[k].dtype and ours[k].shape == ref[k].shape
        assert torch.equal(ours[k].reshape(-1).view(torch.uint8), ref[k].reshape(-1).view(torch.uint8)), k
    ours["t_float32"].add_(1)  # copy-on-write: the file is never modified
    assert torch.equal(load_state_dict(p)["t_float32"], ref["t_float32"])


def test_any_shard_loads_the_whole_sharded_checkpoint(tmp_path):
    a, b = (str(tmp_path / f"diffusion_pytorch_model-0000{i}-of-00002.safetensors") for i in (1, 2))
    save_file({"x": torch.ones(2)}, a)
    with pytest.raises(VideoForgeError, match="shard 1 of 2; missing"):
        load_state_dict(a)
    save_file({"y": torch.zeros(3)}, b)
    for p in (a, b, str(tmp_path)):
        assert sorted(load_state_dict(p)) == ["x", "y"]
