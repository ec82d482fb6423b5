"""The few places VideoForge touches ComfyUI internals: devices, progress, interrupts, folders,
and turning our errors into messages the UI shows."""
from __future__ import annotations

import os

import comfy.model_management as mm
import comfy.utils
import folder_paths

from ..models.common.errors import VideoForgeError

CATEGORY = "VideoForge"

# Our own model folders (DESIGN §1); registered once, extra_model_paths.yaml can add more.
for _name in ("animatediff_models", "animatediff_motion_lora", "annotators"):
    if _name not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(_name, os.path.join(folder_paths.models_dir, _name))


def device():
    return mm.get_torch_device()


def offload_device():
    return mm.unet_offload_device()


def free_bytes() -> int:
    """Memory free for work on the compute device (VRAM on GPU, RAM on CPU)."""
    return int(mm.get_free_memory(device()))


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
