"""CLIP vision encoder (ViT-B/L/H/g/bigG), family-agnostic, built on transformers `CLIPVisionModel`.

Wan2.1 image-to-video and first-last-frame-to-video condition on CLIP ViT-H/14 image features:
the hidden states of the vision transformer *before its last block* (official Wan
`wan/modules/clip.py`: `self.model.visual(videos, use_31_block=True)`, i.e. `transformer[:-1]`;
transformers: `CLIPVisionModel(..., output_hidden_states=True).hidden_states[-2]`, which is what
diffusers' `WanImageToVideoPipeline.encode_image` and ComfyUI's `penultimate_hidden_states` use).
For ViT-H/14 at 224 px that is `[N, 257, 1280]` (16x16 patches + the class token), without the
post layer norm.

Accepted files (the layout is detected from the keys, not the file name; text-tower keys and the
logit scale of full CLIP files are ignored):

* ComfyUI `clip_vision_h.safetensors` and other transformers `CLIPVisionModel(WithProjection)` /
  `CLIPModel` files (a diffusers `image_encoder/` folder too): `vision_model.embeddings.*`,
  `vision_model.pre_layrnorm.*` (sic), `vision_model.encoder.layers.N.{self_attn.{q,k,v,out}_proj,
  layer_norm1, mlp.fc1, mlp.fc2, layer_norm2}`, `vision_model.post_layernorm.*`,
  `visual_projection.weight`; fp32 / fp16 / bf16. A stored `vision_model.embeddings.position_ids`
  buffer (files written by transformers < 4.31) is tolerated and ignored.
* The official Wan `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` (Wan's own names under
  `visual.`: `cls_embedding` [1,1,D], `pos_embedding` [1,L,D], `patch_embedding.weight` (no bias),
  `pre_norm`, `transformer.N.{norm1, attn.to_qkv, attn.proj, norm2, mlp.0, mlp.2}`, `post_norm`,
  `head` [D, 1024]); `textual.*` and `log_scale` are ignored. `to_qkv` is split row-wise into
  q / k / v (Wan views its output as `[b, s, 3, heads, head_dim]`).
* open_clip / OpenAI names under `visual.` (`conv1`, `class_embedding`, `positional_embedding`,
  `ln_pre`, `transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.out_proj, ln_2, mlp.c_fc,
  mlp.c_proj}`, `ln_post`, `proj` [D, out]).

Config inferred from the weights: hidden size and patch size from the patch convolution, image
size from the position table (`(image / patch)^2 + 1` rows), layers from the highest block index,
MLP width from `fc1`, layer-norm eps 1e-5. The head count cannot be read from the weights; open_clip
uses a head width of 64 except ViT-H/14 (width 1280, head width 80), ViT-g/14 (1408, 88) and
ViT-bigG/14 (1664, 104), so every CLIP ViT from L upwards has 16 heads (B: 768 / 64 = 12):
`heads = 16 for widths 1280 / 1408 / 1664, else width // 64` (`num_heads=` overrides). The MLP
activation cannot be read either: OpenAI's ViT-B and ViT-L use quick_gelu, LAION/open_clip models
(ViT-H, g, bigG) exact gelu. Like ComfyUI's configs, widths 768 and 1024 get quick_gelu and all
others gelu (`hidden_act=` overrides, e.g. "gelu" for a LAION ViT-L).

Preprocessing (`preprocess`): IMAGE batches `[N, H, W, C]` float 0..1 (ComfyUI layout).
`crop="none"` (default) is official Wan's: bicubic interpolation (align_corners=False, no
antialias) of the whole image to 224x224 (aspect ratio not kept, nothing cropped), then the OpenAI
CLIP mean / std. (Wan feeds the image in [-1, 1] and maps it back with `mul(0.5).add(0.5)` first,
which is the same up to float rounding.) `crop="center"` is ComfyUI's `clip_preprocess(crop=True)`:
the short side is resized to 224 (bicubic with antialias), the centre 224x224 is cut out and the
pixels are rounded to 8-bit levels before normalising. RGBA: alpha is ignored (as ComfyUI does);
grayscale (1 channel, or 2 with alpha) is replicated to RGB; uint8 images are divided by 255.

Precision: weights are converted to the compute dtype at load (zero-copy when the file already
holds it). "auto" is float32 unless a CUDA device is present (then float16, as official Wan and
ComfyUI run CLIP-H); `encode` always returns float32.
"""
from __future__ import annotations

import inspect
import math
import os
import re

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_state_dict
from .errors import VideoForgeError
from .video import to_rgb

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LAYER_NORM_EPS = 1e-5
CROP_MODES = ("none", "center")

# open_clip head widths for the big towers (everything else uses 64).
_HEADS_BY_WIDTH = {1280: 16, 1408: 16, 1664: 16}
_QUICK_GELU_WIDTHS = (768, 1024)  # OpenAI ViT-B / ViT-L (ComfyUI's assumption too)

# --------------------------------------------------------------------------------------------
# Key layouts. Canonical names are those of transformers' vision transformer module
# (`CLIPVisionModel` in transformers 5, `CLIPVisionModel.vision_model` in 4.x).
# Each table: (source suffix, canonical suffix(es), transform); "{i}" is the block index.
# --------------------------------------------------------------------------------------------
_SAME, _FLAT, _SQUEEZE, _SPLIT3, _T = "same", "flat", "squeeze", "split3", "t"
_LN = ("weight", "bias")
_PROJ = "visual_projection.weight"  # canonical name of the optional projection

_LAYOUTS = {
    # root = where the vision keys live; block = per-block prefix below root
    "transformers": dict(
        probe="embeddings.patch_embedding.weight", block="encoder.layers.{i}.",
        needs=("embeddings.class_embedding", "encoder.layers.0.self_attn.q_proj.weight"),
        globals=[("embeddings.class_embedding", "embeddings.class_embedding", _SAME),
                 ("embeddings.patch_embedding.weight", "embeddings.patch_embedding.weight", _SAME),
                 ("embeddings.position_embedding.weight", "embeddings.position_embedding.weight", _SAME)]
        + [(f"pre_layrnorm.{p}", f"pre_layrnorm.{p}", _SAME) for p in _LN]
        + [(f"post_layernorm.{p}", f"post_layernorm.{p}", _SAME) for p in _LN],
        blocks=[(f"self_attn.{x}_proj.{p}", f"self_attn.{x}_proj.{p}", _SAME)
                for x in ("q", "k", "v", "out") for p in _LN]
        + [(f"{n}.{p}", f"{n}.{p}", _SAME) for n in ("layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2")
           for p in _LN],
        tolerated=("embeddings.position_ids",),
    ),
    "wan": dict(
        probe="patch_embedding.weight", block="transformer.{i}.",
        needs=("cls_embedding", "transformer.0.attn.to_qkv.weight"),
        globals=[("cls_embedding", "embeddings.class_embedding", _FLAT),
                 ("patch_embedding.weight", "embeddings.patch_embedding.weight", _SAME),
                 ("pos_embedding", "embeddings.position_embedding.weight", _SQUEEZE)]
        + [(f"pre_norm.{p}", f"pre_layrnorm.{p}", _SAME) for p in _LN]
        + [(f"post_norm.{p}", f"post_layernorm.{p}", _SAME) for p in _LN],
        blocks=[(f"attn.to_qkv.{p}", tuple(f"self_attn.{x}_proj.{p}" for x in "qkv"), _SPLIT3) for p in _LN]
        + [(f"attn.proj.{p}", f"self_attn.out_proj.{p}", _SAME) for p in _LN]
        + [(f"{a}.{p}", f"{b}.{p}", _SAME) for a, b in (("norm1", "layer_norm1"), ("norm2", "layer_norm2"),
                                                      ("mlp.0", "mlp.fc1"), ("mlp.2", "mlp.fc2"))
           for p in _LN],
        projection=("head", _T),
        tolerated=(),
    ),
    "open_clip": dict(
        probe="conv1.weight", block="transformer.resblocks.{i}.",
        needs=("class_embedding", "transformer.resblocks.0.attn.in_proj_weight"),
        globals=[("class_embedding", "embeddings.class_embedding", _FLAT),
                 ("conv1.weight", "embeddings.patch_embedding.weight", _SAME),
                 ("positional_embedding", "embeddings.position_embedding.weight", _SQUEEZE)]
        + [(f"ln_pre.{p}", f"pre_layrnorm.{p}", _SAME) for p in _LN]
        + [(f"ln_post.{p}", f"post_layernorm.{p}", _SAME) for p in _LN],
        blocks=[("attn.in_proj_weight", tuple(f"self_attn.{x}_proj.weight" for x in "qkv"), _SPLIT3),
                ("attn.in_proj_bias", tuple(f"self_attn.{x}_proj.bias" for x in "qkv"), _SPLIT3)]
        + [(f"attn.out_proj.{p}", f"self_attn.out_proj.{p}", _SAME) for p in _LN]
        + [(f"{a}.{p}", f"{b}.{p}", _SAME) for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                                                      ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
           for p in _LN],
        projection=("proj", _T),
        tolerated=(),
    ),
}


def _find(sd: dict) -> tuple[str, str] | None:
    """(layout, root) of the CLIP vision tower in `sd`, or None. `root` is the prefix of the
    vision keys (e.g. "vision_model.", "visual.", "image_encoder.vision_model.")."""
    keys = list(sd)
    for layout, spec in _LAYOUTS.items():
        probe = spec["probe"]
        for k in keys:
            if k != probe and not k.endswith("." + probe):
                continue
            root = k[: -len(probe)]
            if layout != "transformers" and not root.endswith("visual."):
                continue  # "patch_embedding.weight" alone is also a Wan DiT key
            if not all(root + n in sd for n in spec["needs"]):
                continue
            # The tower's own namespace ("vision_model." / "visual.") may sit next to a text tower;
            # any prefix above it must hold most of the file (else it is a bigger checkpoint).
            outer = root
            for ns in ("vision_model.", "visual."):
                if outer.endswith(ns):
                    outer = outer[: -len(ns)]
                    break
            if outer and 2 * sum(1 for x in keys if x.startswith(outer)) < len(keys):
                continue
            return layout, root
    return None


def detect_clip_vision(sd: dict) -> str | None:
    """'transformers' (ComfyUI / transformers / diffusers names), 'wan' (official Wan .pth) or
    'open_clip' when `sd` holds a CLIP ViT vision tower; None otherwise."""
    found = _find(sd)
    return found[0] if found else None


def _projection_key(layout: str, root: str) -> str:
    if layout == "transformers":
        outer = root[: -len("vision_model.")] if root.endswith("vision_model.") else root
        return outer + _PROJ
    return root + _LAYOUTS[layout]["projection"][0]


def _num_blocks(sd: dict, root: str, block: str) -> int:
    pat = re.compile(re.escape(root + block.split("{i}")[0]) + r"(\d+)\.")
    idx = [int(m.group(1)) for k in sd if (m := pat.match(k))]
    return max(idx) + 1 if idx else 0


def _convert(sd: dict, layout: str, root: str, where: str):
    """File tensors -> (canonical weights, projection or None, canonical -> file key, n blocks).
    Raises VideoForgeError naming missing or unexpected vision keys."""
    spec = _LAYOUTS[layout]
    n = _num_blocks(sd, root, spec["block"])
    if n == 0:
        raise VideoForgeError(f"{where}: CLIP vision tower has no transformer blocks "
                              f"(no '{root}{spec['block'].format(i=0)}*' keys).")
    table = [(root + s, c, t) for s, c, t in spec["globals"]]
    for i in range(n):
        b = root + spec["block"].format(i=i)
        cb = f"encoder.layers.{i}."
        table += [(b + s, tuple(cb + x for x in c) if isinstance(c, tuple) else cb + c, t)
                  for s, c, t in spec["blocks"]]
    proj_key = _projection_key(layout, root)
    missing = [s for s, _, _ in table if s not in sd]
    known = {s for s, _, _ in table} | {proj_key} | {root + t for t in spec["tolerated"]}
    unexpected = sorted(k for k in sd if k.startswith(root) and k not in known)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weights missing (e.g. {missing[:4]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:4]})")
        raise VideoForgeError(f"{where}: CLIP vision checkpoint ({layout} layout, {n} blocks) is incomplete "
                              "or not a standard CLIP ViT: " + "; ".join(parts) +
                              ". Re-download the file (e.g. clip_vision_h.safetensors).")
    out: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    for s, c, t in table:
        v = sd[s]
        if t == _SPLIT3:
            if v.shape[0] % 3:
                raise VideoForgeError(f"{where}: '{s}' has {v.shape[0]} rows; expected 3 x hidden size "
                                      "(stacked q, k, v).")
            for name, part in zip(c, v.chunk(3, dim=0)):
                out[name], source[name] = part, s
            continue
        if t == _FLAT:
            v = v.reshape(-1)
        elif t == _SQUEEZE and v.dim() == 3 and v.shape[0] == 1:
            v = v[0]
        out[c], source[c] = v, s
    proj = None
    if proj_key in sd:
        proj = sd[proj_key]
        if layout != "transformers":  # [hidden, out] in Wan / open_clip, [out, hidden] in transformers
            proj = proj.t() if proj.dim() == 2 else proj
        source[_PROJ] = proj_key
    return out, proj, source, n


def _default_heads(width: int) -> int | None:
    if width in _HEADS_BY_WIDTH:
        return _HEADS_BY_WIDTH[width]
    return width // 64 if width % 64 == 0 else None


def infer_config(sd: dict, where: str = "state dict", num_heads: int | None = None,
                 hidden_act: str | None = None):
    """transformers `CLIPVisionConfig` from canonical weights (see the module docstring for the rules).
    Works on meta tensors (shapes only)."""
    from transformers import CLIPVisionConfig

    patch = sd["embeddings.patch_embedding.weight"]
    if patch.dim() != 4 or patch.shape[-1] != patch.shape[-2]:
        raise VideoForgeError(f"{where}: patch embedding has shape {tuple(patch.shape)}; expected "
                              "[hidden, channels, patch, patch].")
    width, channels, p = int(patch.shape[0]), int(patch.shape[1]), int(patch.shape[-1])
    pos = sd["embeddings.position_embedding.weight"]
    if pos.dim() != 2 or pos.shape[1] != width:
        raise VideoForgeError(f"{where}: position embedding has shape {tuple(pos.shape)}; expected "
                              f"[tokens, {width}].")
    tokens = int(pos.shape[0])
    grid = math.isqrt(max(tokens - 1, 0))
    if grid * grid + 1 != tokens:
        raise VideoForgeError(f"{where}: {tokens} position embeddings is not a square patch grid plus a "
                              "class token; not a CLIP ViT vision tower (SigLIP has no class token).")
    n = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers."))
    heads = num_heads or _default_heads(width)
    if not heads or width % heads:
        raise VideoForgeError(f"{where}: cannot infer the attention head count for width {width}; "
                              "pass num_heads.")
    act = hidden_act or ("quick_gelu" if width in _QUICK_GELU_WIDTHS else "gelu")
    cfg = CLIPVisionConfig(
        hidden_size=width, intermediate_size=int(sd["encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=n, num_attention_heads=int(heads), num_channels=channels,
        image_size=grid * p, patch_size=p, hidden_act=act, layer_norm_eps=LAYER_NORM_EPS,
        attention_dropout=0.0,
    )
    cfg._attn_implementation = "sdpa"
    return cfg


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------
def preprocess(images: torch.Tensor, size: int = 224, crop: str = "none",
               mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD) -> torch.Tensor:
    """IMAGE batch [N, H, W, C] in 0..1 -> normalised pixels [N, 3, size, size] float32.
    crop="none": official Wan (bicubic to size x size, no antialias, no crop).
    crop="center": ComfyUI clip_preprocess(crop=True) (short side to size with antialias, centre crop,
    8-bit rounding)."""
    if crop not in CROP_MODES:
        raise VideoForgeError(f"crop {crop!r}: expected one of {list(CROP_MODES)}.")
    x = to_rgb(images).permute(0, 3, 1, 2)
    if crop == "none":
        # Wan interpolates the image in [-1, 1] and maps it back; doing the same keeps the float
        # rounding identical to the official pipeline (plain 0..1 differs by ~2e-6 after normalising).
        x = F.interpolate(x.sub(0.5).div(0.5), size=(size, size), mode="bicubic",
                          align_corners=False).mul(0.5).add(0.5)
    else:
        h, w = x.shape[-2:]
        if (h, w) != (size, size):
            s = size / min(h, w)
            nh, nw = max(size, round(s * h)), max(size, round(s * w))
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
            top, left = (nh - size) // 2, (nw - size) // 2
            x = x[:, :, top:top + size, left:left + size]
        x = (x * 255.0).clamp(0, 255).round() / 255.0
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    sd = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / sd).contiguous()


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------
def default_dtype() -> torch.dtype:
    """float16 where CUDA is present (official Wan's clip_dtype), float32 on CPU."""
    return torch.float16 if torch.cuda.is_available() else torch.float32


class ClipVisionEncoder(nn.Module):
    """A CLIP ViT vision tower (transformers `CLIPVisionModel`) plus CLIP preprocessing.

    `encode(images)` -> float32 `[N, tokens, hidden]` (ViT-H/14: `[N, 257, 1280]`), by default the
    hidden states before the last block (what Wan2.1 I2V / FLF2V condition on).
    """

    family = "clip_vision"

    ROLE = "clip_vision"

    @property
    def networks(self) -> list[nn.Module]:
        return [self.model]

    def __init__(self, model: nn.Module, config, name: str = "clip_vision",
                 projection: torch.Tensor | None = None, layout: str = "transformers", crop: str = "none"):
        super().__init__()
        self.model = model
        self.config = config
        self.name = name
        self.layout = layout
        self.crop = crop
        self.hidden_size = int(config.hidden_size)
        self.image_size = int(config.image_size)
        self.num_layers = int(config.num_hidden_layers)
        self.num_tokens = (self.image_size // int(config.patch_size)) ** 2 + 1
        # [projection_dim, hidden] (CLIP image-embedding head); kept for callers that need it.
        self.projection = projection
        self.projection_dim = int(projection.shape[0]) if projection is not None else None
        self._vit = getattr(model, "vision_model", model)  # transformers 4.x wraps the tower
        layer = self._vit.encoder.layers[0]
        self._legacy_layer = "causal_attention_mask" in inspect.signature(layer.forward).parameters

    @property
    def device(self) -> torch.device:
        return self._vit.embeddings.patch_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype (= the weights' dtype)."""
        return self._vit.embeddings.patch_embedding.weight.dtype

    def to(self, device=None, dtype: torch.dtype | None = None) -> "ClipVisionEncoder":  # type: ignore[override]
        """Move to `device` and / or change the compute dtype (weights are cast)."""
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise VideoForgeError(f"{self.name}: compute dtype {dtype} not supported; use float32, "
                                  "float16 or bfloat16.")
        self.model.to(device=device, dtype=dtype)
        if self.projection is not None:
            self.projection = self.projection.to(device=device, dtype=dtype)
        return self

    def _layer(self, layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        out = layer(h, None, None) if self._legacy_layer else layer(h, None)
        return out[0] if isinstance(out, tuple) else out

    @torch.no_grad()
    def forward_pixels(self, pixels: torch.Tensor, penultimate: bool = True) -> torch.Tensor:
        """Normalised pixels [N, 3, S, S] -> hidden states in the compute dtype.
        penultimate: stop before the last block (= transformers hidden_states[-2]); else the last
        block's output (= last_hidden_state, no post layer norm)."""
        vit = self._vit
        h = vit.embeddings(pixels.to(device=self.device, dtype=self.dtype))
        h = vit.pre_layrnorm(h)
        layers = list(vit.encoder.layers)
        for layer in layers[:-1] if penultimate else layers:
            h = self._layer(layer, h)
        return h

    @torch.no_grad()
    def encode(self, images: torch.Tensor, penultimate: bool = True, crop: str | None = None) -> torch.Tensor:
        """IMAGE batch [N, H, W, C] float 0..1 -> float32 [N, tokens, hidden] on the model's device."""
        try:
            pixels = preprocess(images, self.image_size, crop or self.crop)
        except VideoForgeError as e:
            raise VideoForgeError(f"{self.name}: {e}") from e
        return self.forward_pixels(pixels, penultimate).float()


def _what_is_it(sd: dict) -> str:
    try:
        from ..loader import LOADER_OF, identify
        kind = identify(sd)
    except Exception:  # noqa: BLE001 - only a hint
        kind = None
    if kind is not None and kind[1] != "clip_vision":
        return f"this is {kind[0]}: load it with {LOADER_OF.get(kind[1], kind[1])}"
    keys = list(sd)
    if any("vision_model." in k for k in keys):
        return "it has vision_model.* keys but no CLIP ViT class token / patch embedding (SigLIP or DINO?)"
    return f"none of the CLIP vision keys were found ({len(keys)} tensors, e.g. {keys[:3]})"


def load_clip_vision(path_or_sd, dtype: torch.dtype | str | None = None, name: str | None = None,
                     num_heads: int | None = None, hidden_act: str | None = None,
                     crop: str = "none") -> ClipVisionEncoder:
    """Load a CLIP vision encoder from a file / folder path or an already-read state dict.

    dtype: compute dtype (torch dtype or "auto" / "fp32" / "fp16" / "bf16"; None = "auto").
    The model stays on the CPU; move it with `.to(device)`.
    """
    from transformers import CLIPVisionModel

    if isinstance(path_or_sd, dict):
        raw, where = path_or_sd, name or "state dict"
    else:
        path = os.fspath(path_or_sd)
        where = name or os.path.basename(path.rstrip(os.sep)) or path
        raw = load_state_dict(path)
    name = name or where
    if isinstance(dtype, str):
        from .ops import parse_dtype
        dtype = parse_dtype(dtype)
    dtype = dtype or default_dtype()
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise VideoForgeError(f"{where}: compute dtype {dtype} not supported for CLIP vision; use "
                              "float32, float16 or bfloat16.")
    if crop not in CROP_MODES:
        raise VideoForgeError(f"crop {crop!r}: expected one of {list(CROP_MODES)}.")

    found = _find(raw)
    if found is None:
        raise VideoForgeError(f"{where}: not a CLIP vision encoder: {_what_is_it(raw)}. Expected e.g. "
                              "clip_vision_h.safetensors (models/clip_vision) or Wan's "
                              "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth.")
    layout, root = found
    weights, proj, source, _ = _convert(raw, layout, root, where)
    for k, v in list(weights.items()) + ([(_PROJ, proj)] if proj is not None else []):
        if not v.is_floating_point():
            raise VideoForgeError(f"{where}: '{source[k]}' has dtype {v.dtype}; expected floating point weights.")
    config = infer_config(weights, where, num_heads=num_heads, hidden_act=hidden_act)

    with torch.device("meta"):
        model = CLIPVisionModel(config)
    vit = getattr(model, "vision_model", model)
    own = vit.state_dict()
    bad = [f"{source[k]}: file {tuple(v.shape)} vs expected {tuple(own[k].shape)}"
           for k, v in weights.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if proj is not None and (proj.dim() != 2 or proj.shape[1] != config.hidden_size):
        bad.append(f"{source[_PROJ]}: {tuple(proj.shape)} does not project from width {config.hidden_size}")
    if bad:
        raise VideoForgeError(f"{where}: CLIP vision weights do not fit one ViT "
                              f"(width {config.hidden_size}, {config.num_hidden_layers} blocks): "
                              f"{len(bad)} shape mismatches (e.g. {bad[:3]}).")
    extra_own = sorted(set(own) - set(weights) - {"embeddings.position_ids"})
    if extra_own:  # a transformers version with parameters this converter does not know
        raise VideoForgeError(f"{where}: internal error, transformers' CLIPVisionModel expects {extra_own[:3]}.")
    state = {k: v.to(dtype).contiguous() for k, v in weights.items()}
    if "embeddings.position_ids" in own:  # persistent buffer in some transformers versions
        state["embeddings.position_ids"] = torch.arange(own["embeddings.position_ids"].shape[-1])[None]
    vit.load_state_dict(state, strict=True, assign=True)
    emb = vit.embeddings
    if emb.position_ids.is_meta:  # non-persistent buffer: not in the state dict
        emb.register_buffer("position_ids", torch.arange(emb.position_ids.shape[-1])[None], persistent=False)
    model.eval().requires_grad_(False)
    for pname, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:
            raise VideoForgeError(f"{where}: internal error, '{pname}' was not loaded.")
    projection = proj.to(dtype).contiguous() if proj is not None else None
    return ClipVisionEncoder(model, config, name=name, projection=projection, layout=layout, crop=crop)


__all__ = ["ClipVisionEncoder", "load_clip_vision", "detect_clip_vision", "infer_config", "preprocess",
           "to_rgb", "default_dtype", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "CROP_MODES"]
