"""Canny preprocessor and the shared frame handling (sizes, RGBA / gray, bad batches)."""
import numpy as np
import pytest
import torch

import tests_fixtures as fx
from models.common.errors import VideoForgeError
from models.preprocess.canny import canny, canny_images
from models.preprocess.frames import (as_uint8_frames, detection_size, output_size, resize_binary,
                                      to_image)


def rect_frame(h=64, w=64, box=(16, 48, 20, 40), color=(255, 255, 255), bg=(0, 0, 0)):
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = bg
    y0, y1, x0, x1 = box
    img[y0:y1, x0:x1] = color
    return img


def expected_ring(h, w, box):
    """OpenCV's Canny puts a step edge on the pixel before the step (the lower index) on both
    axes: rows y0-1 and y1-1, columns x0-1 and x1-1. Corners are left out of the comparison."""
    y0, y1, x0, x1 = box
    exp = np.zeros((h, w), np.uint8)
    exp[y0 - 1, x0 - 1:x1] = 1
    exp[y1 - 1, x0 - 1:x1] = 1
    exp[y0 - 1:y1, x0 - 1] = 1
    exp[y0 - 1:y1, x1 - 1] = 1
    care = np.ones((h, w), bool)
    for y in (y0 - 1, y1 - 1):
        for x in (x0 - 1, x1 - 1):
            care[max(0, y - 2):y + 3, max(0, x - 2):x + 3] = False
    return exp, care


def test_rectangle_matches_expected_edge_map():
    box = (16, 48, 20, 40)
    frames = rect_frame(box=box)[None]
    out = canny(frames, 100, 200, resolution=64)
    assert out.shape == (1, 64, 64) and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 255}
    exp, care = expected_ring(64, 64, box)
    got = out[0] // 255
    assert np.array_equal(got[care], exp[care]), np.argwhere((got != exp) & care)[:10]
    # each corner is joined (some edge pixel in its neighbourhood) and nothing far from the box
    for y in (15, 47):
        for x in (19, 39):
            assert got[y - 2:y + 3, x - 2:x + 3].any()
    assert not got[:13].any() and not got[51:].any() and not got[:, :17].any() and not got[:, 42:].any()


def test_edges_come_from_the_colour_image_not_gray():
    # red on green with (almost) the same luminance: no edge in gray, a full edge in colour
    box = (16, 48, 20, 40)
    frames = rect_frame(box=box, color=(255, 0, 0), bg=(0, 130, 0))[None]
    gray = np.repeat((frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114]))[..., None], 3, -1)
    assert canny(gray.round().astype(np.uint8), 100, 200, resolution=64).sum() == 0
    got = canny(frames, 100, 200, resolution=64)[0] // 255
    exp, care = expected_ring(64, 64, box)
    assert np.array_equal(got[care], exp[care])


def test_thresholds_are_low_high_hysteresis():
    # a vertical step of 40 gives an L1 Sobel magnitude of 160 along the whole edge
    f = np.zeros((1, 32, 48, 3), np.uint8)
    f[:, :, 24:] = 40
    assert canny(f, 100, 200, resolution=32).sum() == 0          # 160 < high: no seed
    edge = canny(f, 100, 150, resolution=32)[0] // 255            # 160 >= high: a full line
    assert edge[:, 23].all() and edge.sum() == 32
    with pytest.raises(VideoForgeError, match="low threshold"):
        canny(f, 200, 100, resolution=32)


def test_blur_removes_texture_edges():
    rng = np.random.default_rng(0)
    f = (rng.random((1, 96, 96, 3)) * 255).astype(np.uint8)
    sharp = canny(f, 100, 200, resolution=96).sum()
    soft = canny(f, 100, 200, resolution=96, blur=2.0).sum()
    assert soft < sharp / 4, (sharp, soft)


def test_output_size_input_or_detection_and_binary():
    box = (24, 72, 40, 120)
    f = rect_frame(96, 160, box)[None]
    det = detection_size(96, 160, 64)
    assert det == (64, 107)  # short side 64, 160 * 64 / 96 = 106.7 -> 107
    a = canny(f, 100, 200, resolution=64, output="detection")
    b = canny(f, 100, 200, resolution=64, output="input")
    assert a.shape == (1, 64, 107) and b.shape == (1, 96, 160)
    assert set(np.unique(b)) <= {0, 255}
    # enlarged back from the detection size: the outline is still a closed line around the box
    e = b[0] > 0
    for y in range(box[0] + 4, box[1] - 4):
        assert e[y, box[2] - 4:box[2] + 3].any() and e[y, box[3] - 4:box[3] + 3].any(), y
    # detection above the input size, then shrunk back: still closed
    c = canny(f, 100, 200, resolution=150, output="input")[0] > 0
    assert c.shape == (96, 160)
    for y in range(box[0] + 4, box[1] - 4):
        assert c[y, box[2] - 3:box[2] + 2].any() and c[y, box[3] - 3:box[3] + 2].any(), y


def test_resize_binary_keeps_thin_lines():
    m = np.zeros((100, 100), np.uint8)
    m[:, 37] = 255
    for size in ((51, 51), (94, 94), (70, 60)):
        r = resize_binary(m, size)
        assert set(np.unique(r)) == {0, 255}
        assert (r > 0).any(axis=1).all(), size  # the line survives on every row


def test_batch_order_progress_and_interrupt():
    frames = np.stack([rect_frame(box=(8 + i, 40 + i, 10 + 2 * i, 50)) for i in range(12)])
    calls = []
    out = canny(frames, 100, 200, resolution=64, callback=lambda d, t: calls.append((d, t)))
    assert calls == [(i + 1, 12) for i in range(12)]
    # frame i's map is its own (threads keep the order). Exact: the same uint8 frame through the
    # same OpenCV calls (no resize here; Canny is integer Sobel + hysteresis), whatever thread runs it
    for i in range(12):
        assert np.array_equal(out[i], canny(frames[i:i + 1], 100, 200, resolution=64, workers=1)[0])
    assert len({out[i].tobytes() for i in range(12)}) == 12

    class Stop(Exception):
        pass

    seen = []

    def interrupt(done, total):
        seen.append(done)
        if done == 3:
            raise Stop()
    with pytest.raises(Stop):
        canny(frames, 100, 200, resolution=64, callback=interrupt)
    assert seen == [1, 2, 3]


def test_frames_conversion_rgba_gray_and_ranges():
    x = torch.zeros(2, 8, 8, 4)
    x[..., 0] = 1.0          # red ...
    x[0, ..., 3] = 1.0       # opaque in frame 0
    x[1, ..., 3] = 0.0       # fully transparent in frame 1 -> white
    u = as_uint8_frames(x)
    assert u.shape == (2, 8, 8, 3) and u.dtype == np.uint8
    assert (u[0] == [255, 0, 0]).all() and (u[1] == 255).all()
    g = as_uint8_frames(torch.full((1, 4, 5, 1), 0.5))
    assert g.shape == (1, 4, 5, 3) and (g == 128).all()
    g2 = as_uint8_frames(torch.full((1, 4, 5), 0.25))
    assert g2.shape == (1, 4, 5, 3) and (g2 == 64).all()
    weird = torch.tensor([[[[float("nan"), -1.0, 2.0], [float("inf"), float("-inf"), 0.5]]]])
    assert as_uint8_frames(weird).tolist() == [[[[0, 0, 255], [255, 0, 128]]]]
    img = to_image(np.array([[[0, 255]]], np.uint8))
    assert img.shape == (1, 1, 2, 3) and img.dtype == torch.float32 and img[0, 0, 1].tolist() == [1, 1, 1]


def test_non_finite_pixels_are_defined():
    """NaN -> 0, +inf -> 255, -inf -> 0 (clamped before any cast, so the same on every CPU: a
    NaN cast to uint8 is 0 on x86 and 255 elsewhere), for whole frames and single pixels."""
    x, want = fx.nonfinite_frames()
    keep = x.clone()
    u = as_uint8_frames(x)
    assert np.array_equal(u, want)
    assert (u[0] == 0).all() and (u[1] == 255).all() and (u[2] == 0).all()
    assert (u[3, 2:10, 2:14] == 0).all() and (u[3, 2:10, 18:30] == 255).all()   # NaN, +inf blocks
    assert (u[3, 14:22, 2:14] == 0).all()                                          # -inf block
    assert (u[3, 14:22, 18:30, :2] == [255, 0]).all()                              # 3.0, -2.0
    assert (u[3, 23] == [0, 255, 0]).all()                                         # NaN, +inf, -inf
    assert torch.equal(x.isnan(), keep.isnan()) and torch.equal(x.nan_to_num(), keep.nan_to_num())  # untouched
    # other float dtypes: the same rule (a finite float64 beyond float32 is just "above 1")
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        assert np.array_equal(as_uint8_frames(x.to(dt))[:3], want[:3]), dt
    big = torch.tensor([[[[1e300, -1e300, float("nan")]]]], dtype=torch.float64)
    assert as_uint8_frames(big).tolist() == [[[[255, 0, 0]]]]
    # RGBA: channels (alpha included) cleaned first, then composited over white
    nan, inf = float("nan"), float("inf")
    rgba = torch.tensor([[[[1.0, 0.0, 0.0, nan],      # NaN alpha -> 0: transparent -> white
                           [nan, 1.0, nan, 1.0],      # NaN colour, opaque -> 0
                           [nan, nan, nan, 0.0],      # NaN colour, transparent -> white
                           [inf, -inf, 0.0, 0.5],     # inf colour half transparent: 1, 0.5, 0.5
                           [0.0, 0.0, 1.0, inf]]]])   # +inf alpha -> opaque
    assert as_uint8_frames(rgba).tolist() == [[[[255, 255, 255], [0, 255, 0], [255, 255, 255],
                                                [255, 128, 128], [0, 0, 255]]]]
    # Canny (the IMAGE entry converts per frame in its workers): the maps of the cleaned frames
    got = canny_images(x, 100, 200, resolution=24)
    assert torch.isfinite(got).all() and got[:3].sum() == 0 and got[3].sum() > 0
    assert torch.equal(got, to_image(canny(want, 100, 200, resolution=24)))  # same uint8 frames, same calls


@pytest.mark.parametrize("bad, words", [
    (torch.zeros(0, 64, 64, 3), "empty"),
    (torch.zeros(1, 64, 64, 2), "channels"),
    (torch.zeros(64, 64), "shape"),
    ("not an image", "IMAGE"),
])
def test_bad_batches_give_clear_errors(bad, words):
    with pytest.raises(VideoForgeError, match=words):
        as_uint8_frames(bad)


def test_small_frames_are_handled_at_their_own_size():
    f = rect_frame(20, 30, (5, 15, 8, 22))[None]
    out = canny(f, 100, 200, resolution=64)  # detected at 64 x 96, returned at 20 x 30
    assert out.shape == (1, 20, 30) and out.any()
    assert canny(f, 100, 200, resolution=64, output="detection").shape == (1, 64, 96)


def test_sizes_and_limits():
    assert detection_size(480, 832, 512) == (512, 887)
    assert detection_size(1080, 1920, 512) == (512, 910)
    assert output_size(480, 832, 512, "input") == (480, 832)
    with pytest.raises(VideoForgeError, match="long side"):
        detection_size(2, 4000, 512)
    with pytest.raises(VideoForgeError, match="output size"):
        output_size(10, 10, 64, "big")


def test_image_batch_entry_matches_uint8_path():
    rng = np.random.default_rng(1)
    imgs = torch.from_numpy(rng.random((5, 40, 56, 3)).astype(np.float32))
    imgs[2, 10:30, 10:40] = 1.0
    # Exact: both paths convert with the same elementwise frame_to_uint8, then make the same
    # OpenCV calls (resize, GaussianBlur, Canny, resize back) on identical uint8 frames; only the
    # thread differs, and OpenCV computes each output pixel by the same sequence of operations
    # whichever thread or stripe it falls in. No two different kernels are compared.
    for output in ("input", "detection"):
        want = to_image(canny(as_uint8_frames(imgs), 50, 120, resolution=48, output=output, blur=0.8))
        got = canny_images(imgs, 50, 120, resolution=48, output=output, blur=0.8)
        assert got.dtype == torch.float32 and got.is_contiguous() and torch.equal(got, want)
    assert got.shape == (5, 48, 67, 3) and set(got.unique().tolist()) == {0.0, 1.0}
    with pytest.raises(VideoForgeError, match="empty"):
        canny_images(torch.zeros(0, 8, 8, 3))
