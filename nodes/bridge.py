"""The few places VideoForge touches ComfyUI internals: devices, progress, interrupts, folders,
and turning our errors into messages the UI shows."""
from __future__ import annotations

import contextlib
import logging
import os
import weakref
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


# Where ComfyUI's model management runs each kind of network, and where it parks it:
# (load device, offload device). Text encoders and CLIP vision go where ComfyUI puts its own
# text encoders (e.g. the CPU under --lowvram), VAEs where it puts its VAEs.
ROLES = {
    "model": (mm.get_torch_device, mm.unet_offload_device),
    "vae": (mm.vae_device, mm.vae_offload_device),
    "text_encoder": (mm.text_encoder_device, mm.text_encoder_offload_device),
    "clip_vision": (mm.text_encoder_device, mm.text_encoder_offload_device),
}


def role_device(role: str) -> torch.device:
    return ROLES[role][0]()


def auto_dtype(role: str, dtype: str) -> str:
    """The dtype widget's value for a loader: "auto" follows the device the part will run on
    as ComfyUI decides it (fp32 where that is the CPU, e.g. --cpu on a CUDA machine; the
    part's own GPU choice otherwise)."""
    return "fp32" if dtype == "auto" and role_device(role).type == "cpu" else dtype


class _Held(torch.nn.Module):
    """What ComfyUI's ModelPatcher holds for one of our networks. The patcher writes `device`
    and its bookkeeping onto its model, which a transformers model (read-only `device`) refuses,
    so it gets this container; the network is its only child."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net


def _patcher(net: torch.nn.Module, role: str):
    """The one ModelPatcher of a network: a motion-module copy of a model or a second node using
    the same VAE shares it, so ComfyUI counts the weights once. The network keeps only a weak
    reference to it (the parts that use it hold it): a reference cycle would keep the weights
    alive after `POST /free` until Python's next cycle collection, which ComfyUI warns about."""
    import comfy.model_patcher
    load, offload = (f() for f in ROLES[role])
    ref = net.__dict__.get("_vf_patcher")
    p = ref() if ref is not None else None
    if p is None or p.load_device != load:
        cls = getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
        held = type(f"VF{type(net).__name__}", (_Held,), {})(net)  # ComfyUI logs this name
        p = cls(held, load_device=load, offload_device=offload)
        net.__dict__["_vf_patcher"] = weakref.ref(p)
    return p


def use(*parts, memory_required: float = 0) -> torch.device:
    """Load `parts` (diffusion model, VAE, text encoder, CLIP vision: each states `networks`
    and `ROLE`) through ComfyUI's model management: it makes room (evicting other models, ours
    or native, as needed; --lowvram / --novram / --reserve-vram apply), keeps them resident
    between prompts while they fit, and unloads them on Unload Models / `POST /free`.
    `memory_required`: the work's own memory on top of the weights (the pre-check's estimate).
    Each part is then told where it runs (and so which dtype it computes in); returns the
    first part's device."""
    parts = [p for p in parts if p is not None]
    patchers = [[_patcher(n, p.ROLE) for n in p.networks] for p in parts]
    for part, ps in zip(parts, patchers):
        part.__dict__["_vf_patchers"] = ps  # alive as long as the part (ComfyUI holds weak refs)
    # Whole networks only: partial loading (weights cast onto the device at use) needs every
    # parameter of a family's network to be cast on use, which is not done yet.
    mm.load_models_gpu([x for ps in patchers for x in ps], memory_required=memory_required,
                       force_full_load=True)
    for part, ps in zip(parts, patchers):
        part.to(ps[0].load_device)
    return patchers[0][0].load_device if patchers else device()


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
    logging.info("[VideoForge] reading %s/%s", folder, name)
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
