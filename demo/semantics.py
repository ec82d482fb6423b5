"""What does a generated demo clip show? The colour of its dominant saturated blob and the
direction that blob's centroid moves: the two things a demo prompt ("a red circle moving
right") asks for, measured on the pixels alone.

    track = analyse(frames)          # frames [F, H, W, 3] in 0..1 (ComfyUI IMAGE) or uint8
    ok = track.matches("red", "right")

Backgrounds of the training clips are pale (every channel 0.55..0.95, so max - min <= 0.4);
the shapes are saturated (max - min >= 0.7). A pixel counts for a colour when it is saturated
and that colour's channel is the largest; the blob is the largest connected region of such
pixels in a frame.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import torch

COLOUR_CHANNEL = {"red": 0, "green": 1, "blue": 2}
SATURATION = 0.45   # max - min channel: above any background, below any shape colour
MIN_AREA = 12       # pixels: smaller regions are specks, not the shape
MIN_SHIFT = 0.15    # centroid travel as a fraction of the frame side (the clips travel 0.45)


@dataclass
class Track:
    colour: str | None                         # dominant colour over the clip (None: no blob)
    centroids: list[tuple[float, float] | None]  # (x, y) per frame, None where no blob
    shift: tuple[float, float]                 # (dx, dy) last frames - first frames, in pixels
    size: int                                  # frame side (min of H, W)

    @property
    def direction(self) -> str | None:
        dx, dy = self.shift
        if max(abs(dx), abs(dy)) < MIN_SHIFT * self.size:
            return None
        if abs(dx) >= abs(dy):
            return "right" if dx > 0 else "left"
        return "down" if dy > 0 else "up"

    def matches(self, colour: str, direction: str) -> bool:
        return self.colour == colour and self.direction == direction

    def describe(self) -> str:
        dx, dy = self.shift
        return f"{self.colour or 'no'} blob moving {self.direction or 'nowhere'} (dx {dx:+.1f}, dy {dy:+.1f} px)"


def _as_float(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    a = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"frames must be [F, H, W, 3], got {a.shape}")
    return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)


def colour_masks(frames: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """colour -> bool [F, H, W]: saturated pixels whose largest channel is that colour's."""
    a = _as_float(frames)
    sat = a.max(-1) - a.min(-1) > SATURATION
    top = a.argmax(-1)
    return {c: sat & (top == ch) for c, ch in COLOUR_CHANNEL.items()}


def _largest_blob_centroid(mask: np.ndarray) -> tuple[float, float] | None:
    import cv2

    n, _, stats, cents = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[best, cv2.CC_STAT_AREA] < MIN_AREA:
        return None
    return float(cents[best][0]), float(cents[best][1])


def analyse(frames: torch.Tensor | np.ndarray, ends: int = 3) -> Track:
    """Dominant colour (most saturated pixels over the clip) and its blob's travel: mean centroid
    of the last `ends` frames that have a blob minus that of the first `ends`."""
    masks = colour_masks(frames)
    f, h, w = next(iter(masks.values())).shape
    counts = {c: int(m.sum()) for c, m in masks.items()}
    colour = max(counts, key=counts.get)
    if counts[colour] < MIN_AREA:
        return Track(None, [None] * f, (0.0, 0.0), min(h, w))
    cents = [_largest_blob_centroid(masks[colour][i]) for i in range(f)]
    seen = [c for c in cents if c is not None]
    if len(seen) < 2:
        return Track(colour, cents, (0.0, 0.0), min(h, w))
    k = max(1, min(ends, len(seen) // 2))
    first = np.mean(seen[:k], axis=0)
    last = np.mean(seen[-k:], axis=0)
    return Track(colour, cents, (float(last[0] - first[0]), float(last[1] - first[1])), min(h, w))


def parse_prompt(prompt: str) -> tuple[str, str]:
    """("red", "right") from "a red circle moving right" (the demo vocabulary), read the way the
    demo tokenizer reads it: case, punctuation and quotes aside ("A red circle, moving RIGHT.")."""
    words = re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", prompt).casefold())
    colour = next((w for w in words if w in COLOUR_CHANNEL), None)
    direction = next((w for w in reversed(words) if w in ("left", "right", "up", "down")), None)
    if colour is None or direction is None:
        raise ValueError(f"prompt {prompt!r} names no colour (red / green / blue) or direction "
                         "(left / right / up / down)")
    return colour, direction
