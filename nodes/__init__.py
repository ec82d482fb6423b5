"""ComfyUI adapters: widgets in, calls into `models/`, ComfyUI types out. No tensor math here."""
from . import animatediff, loaders, latent, sampling, vae, conditioning, preprocess, context

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
for _mod in (loaders, animatediff, conditioning, latent, context, sampling, vae, preprocess):
    NODE_CLASS_MAPPINGS.update(_mod.NODES)
    NODE_DISPLAY_NAME_MAPPINGS.update({k: v.DISPLAY_NAME for k, v in _mod.NODES.items()})
