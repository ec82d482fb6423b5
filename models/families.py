"""The built-in families, in the order their files are tried (first match names a file).
A new family adds its package here; everything it loads is declared in its `__init__.py`."""
from . import wan  # noqa: F401
from .common import clip_vision_family  # noqa: F401
from . import animatediff  # noqa: F401
from . import easyanimate  # noqa: F401
