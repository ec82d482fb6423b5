"""The preprocessors' optional packages, imported when a preprocessor runs, not when the pack loads.

OpenCV (Canny, DWPose, the OpenPose drawing) and onnxruntime (DWPose) are installed by install.py,
but a pack cloned into ComfyUI without running it must still load: every node registers (so
workflows open) and a preprocessor that lacks a package says, when it runs, exactly what is
missing and the command that installs it into the Python that runs ComfyUI.

    from ._deps import optional, require
    cv2 = optional("cv2", "Canny Edges")     # module-level stand-in: imports on first use
    require("OpenPose (DWPose)", "cv2", "onnxruntime")   # check up front: one error naming all
"""
from __future__ import annotations

import importlib
import os
import sys

from ..common.errors import VideoForgeError

# module -> (what it is called, the pip package that provides it)
PACKAGES = {
    "cv2": ("OpenCV", "opencv-python-headless"),
    "onnxruntime": ("onnxruntime", "onnxruntime"),
    "transformers": ("transformers", "transformers"),
}
PACK_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INSTALL_PY = os.path.join(PACK_DIR, "install.py")


def _q(s: str) -> str:
    return f'"{s}"' if any(c.isspace() for c in s) else s


def describe(module: str) -> str:
    """'OpenCV (module cv2)'; just the name when the package is called like its module."""
    name = PACKAGES.get(module, (module, module))[0]
    return name if name == module else f"{name} (module {module})"


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _not_installed(err: ImportError, module: str) -> bool:
    """The module itself (or its package) is absent, as opposed to present but failing to load."""
    name = getattr(err, "name", None) or ""
    return isinstance(err, ModuleNotFoundError) and (name == module or module.startswith(name + "."))


def missing_message(user: str, failures: list[tuple[str, ImportError]]) -> str:
    """The user-facing text for modules `user` needs that do not import (see `require`)."""
    py = _q(sys.executable or "python")
    absent = [m for m, e in failures if _not_installed(e, m)]
    broken = [(m, e) for m, e in failures if not _not_installed(e, m)]
    parts = []
    if absent:
        pkgs = [PACKAGES.get(m, (m, m))[1] for m in absent]
        how = [f"`{py} {_q(INSTALL_PY)}` (installs all of VideoForge's requirements)"] \
            if os.path.isfile(INSTALL_PY) else []
        how.append(f"`{py} -m pip install {' '.join(pkgs)}`")
        verb = "is" if len(absent) == 1 else "are"
        text = (f"{user} needs {_and([describe(m) for m in absent])}, which {verb} not "
                f"installed in the Python that runs ComfyUI ({py}): run {' or '.join(how)}")
        if "onnxruntime" in absent:
            text += " (onnxruntime-gpu instead of onnxruntime runs it on CUDA)"
        parts.append(text + ", then restart ComfyUI.")
    for m, e in broken:
        pkg = PACKAGES.get(m, (m, m))[1]
        parts.append(f"{user} needs {describe(m)}, which is installed but fails to import in the "
                     f"Python that runs ComfyUI ({py}): {type(e).__name__}: {e}. Reinstall it: "
                     f"`{py} -m pip install --force-reinstall --no-deps {pkg}`, then restart ComfyUI.")
    return " ".join(parts)


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        importlib.invalidate_caches()  # installed since the last try, while ComfyUI ran
        return importlib.import_module(module)


def require(user: str, *modules: str):
    """Import `modules` for `user` (what needs them, e.g. a node's name) and return the module
    (a tuple when several). When any does not import, one VideoForgeError names every one that
    failed and how to install it (missing_message)."""
    got, failures = [], []
    for m in modules:
        try:
            got.append(_import(m))
        except ImportError as e:
            failures.append((m, e))
    if failures:
        raise VideoForgeError(missing_message(user, failures)) from failures[0][1]
    return got[0] if len(got) == 1 else tuple(got)


class optional:  # noqa: N801 - stands in for a module
    """A module-level stand-in for an optional module: `cv2 = optional("cv2", "Canny Edges")`
    imports cv2 on the first attribute access (`cv2.Canny`) and raises require's
    VideoForgeError there when it is missing."""

    def __init__(self, module: str, user: str) -> None:
        self._module, self._user, self._mod = module, user, None

    def __getattr__(self, name: str):
        if name.startswith("_"):  # ours are in __dict__; dunders: not a module's business
            raise AttributeError(name)
        mod = self._mod
        if mod is None:
            mod = self._mod = require(self._user, self._module)
        return getattr(mod, name)

    def __repr__(self) -> str:
        return f"<optional module {self._module!r}{' (loaded)' if self._mod is not None else ''}>"
