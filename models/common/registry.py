"""The family registry: each family declares, in its own `__init__.py`, what files it recognises
(detectors) and how to build each part from them (builders). `models/loader.py` only iterates
over the registered families, so adding a family means its folder plus one `register(...)`.
(Anchors: ComfyUI's `supported_models.py`, FLUX's `configs`.)"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

StateDict = dict[str, torch.Tensor]
# build(state, name, dtype, path) -> the loaded part. `dtype` is the loader's torch dtype
# (None: keep the file's), `path` the file (for parts that read a tokenizer next to it).
Builder = Callable[[StateDict, str, "torch.dtype | None", str], Any]


@dataclass(frozen=True)
class Kind:
    """One kind of file a family recognises."""
    desc: str                          # "a Wan2.1 VAE", for messages
    part: str                          # model / vae / text_encoder / clip_vision / checkpoint / ...
    test: Callable[[StateDict], bool]  # True when a state dict is this kind
    family: str = ""                   # filled in by `register`


@dataclass(frozen=True)
class Family:
    name: str                                            # "wan"
    kinds: tuple[Kind, ...]                              # detection order within the family
    builders: dict[str, Builder] = field(default_factory=dict)   # part -> builder


_FAMILIES: list[Family] = []


def register(family: Family) -> Family:
    """Add a family (its kinds are tried after those of families registered before it)."""
    kinds = tuple(Kind(k.desc, k.part, k.test, family.name) for k in family.kinds)
    family = Family(family.name, kinds, dict(family.builders))
    _FAMILIES[:] = [f for f in _FAMILIES if f.name != family.name] + [family]
    return family


def families() -> list[Family]:
    """Every registered family: the built-in ones in `models.families.ORDER` (whatever order
    their packages happened to be imported in), then any others in registration order."""
    from ..families import ORDER  # importing it registers the built-in families
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(_FAMILIES, key=lambda f: rank.get(f.name, len(rank)))


def kinds() -> list[Kind]:
    """Every kind of every family, in the order they are tried."""
    return [k for f in families() for k in f.kinds]


def builder(family: str, part: str) -> Builder:
    for f in families():
        if f.name == family and part in f.builders:
            return f.builders[part]
    raise KeyError(f"family {family!r} has no builder for {part!r}")
