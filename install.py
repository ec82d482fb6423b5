"""Install VideoForge's runtime requirements into the Python running this script.

ComfyUI-Manager runs it automatically; by hand: `python install.py` with ComfyUI's Python.
Idempotent: only what is missing or too old is installed. Never installs or upgrades torch /
torchvision (that would replace a working CUDA build), and adds no OpenCV wheel when any cv2
variant (opencv-python, -headless, -contrib) already imports: mixed OpenCV wheels break. Likewise
no onnxruntime when any variant (e.g. onnxruntime-gpu) already imports.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

HERE = os.path.dirname(os.path.abspath(__file__))
NEVER = {"torch", "torchvision", "torchaudio"}


def _requirements() -> list[str]:
    with open(os.path.join(HERE, "requirements.txt")) as f:
        return [ln.split("#")[0].strip() for ln in f if ln.split("#")[0].strip()]


def _satisfied(req: str) -> bool:
    from packaging.requirements import Requirement
    r = Requirement(req)
    if r.name.lower().startswith("opencv"):
        return importlib.util.find_spec("cv2") is not None
    if r.name.lower().startswith("onnxruntime"):
        # onnxruntime-gpu / -directml / -openvino provide the same module: never add a second one
        return importlib.util.find_spec("onnxruntime") is not None
    try:
        return r.specifier.contains(version(r.name), prereleases=True)
    except PackageNotFoundError:
        return False


def missing() -> list[str]:
    from packaging.requirements import Requirement
    return [r for r in _requirements()
            if Requirement(r).name.lower() not in NEVER and not _satisfied(r)]


def main() -> int:
    todo = missing()
    if not todo:
        print("[VideoForge] requirements already satisfied")
        return 0
    print(f"[VideoForge] installing: {' '.join(todo)}")
    return subprocess.call([sys.executable, "-m", "pip", "install", *todo])


if __name__ == "__main__":
    sys.exit(main())
