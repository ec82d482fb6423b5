"""Key layouts of HunyuanVideo DiT files and detection of what a state dict is.

Native layout = the official Tencent names (`img_in.proj`, `txt_in.individual_token_refiner`,
`double_blocks.N.img_attn_qkv`, `single_blocks.N.linear1`, `final_layer.adaLN_modulation.1`,
...; see ../shared/HUNYUAN.md §2), which the Comfy-Org repackaged files use too, optionally under
`model.diffusion_model.`. Accepted as well:

- the official `mp_rank_00_model_states.pt`: a dict whose key "module" holds the state dict.
  The caller normally passes that inner dict; `normalize_dit_keys` also unwraps it when given the
  outer one (a `module.` key prefix is stripped too);
- diffusers' `HunyuanVideoTransformer3DModel` names (`x_embedder`, `context_embedder.*`,
  `transformer_blocks`, `single_transformer_blocks`): q / k / v (and the single blocks'
  `proj_mlp`) are split there and fused back here, and `norm_out.linear` stores the final
  modulation as [scale; shift] where the official `final_layer.adaLN_modulation.1` is
  [shift; scale].

`to_diffusers` is the inverse (parity tests; handing our files to diffusers). Mapping checked
against diffusers' own single-file converter (`convert_hunyuan_video_transformer_to_diffusers`).
"""
from __future__ import annotations

import re

import torch

from ..common.checkpoint import strip_prefix
from ..common.errors import VideoForgeError

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.", "module.")

# ComfyUI's marker key for the family (comfy/model_detection.py), in official names.
MARKER = "txt_in.individual_token_refiner.blocks.0.norm1.weight"
DIFFUSERS_MARKER = "context_embedder.token_refiner.refiner_blocks.0.norm1.weight"

# Module paths, official <- diffusers. A value (name, slot, parts) is one of `parts` slices of a
# fused official tensor (concatenated along dim 0 in slot order).
_TOP = {
    "x_embedder.proj": "img_in.proj",
    "context_embedder.proj_in": "txt_in.input_embedder",
    "context_embedder.time_text_embed.timestep_embedder.linear_1": "txt_in.t_embedder.mlp.0",
    "context_embedder.time_text_embed.timestep_embedder.linear_2": "txt_in.t_embedder.mlp.2",
    "context_embedder.time_text_embed.text_embedder.linear_1": "txt_in.c_embedder.linear_1",
    "context_embedder.time_text_embed.text_embedder.linear_2": "txt_in.c_embedder.linear_2",
    "time_text_embed.timestep_embedder.linear_1": "time_in.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "time_in.mlp.2",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.mlp.0",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.mlp.2",
    "norm_out.linear": "final_layer.adaLN_modulation.1",     # halves swapped, see _swap_halves
    "proj_out": "final_layer.linear",
}
_REFINER = {
    "norm1": "norm1", "norm2": "norm2",
    "attn.to_q": ("self_attn_qkv", 0, 3), "attn.to_k": ("self_attn_qkv", 1, 3),
    "attn.to_v": ("self_attn_qkv", 2, 3), "attn.to_out.0": "self_attn_proj",
    "ff.net.0.proj": "mlp.fc1", "ff.net.2": "mlp.fc2", "norm_out.linear": "adaLN_modulation.1",
}
_DOUBLE = {
    "norm1.linear": "img_mod.linear", "norm1_context.linear": "txt_mod.linear",
    "attn.to_q": ("img_attn_qkv", 0, 3), "attn.to_k": ("img_attn_qkv", 1, 3),
    "attn.to_v": ("img_attn_qkv", 2, 3),
    "attn.add_q_proj": ("txt_attn_qkv", 0, 3), "attn.add_k_proj": ("txt_attn_qkv", 1, 3),
    "attn.add_v_proj": ("txt_attn_qkv", 2, 3),
    "attn.norm_q": "img_attn_q_norm", "attn.norm_k": "img_attn_k_norm",
    "attn.norm_added_q": "txt_attn_q_norm", "attn.norm_added_k": "txt_attn_k_norm",
    "attn.to_out.0": "img_attn_proj", "attn.to_add_out": "txt_attn_proj",
    "ff.net.0.proj": "img_mlp.fc1", "ff.net.2": "img_mlp.fc2",
    "ff_context.net.0.proj": "txt_mlp.fc1", "ff_context.net.2": "txt_mlp.fc2",
}
_SINGLE = {
    "attn.to_q": ("linear1", 0, 4), "attn.to_k": ("linear1", 1, 4), "attn.to_v": ("linear1", 2, 4),
    "proj_mlp": ("linear1", 3, 4), "proj_out": "linear2",
    "attn.norm_q": "q_norm", "attn.norm_k": "k_norm", "norm.linear": "modulation.linear",
}
# (diffusers block list, official block list, table)
_BLOCKS = [
    ("context_embedder.token_refiner.refiner_blocks", "txt_in.individual_token_refiner.blocks", _REFINER),
    ("transformer_blocks", "double_blocks", _DOUBLE),
    ("single_transformer_blocks", "single_blocks", _SINGLE),
]
_FINAL = "final_layer.adaLN_modulation.1"


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """[a; b] -> [b; a] along dim 0 (official [shift; scale] <-> diffusers [scale; shift])."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _official_module(module: str):
    """diffusers module path -> official path, or (path, slot, parts) for a fused part; None if
    the path is not a known diffusers HunyuanVideo module."""
    if module in _TOP:
        return _TOP[module]
    for diff, off, table in _BLOCKS:
        m = re.fullmatch(re.escape(diff) + r"\.(\d+)\.(.+)", module)
        if m and m[2] in table:
            v = table[m[2]]
            if isinstance(v, tuple):
                return (f"{off}.{m[1]}.{v[0]}", v[1], v[2])
            return f"{off}.{m[1]}.{v}"
    return None


def from_diffusers(sd: dict[str, torch.Tensor], name: str = "") -> dict[str, torch.Tensor]:
    """diffusers `HunyuanVideoTransformer3DModel` state dict -> official names (fused tensors
    are new tensors; renamed ones are the same tensors). Unknown keys are kept as they are (the
    loader then names them as unexpected)."""
    what = name or "checkpoint"
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[int, torch.Tensor]] = {}
    parts_of: dict[str, int] = {}
    for key, v in sd.items():
        module, _, param = key.rpartition(".")
        target = _official_module(module)
        if target is None:
            out[key] = v
        elif isinstance(target, tuple):
            off, slot, parts = target
            if param not in ("weight", "bias"):
                raise VideoForgeError(
                    f"{what}: {key!r}: per-tensor scales on the split q / k / v of a diffusers-layout "
                    "file cannot be fused into the official layout; use an unscaled (bf16 / fp16 / "
                    "fp8) file or the official / ComfyUI file.")
            fused.setdefault(f"{off}.{param}", {})[slot] = v
            parts_of[f"{off}.{param}"] = parts
        else:
            swap = target == _FINAL and param in ("weight", "bias")
            out[f"{target}.{param}"] = _swap_halves(v) if swap else v
    for key, slots in fused.items():
        if sorted(slots) != list(range(parts_of[key])):
            raise VideoForgeError(f"{what}: cannot rebuild {key!r}: its q / k / v (/ mlp) parts "
                                  f"{sorted(slots)} are incomplete; the file is truncated.")
        out[key] = torch.cat([slots[i] for i in range(parts_of[key])], dim=0)
    return out


def _inverse(table: dict) -> dict[str, list[str]]:
    """official sub-module -> its diffusers sub-modules in slot order (one for a plain rename)."""
    inv: dict[str, list[tuple[int, str]]] = {}
    for diff, off in table.items():
        name, slot = (off[0], off[1]) if isinstance(off, tuple) else (off, 0)
        inv.setdefault(name, []).append((slot, diff))
    return {k: [d for _, d in sorted(v)] for k, v in inv.items()}


_INVERSE = [(diff, off, _inverse(table)) for diff, off, table in _BLOCKS]


def to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official names -> diffusers `HunyuanVideoTransformer3DModel` names (fused tensors split
    into views: q / k / v are `hidden` rows each, the single blocks' mlp takes the rest)."""
    hidden = sd["img_in.proj.weight"].shape[0]
    top = {off: diff for diff, off in _TOP.items()}
    out: dict[str, torch.Tensor] = {}
    for key, v in sd.items():
        module, _, param = key.rpartition(".")
        if module in top:
            swap = module == _FINAL and param in ("weight", "bias")
            out[f"{top[module]}.{param}"] = _swap_halves(v) if swap else v
            continue
        for diff_list, off_list, inv in _INVERSE:
            m = re.fullmatch(re.escape(off_list) + r"\.(\d+)\.(.+)", module)
            names = inv.get(m[2]) if m else None
            if names:
                break
        else:
            out[key] = v
            continue
        head = f"{diff_list}.{m[1]}."
        sizes = [hidden] * (len(names) - 1)
        sizes.append(v.shape[0] - sum(sizes))
        for diff, part in zip(names, v.split(sizes, dim=0) if len(names) > 1 else [v]):
            out[f"{head}{diff}.{param}"] = part
    return out


def dit_layout(sd: dict[str, torch.Tensor]) -> str | None:
    """'official' / 'diffusers' (prefixes already stripped), None when neither."""
    if "img_in.proj.weight" in sd or MARKER in sd:
        return "official"
    if "x_embedder.proj.weight" in sd or DIFFUSERS_MARKER in sd:
        return "diffusers"
    return None


def normalize_dit_keys(sd: dict[str, torch.Tensor], name: str = "") -> dict[str, torch.Tensor]:
    """Any accepted layout -> official names (see the module docstring)."""
    inner = sd.get("module") if isinstance(sd, dict) else None
    if isinstance(inner, dict):                  # the whole mp_rank_00_model_states.pt dict
        sd = inner
    sd = strip_prefix(sd, PREFIXES)
    if dit_layout(sd) == "diffusers":
        sd = from_diffusers(sd, name)
    return sd


def is_hunyuan_dit(sd: dict[str, torch.Tensor]) -> bool:
    """A HunyuanVideo (1.0 / I2V) DiT, in any accepted layout (raw or normalised: reads keys and
    one shape only, so it is cheap enough for detection).

    ComfyUI's marker is the token refiner (`MARKER`). Relatives that share it are refused here:
    HunyuanImage (2-D patch embedding) and HunyuanVideo 1.5 (`byt5_in`, `cond_type_embedding`),
    whose architectures differ."""
    inner = sd.get("module")
    if isinstance(inner, dict):
        sd = inner
    sd = strip_prefix(sd, PREFIXES)
    if MARKER in sd:
        pe = sd.get("img_in.proj.weight")
        return (pe is not None and pe.dim() == 5 and "vector_in.in_layer.weight" in sd
                and "byt5_in.fc1.weight" not in sd and "cond_type_embedding.weight" not in sd)
    if DIFFUSERS_MARKER in sd:
        pe = sd.get("x_embedder.proj.weight")
        return pe is not None and pe.dim() == 5
    return False
