"""Pure-PyTorch model code of VideoForge. Nothing in this package imports ComfyUI."""
