"""Depth preprocessor: tiny transformers Depth-Anything / DPT-Hybrid models in the real file
layouts, batching, normalisation modes, clip-wise normalisation against flicker, bad files."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import tests_fixtures as fx
from models.common.errors import VideoForgeError
from models.preprocess import depth as D
from models.preprocess.frames import as_uint8_frames, to_image


@pytest.fixture(scope="module")
def da_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("depth")
    out = {}
    for layout in ("folder", "json", "metadata"):
        dest = str(root / "Depth-Anything-V2-Small-hf") if layout == "folder" else str(root / f"da_{layout}.safetensors")
        out[layout], ref = fx.write_tiny_depth(dest, "depth_anything", layout, seed=0)
    out["ref"] = ref
    out["dpt"], out["dpt_ref"] = fx.write_tiny_depth(str(root / "dpt-hybrid-midas"), "dpt_hybrid", "folder", seed=1)
    out["root"] = str(root)
    return out


def frames_rgb(n=3, h=40, w=60, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, h, w, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("layout", ["folder", "json", "metadata"])
def test_layouts_load_the_same_weights(da_files, layout):
    m = D.load_depth_model(da_files[layout])
    assert m.kind == "depth_anything" and m.multiple == 14 and m.square is None and not m.metric
    x = torch.randn(2, 3, 42, 70)
    with torch.no_grad():
        want = da_files["ref"](pixel_values=x).predicted_depth
        got = m.net(pixel_values=x).predicted_depth
    assert got.shape == want.shape == (2, 42, 70)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert m.mean == [0.485, 0.456, 0.406] and m.std == [0.229, 0.224, 0.225]


def test_dpt_hybrid_loads_and_runs_square(da_files):
    m = D.load_depth_model(da_files["dpt"])
    assert m.kind == "dpt" and m.square == 64 and m.mean == [0.5, 0.5, 0.5]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m.net(pixel_values=x).predicted_depth,
                                   da_files["dpt_ref"](pixel_values=x).predicted_depth, rtol=1e-5, atol=1e-5)
    assert m.network_size((48, 96)) == (64, 64)
    out = D.estimate_depth(m, frames_rgb(2, 30, 50), resolution=42)
    assert out.shape == (2, 30, 50) and float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_network_size_rule():
    m = D.DepthModel(net=None)
    assert m.network_size((512, 910)) == (518, 910)   # short side 512 -> 518 (37 x 14)
    assert m.network_size((518, 921)) == (518, 924)
    assert m.network_size((3, 5)) == (14, 14)


def test_outputs_sizes_ranges_and_batching(da_files):
    m = D.load_depth_model(da_files["folder"])
    f = frames_rgb(5, 40, 60)
    a = D.estimate_depth(m, f, resolution=56, batch_size=1, normalize="frame")
    b = D.estimate_depth(m, f, resolution=56, batch_size=3, normalize="frame")
    assert a.shape == (5, 40, 60) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for i in range(5):  # per frame: every frame spans 0..1
        assert abs(float(a[i].min())) < 1e-6 and abs(float(a[i].max()) - 1) < 1e-6
    det = D.estimate_depth(m, f, resolution=56, output="detection")
    assert det.shape == (5, 56, 84)
    calls = []
    D.estimate_depth(m, f, resolution=28, batch_size=2, callback=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_clip_normalisation_spans_the_clip_not_each_frame(da_files):
    m = D.load_depth_model(da_files["folder"])
    f = frames_rgb(4, 40, 60, seed=3)
    f[2] //= 4  # a dark frame: different raw range
    raw = D.estimate_depth(m, f, resolution=42, normalize="clip")
    assert abs(float(raw.min())) < 1e-6 and abs(float(raw.max()) - 1) < 1e-6
    per_frame_max = raw.reshape(4, -1).max(1).values
    per_frame_min = raw.reshape(4, -1).min(1).values
    assert (per_frame_max < 1 - 1e-3).any() or (per_frame_min > 1e-3).any()
    # clip == per frame re-normalised: the same picture up to an affine map per frame
    pf = D.estimate_depth(m, f, resolution=42, normalize="frame")
    for i in range(4):
        r = (raw[i] - raw[i].min()) / (raw[i].max() - raw[i].min())
        torch.testing.assert_close(r, pf[i], rtol=1e-4, atol=1e-4)


class BrightnessNet(torch.nn.Module):
    """A stand-in network whose 'depth' is the pixel brightness (bright = near)."""

    def forward(self, pixel_values):
        return SimpleNamespace(predicted_depth=pixel_values.mean(1))


def flicker_clip(n=8, h=42, w=56):
    """A static scene (a horizontal ramp) with a square whose brightness changes every frame."""
    ramp = np.tile(np.linspace(40, 160, w), (h, 1))
    frames = np.repeat(ramp[None, :, :, None], 3, -1).repeat(n, 0)
    for i in range(n):
        frames[i, 8:20, 8:20] = 170 + 10 * i   # the nearest thing, brighter each frame
    return frames.round().astype(np.uint8)


def test_clip_normalisation_removes_flicker():
    m = D.DepthModel(net=BrightnessNet(), mean=[0, 0, 0], std=[1, 1, 1])
    f = flicker_clip()
    static = (slice(None), slice(28, 42), slice(28, 56))  # far from the square
    per_frame = D.estimate_depth(m, f, resolution=42, normalize="frame")[static]
    clip = D.estimate_depth(m, f, resolution=42, normalize="clip")[static]
    # per-frame normalisation moves the static background with the square's brightness ...
    assert float((per_frame - per_frame[0]).abs().amax()) > 0.05
    # ... clip-wise normalisation keeps it still
    assert float((clip - clip[0]).abs().amax()) < 1e-5
    # and near is white: the bright square is the maximum
    full = D.estimate_depth(m, f, resolution=42, normalize="clip")
    assert float(full[-1, 8:20, 8:20].min()) == 1.0 > float(full[-1, 24:].max())


def test_metric_depth_is_inverted_so_near_is_white():
    m = D.DepthModel(net=BrightnessNet(), mean=[0, 0, 0], std=[1, 1, 1], metric=True)
    out = D.estimate_depth(m, flicker_clip(2), resolution=42, normalize="frame")
    assert float(out[1, 8:20, 8:20].max()) == 0.0  # the brightest (largest "metric") is black
    assert float(out[1, 24:, 0].min()) == 1.0  # the darkest background (smallest) is white


def test_normalize_depth_modes_and_constant_maps():
    d = torch.stack([torch.full((4, 4), 3.0), torch.arange(16.0).view(4, 4)])
    f = D.normalize_depth(d, "frame")
    assert torch.equal(f[0], torch.zeros(4, 4)) and float(f[1].max()) == 1.0
    c = D.normalize_depth(d, "clip")
    assert float(c[0, 0, 0]) == pytest.approx(3 / 15)
    with pytest.raises(VideoForgeError, match="normalize"):
        D.normalize_depth(d, "global")


def test_cache_reuses_the_model_per_file_and_dtype(da_files):
    D.clear_cache()
    a = D.cached_depth_model(da_files["json"])
    assert D.cached_depth_model(da_files["json"]) is a
    b = D.cached_depth_model(da_files["json"], torch.bfloat16)
    assert b is not a and next(b.net.parameters()).dtype == torch.bfloat16
    out = D.estimate_depth(b, frames_rgb(1), resolution=28, dtype=torch.bfloat16)
    assert out.dtype == torch.float32 and float(out.max()) == 1.0
    D.clear_cache()


def test_bad_files_give_clear_errors(da_files, tmp_path):
    with pytest.raises(VideoForgeError, match="not found"):
        D.load_depth_model(str(tmp_path / "missing.safetensors"))
    pth = tmp_path / "depth_anything_v2_vits.pth"
    torch.save({"w": torch.zeros(1)}, pth)
    with pytest.raises(VideoForgeError, match="-hf versions"):
        D.load_depth_model(str(pth))
    # weights without any config
    bare = str(tmp_path / "bare.safetensors")
    save_file(load_file(da_files["json"]), bare)
    with pytest.raises(VideoForgeError, match="no model config"):
        D.load_depth_model(bare)
    # a config of another kind of model
    other = str(tmp_path / "other.safetensors")
    save_file({"w": torch.zeros(2)}, other)
    with open(str(tmp_path / "other.json"), "w") as fh:
        json.dump({"model_type": "bert"}, fh)
    with pytest.raises(VideoForgeError, match="model_type is 'bert'"):
        D.load_depth_model(other)
    # Depth-Anything config with DPT weights
    mixed = str(tmp_path / "mixed.safetensors")
    save_file(load_file(da_files["dpt"]), mixed)
    with open(str(tmp_path / "mixed.json"), "w") as fh:
        json.dump(fx.tiny_depth_config("depth_anything"), fh)
    with pytest.raises(VideoForgeError, match="mixed.safetensors"):
        D.load_depth_model(mixed)
    # an interrupted download
    trunc = str(tmp_path / "trunc.safetensors")
    data = open(da_files["json"], "rb").read()
    open(trunc, "wb").write(data[: len(data) // 2])
    with open(str(tmp_path / "trunc.json"), "w") as fh:
        json.dump(fx.tiny_depth_config("depth_anything"), fh)
    with pytest.raises(VideoForgeError, match="truncated"):
        D.load_depth_model(trunc)
    m = D.DepthModel(net=BrightnessNet())
    with pytest.raises(VideoForgeError, match="normalize"):
        D.estimate_depth(m, frames_rgb(1), normalize="video")


def test_no_network_access_needed(da_files, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    m = D.load_depth_model(os.path.join(os.path.dirname(da_files["folder"]), "model.safetensors"))
    assert m.kind == "depth_anything"


def test_non_finite_frames_in_the_node_path(da_files):
    """The Depth node's input conversion (as_uint8_frames): NaN -> 0, +inf -> 255, -inf -> 0
    before the network; maps stay finite and equal the maps of the cleaned frames."""
    x, want = fx.nonfinite_frames(28, 42)
    frames = as_uint8_frames(x, "Depth images")
    assert np.array_equal(frames, want)
    assert (frames[0] == 0).all() and (frames[1] == 255).all() and (frames[2] == 0).all()
    m = D.load_depth_model(da_files["json"])
    for net in (m, D.DepthModel(net=BrightnessNet(), mean=[0, 0, 0], std=[1, 1, 1])):
        got = D.estimate_depth(net, frames, resolution=28, normalize="frame")
        assert got.shape == (4, 28, 42) and torch.isfinite(got).all()
        # identical uint8 frames through the identical calls: the same bits
        assert torch.equal(got, D.estimate_depth(net, want, resolution=28, normalize="frame"))
        assert torch.isfinite(to_image(got)).all()
    bright = D.estimate_depth(D.DepthModel(net=BrightnessNet(), mean=[0, 0, 0], std=[1, 1, 1]),
                              frames, resolution=28, normalize="clip")
    assert float(bright[1].min()) == 1.0 and float(bright[0].max()) == 0.0  # white = near, black = far
