"""AnimateDiff: Stable Diffusion 1.5 (UNet, VAE, CLIP-L) with motion modules injected."""
