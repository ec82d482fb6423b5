"""VideoForge: video generation nodes for ComfyUI (registration only; code lives in nodes/, models/)."""
import importlib.util

if importlib.util.find_spec("folder_paths") is not None:  # running inside ComfyUI
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # imported as a plain package (e.g. pytest walking the repo): models/ work without ComfyUI
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
