"""EasyAnimate V5.1 model family (MMDiT transformer, Qwen2-VL text encoder, MagVIT VAE)."""
