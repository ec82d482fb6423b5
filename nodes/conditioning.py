"""Encode Prompt."""
from __future__ import annotations

from .bridge import CATEGORY, use


class EncodePrompt:
    DISPLAY_NAME = "Encode Prompt"
    CATEGORY = f"{CATEGORY}/conditioning"
    RETURN_TYPES = ("VF_CONDITIONING",)
    RETURN_NAMES = ("conditioning",)
    FUNCTION = "encode"
    DESCRIPTION = "Encodes the positive and negative prompt with the loaded text encoder."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text_encoder": ("VF_TEXT_ENCODER",),
            "positive": ("STRING", {"multiline": True, "default": ""}),
            "negative": ("STRING", {"multiline": True, "default": ""}),
        }}

    def encode(self, text_encoder, positive: str, negative: str):
        dev = use(text_encoder)
        pos = text_encoder.encode([positive], device=dev)
        neg = text_encoder.encode([negative], device=dev)
        return ({"family": text_encoder.family, "positive": pos, "negative": neg},)


NODES = {"VFEncodePrompt": EncodePrompt}
