"""Train a tiny Wan2.1-architecture VAE on the synthetic clips of `demo/data.py`, on CPU, and
save it as a ComfyUI-style single safetensors file (official Wan key names), fp16.

Why: random VAE weights make tiling seams look better or worse than a trained VAE's; the tiling
tests and bench/vae_tiling.py decode with this one (and the demo model of the tracker's issue 5
can reuse it). Deterministic for a given --steps / --seed (single-threaded data, seeded init).

    E=$(bash .ci/env.sh); $E/bin/python demo/train_vae.py --steps 400
        -> demo/weights/wan_vae_tiny.safetensors

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

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from demo.data import make_clip  # noqa: E402
from models.wan.convert import vae_from_diffusers  # noqa: E402
from models.wan.vae import LATENT_MEAN, LATENT_STD  # noqa: E402


def batch(step: int, size: int, frames: int, hw: int) -> torch.Tensor:
    clips = [make_clip(seed=step * size + i, frames=frames, height=hw, width=hw,
                       soft=1.0 + (step * size + i) % 3)[0] for i in range(size)]
    return torch.stack(clips)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=16, help="base channels (real Wan2.1: 96)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--kl", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "demo", "weights", "wan_vae_tiny.safetensors"))
    args = ap.parse_args()

    from diffusers import AutoencoderKLWan
    from safetensors.torch import save_file

    torch.manual_seed(args.seed)
    vae = AutoencoderKLWan(base_dim=args.dim, z_dim=16).float().train()
    opt = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    m = torch.tensor(LATENT_MEAN).view(1, -1, 1, 1, 1)
    s = torch.tensor(LATENT_STD).view(1, -1, 1, 1, 1)
    g = torch.Generator().manual_seed(args.seed + 1)
    t0 = time.time()
    for step in range(args.steps):
        x = batch(step, args.batch, args.frames, args.size)
        post = vae.encode(x).latent_dist
        mu, logvar = post.mean, post.logvar.clamp(-30, 20)
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=g)
        y = vae.decode(z).sample
        rec = (y - x).abs().mean() + (y - x).square().mean()
        var = logvar.exp() / s ** 2
        kl = 0.5 * ((mu - m) ** 2 / s ** 2 + var - 1 - var.log()).mean()
        loss = rec + args.kl * kl
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 20 == 0 or step == args.steps - 1:
            psnr = -10 * torch.log10(((y - x) / 2).square().mean()).item()
            print(f"step {step:4d}  rec {rec.item():.4f}  kl {kl.item():.2f}  psnr {psnr:.1f} dB  "
                  f"{time.time() - t0:.0f} s", flush=True)
    sd = vae_from_diffusers({k: v.detach().half().contiguous() for k, v in vae.state_dict().items()})
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    save_file(sd, args.out, metadata={"trained_by": "demo/train_vae.py", "steps": str(args.steps),
                                      "dim": str(args.dim), "seed": str(args.seed)})
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
