"""Train a tiny Wan2.1-architecture VAE on the synthetic clips of `demo/data.py`, on CPU, and
save it as a ComfyUI-style single safetensors file (official Wan key names), fp16.

It is the VAE of the demo model (`demo/train.py` calls `train_vae`), and the tiling tests and
bench/vae_tiling.py decode with it (random VAE weights make tiling seams look better or worse
than a trained VAE's). Deterministic for a given --steps / --seed and thread count
(single-threaded data, seeded init).

    E=$(bash .ci/env.sh); $E/bin/python demo/train_vae.py --steps 900
        -> demo/weights/vae/videoforge_demo_wan_vae.safetensors

Training uses diffusers' AutoencoderKLWan (the reference implementation, with gradients);
the file it writes is loaded by our own `models/wan/vae.py` like a real wan_2.1_vae.safetensors.
The KL term pulls each latent channel toward Wan2.1's published per-channel mean / std, so the
normalised latents the diffusion model sees are about unit scale, as with the real VAE.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

import math

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from demo.data import make_clip  # noqa: E402
from models.wan.convert import vae_from_diffusers  # noqa: E402
from models.wan.vae import LATENT_MEAN, LATENT_STD  # noqa: E402

VAE_PATH = os.path.join(ROOT, "demo", "weights", "vae", "videoforge_demo_wan_vae.safetensors")


def batch(step: int, size: int, frames: int, hw: int) -> torch.Tensor:
    clips = [make_clip(seed=step * size + i, frames=frames, height=hw, width=hw,
                       soft=1.0 + (step * size + i) % 3)[0] for i in range(size)]
    return torch.stack(clips)


def colour_anchor(x: torch.Tensor) -> torch.Tensor:
    """The clip averaged over each latent cell ([B, 3, 1 + (F-1)/4, H/8, W/8]): the first frame
    alone, then groups of 4 frames, 8x8 pixels, as the latent grid covers the clip."""
    xt = torch.cat([x[:, :, :1], F.avg_pool3d(x[:, :, 1:], (4, 1, 1))], 2) if x.shape[2] > 1 else x
    return F.avg_pool3d(xt, (1, 8, 8))


def init_weights(vae: torch.nn.Module) -> None:
    """Variance-preserving convolutions and zero biases. With PyTorch's default init (small
    weights, random biases) the bias terms dominate after a few layers, the per-pixel RMS norms
    then see almost the same vector everywhere, and the network settles on the dataset mean
    colour (about 15.5 dB) and stays there."""
    for m in vae.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)


def _optimiser(params: list[torch.nn.Parameter], lr: float, steps: int):
    """Adam with a cosine decay to 10% over `steps`."""
    opt = torch.optim.Adam(params, lr=lr)
    return opt, torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / steps)))


def _update(loss: torch.Tensor, opt, sched, params: list[torch.nn.Parameter]) -> None:
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 5.0)
    opt.step()
    sched.step()


def _psnr(y: torch.Tensor, x: torch.Tensor) -> float:
    """dB between two clips in [-1, 1]."""
    return -10 * torch.log10(((y - x) / 2).square().mean()).item()


def _fit(vae, steps: int, phases: Callable[[int], tuple[int, int]], lr: float, kl_weight: float,
         anchor_weight: float, seed: int, log: Callable[[str], None], first_clip: int = 0):
    """Adam with a cosine decay to 10%; `phases(step)` -> (frames, batch size) of that step."""
    params = list(vae.parameters())
    opt, sched = _optimiser(params, lr, steps)
    m = torch.tensor(LATENT_MEAN).view(1, -1, 1, 1, 1)
    s = torch.tensor(LATENT_STD).view(1, -1, 1, 1, 1)
    g = torch.Generator().manual_seed(seed + 1)
    t0 = time.time()
    for step in range(steps):
        frames, size = phases(step)
        x = batch(first_clip + step, size, frames, 64)
        post = vae.encode(x).latent_dist
        mu, logvar = post.mean, post.logvar.clamp(-30, 20)
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=g)
        y = vae.decode(z).sample
        rec = (y - x).abs().mean() + (y - x).square().mean()
        var = logvar.exp() / s ** 2
        kl = 0.5 * ((mu - m) ** 2 / s ** 2 + var - 1 - var.log()).mean()
        anchor = (mu[:, :3] - 2 * colour_anchor(x)).square().mean()
        _update(rec + kl_weight * kl + anchor_weight * anchor, opt, sched, params)
        if step % 20 == 0 or step == steps - 1:
            log(f"vae step {step:4d} ({frames} frames)  rec {rec.item():.4f}  anchor {anchor.item():.3f}  "
                f"kl {kl.item():.2f}  psnr {_psnr(y, x):.1f} dB  {time.time() - t0:.0f} s")
    return vae.eval()


def train_vae(steps: int, dim: int = 16, lr: float = 3e-4, kl_weight: float = 1e-4,
              anchor_weight: float = 1.0, image_steps: int | None = None, seed: int = 0,
              log: Callable[[str], None] = print):
    """-> a trained diffusers AutoencoderKLWan (fp32, eval mode).

    The first `image_steps` (default: a third) train on single frames, batch 8 (the causal VAE's
    image mode: the spatial path, ~4x cheaper), the rest on 5-frame clips, batch 4 (the temporal
    path and its cache). A colour anchor asks latent channels 0..2 to hold the cell's mean RGB,
    so the encoder passes information from the first steps on instead of the decoder learning
    the mean first (the diffusion model also gets a latent whose first channels read as colour).
    """
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=dim, z_dim=16).float().train()
    init_weights(vae)
    image_steps = steps // 3 if image_steps is None else image_steps
    return _fit(vae, steps, lambda i: (1, 8) if i < image_steps else (5, 4), lr, kl_weight,
                anchor_weight, seed, log)


def finetune_vae(path: str, steps: int, frames: int = 9, batch_size: int = 4, lr: float = 2e-4,
                 kl_weight: float = 1e-4, anchor_weight: float = 0.0, seed: int = 0,
                 log: Callable[[str], None] = print):
    """Continue training the VAE saved at `path` on longer clips (default 9 frames: the first
    frame, a chunk whose cache holds it, and a chunk whose cache holds a full 4-frame chunk, the
    steady state of every later chunk). 5-frame training alone leaves frames after the first
    chunk blurred on 17-frame clips. No colour anchor by default: it has done its job, and after
    `standardise_latents` the raw latent no longer has its scale. -> diffusers AutoencoderKLWan
    (fp32, eval mode)."""
    torch.manual_seed(seed)
    vae = _load_diffusers(path)
    # new clips (seeds past those of train_vae's steps)
    return _fit(vae, steps, lambda i: (frames, batch_size), lr, kl_weight,
                anchor_weight, seed + 100, log, first_clip=100_000)


def finetune_decoder(path: str, steps: int, frames: int = 17, batch_size: int = 2, lr: float = 1e-4,
                     seed: int = 0, log: Callable[[str], None] = print):
    """Train only the decoder side (`conv2` + decoder) of the VAE saved at `path` on full-length
    clips (17 frames: five latent frames, the cache carried through four chunks). The encoder is
    frozen, so every latent it gives, and so what the diffusion model was trained on, stays the
    same: this can run after the DiT. -> diffusers AutoencoderKLWan (fp32, eval mode)."""
    vae = _load_diffusers(path)
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    opt, sched = _optimiser(params, lr, steps)
    g = torch.Generator().manual_seed(seed + 200)
    t0 = time.time()
    for step in range(steps):
        x = batch(200_000 + step, batch_size, frames, 64)
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        y = vae.decode(z).sample
        rec = (y - x).abs().mean() + (y - x).square().mean()
        _update(rec, opt, sched, params)
        if step % 20 == 0 or step == steps - 1:
            log(f"vae decoder step {step:4d} ({frames} frames)  rec {rec.item():.4f}  "
                f"psnr {_psnr(y, x):.1f} dB  {time.time() - t0:.0f} s")
    return vae.eval()


def _load_diffusers(path: str):
    """A diffusers AutoencoderKLWan (fp32, train mode) holding the official-layout file's weights."""
    from diffusers import AutoencoderKLWan
    from safetensors.torch import load_file

    from models.wan.convert import vae_key_from_diffusers

    official = load_file(path)
    vae = AutoencoderKLWan(base_dim=official["encoder.conv1.weight"].shape[0], z_dim=16)
    vae.load_state_dict({k: official[vae_key_from_diffusers(k)].float() for k in vae.state_dict()})
    return vae.float().train()


def save_vae(vae, path: str, metadata: dict[str, str]) -> None:
    """Official Wan key names, fp16: what ComfyUI's wan_2.1_vae.safetensors looks like."""
    from safetensors.torch import save_file

    sd = vae_from_diffusers({k: v.detach().half().contiguous() for k, v in vae.state_dict().items()})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(sd, path, metadata=metadata)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=16, help="base channels (real Wan2.1: 96)")
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--kl", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=VAE_PATH)
    args = ap.parse_args()
    t0 = time.time()
    vae = train_vae(args.steps, args.dim, args.lr, args.kl, seed=args.seed)
    save_vae(vae, args.out, {"trained_by": "demo/train_vae.py", "steps": str(args.steps),
                             "dim": str(args.dim), "seed": str(args.seed)})
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
