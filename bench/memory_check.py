"""The memory pre-check's estimates against measured peaks, for whole requests.

For three request sizes, Sample Video (models.sampling.video.generate, 2 steps, cfg > 1) and
Decode Video with a Wan2.1-architecture model: the estimate the nodes compare with the free
memory (`memory.sampling_estimate`, `memory.vae_estimate`) next to the peak RSS growth of
the same call (`memory.peak_rss_growth`). The DiT is the 1.3B width with 2 blocks (random
weights: memory does not depend on their values), the VAE the demo model's.
Run:  python bench/memory_check.py [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from activation_memory import wan  # noqa: E402
from demo.train import VAE_PATH  # noqa: E402
from models.common.memory import fmt_bytes, peak_rss_growth, sampling_estimate, vae_estimate  # noqa: E402
from models.common.tiling import TilePlan  # noqa: E402
from models.loader import load_video_vae  # noqa: E402
from models.sampling.video import generate  # noqa: E402

SIZES = [(256, 256, 17), (480, 320, 33), (640, 480, 49)]   # width, height, frames


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    model, cond = wan(1536, 8960, 2)
    neg = {"context": torch.randn(1, 512, 4096), "lengths": torch.tensor([12])}
    vae = load_video_vae(str(VAE_PATH), "fp32")
    print("request                   | Sample Video est / measured     | Decode Video est / measured")
    for w, h, f in SIZES:
        shape = model.latent.shape(1, f, h, w)
        lat = torch.zeros(shape)

        def sample():
            return generate(model, lat, cond, neg, seed=0, steps=2, cfg=5.0, solver="unipc")

        sample()  # warm-up
        s_meas = peak_rss_growth(sample)
        s_est = sampling_estimate(model, shape, None, cpu).total
        z = torch.randn(shape) * 0.5
        plan = TilePlan()
        d_meas = peak_rss_growth(lambda: vae.decode(z, plan=plan))
        d_est = vae_estimate("", vae, plan, f, h, w, cpu, 1, "").total
        print(f"{w}x{h}, {f} frames".ljust(26) +
              f"| {fmt_bytes(s_est)} / {fmt_bytes(s_meas)} (x{s_est / s_meas:.2f})".ljust(34) +
              f"| {fmt_bytes(d_est)} / {fmt_bytes(d_meas)} (x{d_est / d_meas:.2f})")


if __name__ == "__main__":
    main()
