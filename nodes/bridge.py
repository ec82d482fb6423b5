"""The few places VideoForge touches ComfyUI internals: devices, progress, interrupts, folders,
and turning our errors into messages the UI shows."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch

from ..models.common.errors import VideoForgeError
from ..models.common.memory import Estimate, check_fits

CATEGORY = "VideoForge"

# Our own model folders (DESIGN §1); registered once, extra_model_paths.yaml can add more.
for _name in ("animatediff_models", "animatediff_motion_lora", "annotators"):
    if _name not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(_name, os.path.join(folder_paths.models_dir, _name))


def device():
    return mm.get_torch_device()


def offload_device():
    return mm.unet_offload_device()


def free_bytes(dev: torch.device | None = None) -> int:
    """Memory free for work on `dev` (default: the compute device): VRAM on GPU, RAM on CPU."""
    return int(mm.get_free_memory(dev or device()))


def where(dev: torch.device) -> str:
    return "the CPU (RAM)" if dev.type == "cpu" else f"{dev} (VRAM)"


def check_memory(est: Estimate, dev: torch.device | None = None) -> None:
    """Refuse `est` (a VideoForgeError with the estimate, what is free and what to change) when
    it cannot fit on `dev`. On a GPU, ComfyUI is first asked to unload models to make room."""
    dev = dev or device()
    free = free_bytes(dev)
    if est.total > free and dev.type != "cpu":
        mm.free_memory(est.total, dev)
        free = free_bytes(dev)
    check_fits(est, free, where(dev))


def _out_of_memory(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", ())
    return isinstance(e, oom) or (isinstance(e, RuntimeError) and
                                  "can't allocate memory" in str(e))


@contextlib.contextmanager
def oom_guard(what: str, advice: str = "use fewer frames, a smaller size or a lower batch_size"
              ) -> Iterator[None]:
    """Turn an out-of-memory error inside the block into a VideoForgeError with advice, after
    the failed work's tensors are released and the allocator's cache is emptied."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - anything else is re-raised unchanged
        if not _out_of_memory(e):
            raise
        msg = str(e).splitlines()[0][:200]
    else:
        return
    # Out of the except block: the traceback (and the tensors its frames held) is gone now.
    mm.soft_empty_cache()
    raise VideoForgeError(f"{what} ran out of memory ({msg}); {advice}. The memory it held has "
                          "been released.")


def free_memory() -> None:
    mm.soft_empty_cache()


def resolve(folder: str, name: str) -> str:
    """Full path of a file picked in a combo widget; clear error if it vanished."""
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise VideoForgeError(f"{name!r} not found in ComfyUI's models/{folder} folder(s): "
                              f"{folder_paths.get_folder_paths(folder)}.")
    return path


def files(folder: str) -> list[str]:
    return folder_paths.get_filename_list(folder)


class Progress:
    """ProgressBar that also checks for Cancel on every tick."""

    def __init__(self, total: int) -> None:
        self.bar = comfy.utils.ProgressBar(total)

    def __call__(self, done: int, total: int, *_args) -> None:
        mm.throw_exception_if_processing_interrupted()
        self.bar.update_absolute(done, total)
