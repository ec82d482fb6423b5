"""The built-in families and the order their files are tried in (the first match names a
file: e.g. a Wan DiT is recognised before anything that would also match its keys). A new
family adds its package import and its name here; everything it loads is declared in its own
`__init__.py` (`models/common/registry.register`)."""
from . import animatediff, easyanimate, hunyuan, wan  # noqa: F401  (each registers itself on import)
from .common import clip_vision_family  # noqa: F401

ORDER = ("wan", "common", "sd15", "easyanimate", "hunyuan")
