"""The preprocessors' optional packages (OpenCV, onnxruntime): imported when a preprocessor runs,
never at module level, and a missing one gives a VideoForgeError that says what to install.
(tests/comfy/test_optional_deps.py checks the same in a ComfyUI without them.)"""
import ast
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from models.common.errors import VideoForgeError
from models.preprocess import _deps
from models.preprocess import depth as D
from models.preprocess import dwpose as W
from models.preprocess import frames as F
from models.preprocess.canny import canny, canny_images

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable
INSTALL = os.path.join(ROOT, "install.py")


@pytest.fixture
def hide(monkeypatch):
    """hide("cv2", ...): `import cv2` raises ModuleNotFoundError (name "cv2"), as when absent."""
    def _hide(*names):
        for n in names:
            monkeypatch.setitem(sys.modules, n, None)
    return _hide


def test_missing_module_message_names_the_pip_line(hide):
    hide("cv2")
    with pytest.raises(VideoForgeError) as e:
        _deps.require("Canny Edges (video)", "cv2")
    assert str(e.value) == (
        f"Canny Edges (video) needs OpenCV (module cv2), which is not installed in the Python that "
        f"runs ComfyUI ({PY}): run `{PY} {INSTALL}` (installs all of VideoForge's requirements) or "
        f"`{PY} -m pip install opencv-python-headless`, then restart ComfyUI.")
    assert isinstance(e.value.__cause__, ModuleNotFoundError)


def test_several_missing_modules_in_one_message(hide):
    hide("cv2", "onnxruntime")
    with pytest.raises(VideoForgeError) as e:
        _deps.require("OpenPose (DWPose, video)", "numpy", "cv2", "onnxruntime")
    msg = str(e.value)
    assert msg.startswith("OpenPose (DWPose, video) needs OpenCV (module cv2) and onnxruntime, "
                          "which are not installed")
    assert f"`{PY} -m pip install opencv-python-headless onnxruntime`" in msg
    assert "onnxruntime-gpu" in msg and "numpy" not in msg
    assert _deps.require("x", "numpy") is np and _deps.require("x", "numpy", "torch") == (np, torch)


def test_installed_but_broken_module(tmp_path, monkeypatch):
    (tmp_path / "vf_broken_ext.py").write_text(
        "raise ImportError('libGL.so.1: cannot open shared object file: No such file or directory')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(VideoForgeError) as e:
        _deps.require("Canny Edges (video)", "vf_broken_ext")
    msg = str(e.value)
    assert "installed but fails to import" in msg and "libGL.so.1" in msg
    assert f"`{PY} -m pip install --force-reinstall --no-deps vf_broken_ext`" in msg


def test_optional_module_stand_in(hide):
    lazy = _deps.optional("cv2", "Canny Edges")
    hide("cv2")
    with pytest.raises(VideoForgeError, match=r"Canny Edges needs OpenCV .*opencv-python-headless"):
        lazy.Canny  # noqa: B018
    with pytest.raises(AttributeError):
        lazy.__wrapped__  # noqa: B018 - dunders are not forwarded (inspect, copy, pickle probe them)


def test_optional_module_loads_once():
    import cv2
    lazy = _deps.optional("cv2", "Canny Edges")
    assert lazy.Canny is cv2.Canny and lazy._mod is cv2 and "loaded" in repr(lazy)


def test_entry_points_say_what_is_missing(hide, tmp_path):
    f = np.zeros((1, 16, 16, 3), np.uint8)
    hide("cv2")
    with pytest.raises(VideoForgeError, match=r"^Canny Edges needs OpenCV \(module cv2\)"):
        canny(f)
    with pytest.raises(VideoForgeError, match=r"^Canny Edges needs OpenCV"):
        canny_images(torch.zeros(1, 16, 16, 3))
    hide("onnxruntime")
    with pytest.raises(VideoForgeError, match=r"^OpenPose \(DWPose\) needs OpenCV \(module cv2\) and onnx"):
        W.DWPose(str(tmp_path / "yolox_l.onnx"), str(tmp_path / "dw-ll_ucoco_384.onnx"))


class _NoCv2:
    def __getattr__(self, name):
        raise AssertionError(f"cv2.{name} used")


def test_depth_path_needs_no_opencv(hide, monkeypatch):
    """Frame conversion in / out and the depth pipeline use NumPy / torch only."""
    hide("cv2", "onnxruntime")
    monkeypatch.setattr(F, "cv2", _NoCv2())
    x = torch.rand(2, 20, 30, 4)
    x[0, 0, 0] = float("nan")
    frames = F.as_uint8_frames(x)
    assert frames.shape == (2, 20, 30, 3) and F.as_uint8_frames(x[..., :1]).shape == (2, 20, 30, 3)

    class Bright(torch.nn.Module):
        def forward(self, pixel_values):
            from types import SimpleNamespace
            return SimpleNamespace(predicted_depth=pixel_values.mean(1))
    maps = D.estimate_depth(D.DepthModel(net=Bright()), frames, resolution=28)
    img = F.to_image(maps)
    assert img.shape == (2, 20, 30, 3) and torch.isfinite(img).all()
    assert F.to_image(frames).shape == (2, 20, 30, 3) and F.to_image(frames[..., 0]).shape == (2, 20, 30, 3)


def test_nothing_imports_optional_packages_at_module_level():
    """cv2 / onnxruntime only inside functions (or through _deps) in nodes/ and models/: a
    module-level import would stop the whole pack from loading without them."""
    optional = ("cv2", "onnxruntime")
    bad = []
    for path in glob.glob(os.path.join(ROOT, "nodes", "**", "*.py"), recursive=True) + \
            glob.glob(os.path.join(ROOT, "models", "**", "*.py"), recursive=True):
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), path)
        todo = list(tree.body)
        while todo:  # module level, including inside top-level if / try / with blocks
            node = todo.pop()
            if isinstance(node, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    todo += getattr(node, field, [])
            elif isinstance(node, ast.ExceptHandler):
                todo += node.body
            elif isinstance(node, ast.Import):
                bad += [(path, node.lineno) for a in node.names if a.name.split(".")[0] in optional]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in optional \
                    and not node.level:
                bad.append((path, node.lineno))
    assert not bad, bad


def test_package_imports_without_opencv_or_onnxruntime():
    """A fresh interpreter where cv2 and onnxruntime do not exist imports models.preprocess."""
    code = ("import sys; sys.modules['cv2'] = None; sys.modules['onnxruntime'] = None\n"
            "import models.preprocess as p, models.preprocess.dwpose, models.preprocess.openpose_draw\n"
            "assert 'cv2' not in [m for m, v in sys.modules.items() if v is not None]\n"
            "print(p.as_uint8_frames(__import__('torch').zeros(1, 2, 2, 3)).shape)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(1, 2, 2, 3)"
