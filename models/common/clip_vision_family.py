"""CLIP vision towers (image-to-video conditioning), shared by the families that use them."""
from .registry import Family, Kind, register


def _is_clip_vision(sd) -> bool:
    from .clip_vision import detect_clip_vision
    return detect_clip_vision(sd) is not None


def _clip_vision(sd, name, dtype, path):
    from .clip_vision import load_clip_vision
    return load_clip_vision(sd, dtype=dtype, name=name)


FAMILY = register(Family("common", (
    Kind("a CLIP vision encoder", "clip_vision", _is_clip_vision),
), {"clip_vision": _clip_vision}))
