"""Classifier-free guidance around a conditioned velocity model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

from ..common.errors import VideoForgeError

C = TypeVar("C")
# model(x, sigma, cond) -> velocity, where cond is whatever the family conditions on.
CondModelFn = Callable[[torch.Tensor, float, C], torch.Tensor]


def _cat_cond(cond: Any, uncond: Any) -> Any:
    """cond and uncond stacked along the batch: tensors concatenated, dicts/lists per entry,
    anything else (flags, sizes) must be equal in both and is passed through."""
    if isinstance(cond, torch.Tensor) and isinstance(uncond, torch.Tensor):
        if cond.shape[1:] != uncond.shape[1:]:
            raise VideoForgeError(
                f"batched guidance needs cond and uncond of equal shape past the batch dim, "
                f"got {tuple(cond.shape)} and {tuple(uncond.shape)}"
            )
        return torch.cat([cond, uncond])
    if isinstance(cond, dict) and isinstance(uncond, dict) and cond.keys() == uncond.keys():
        return {k: _cat_cond(cond[k], uncond[k]) for k in cond}
    same_kind_sequences = isinstance(cond, (list, tuple)) and isinstance(uncond, (list, tuple))
    if same_kind_sequences and len(cond) == len(uncond):
        return type(cond)(_cat_cond(a, b) for a, b in zip(cond, uncond))
    if cond is uncond or cond == uncond:
        return cond
    raise VideoForgeError(
        f"batched guidance cannot combine cond of type {type(cond).__name__} with uncond of type "
        f"{type(uncond).__name__}; use batched=False"
    )


def guided(
    model: CondModelFn,
    cond: C,
    uncond: C | None,
    scale: float,
    *,
    batched: bool = False,
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """A ``model_fn(x, sigma)`` returning ``uncond + scale * (cond - uncond)``.

    At ``scale == 1`` that is just the conditioned prediction, so the unconditioned pass is
    skipped. With ``batched=True`` both passes run as one forward on a doubled batch (faster when
    memory allows; the model must treat batch entries independently).
    """
    if scale != 1.0 and uncond is None:
        raise VideoForgeError(f"guidance scale {scale!r} needs a negative (uncond) conditioning")

    if scale == 1.0:
        return lambda x, sigma: model(x, sigma, cond)

    if batched:
        both = _cat_cond(cond, uncond)

        def model_fn(x: torch.Tensor, sigma: float) -> torch.Tensor:
            v_cond, v_uncond = model(torch.cat([x, x]), sigma, both).chunk(2)
            return v_uncond + scale * (v_cond - v_uncond)

        return model_fn

    def model_fn(x: torch.Tensor, sigma: float) -> torch.Tensor:
        v_cond = model(x, sigma, cond)
        v_uncond = model(x, sigma, uncond)
        return v_uncond + scale * (v_cond - v_uncond)

    return model_fn
