"""Working memory of one network forward per token, for the memory pre-check (models/common/memory.py).

For each family at its release width (fewer layers: at inference a block's activations are freed
before the next block runs, so depth does not change the peak), one forward as Sample Video calls
it (`model.denoise`) at two token counts; the peak RSS growth of each (kernel high-water mark,
`memory.peak_rss_growth`) gives a slope (bytes per token) and an intercept. The script prints
both and what the family's `activation_bytes` estimates for the same shapes.
Run:  python bench/activation_memory.py [--families wan13,wan14,easyanimate,sd15] [--threads 2]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from models.common.memory import fmt_bytes, peak_rss_growth  # noqa: E402


def random_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Seeded std-0.02 weights (norm gains ~1) in the module's own key names."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in module.state_dict().items():
        w = torch.randn(v.shape, generator=g).mul_(0.02)
        sd[k] = w.add_(1.0) if v.dim() == 1 and "norm" in k and k.endswith("weight") else w
    return sd


def wan(dim: int, ffn: int, layers: int):
    from models.wan.family import build_dit
    from models.wan.model import WanConfig, WanModel
    cfg = WanConfig(dim=dim, ffn_dim=ffn, num_heads=dim // 128, num_layers=layers)
    with torch.device("meta"):
        net = WanModel(cfg)
    sd = random_weights(net)
    model = build_dit(sd, "bench", None)
    cond = {"context": torch.randn(1, 512, 4096), "lengths": torch.tensor([20])}
    return model, cond


def easyanimate(layers: int, dim: int = 3072, ffn: int = 12288):
    from models.easyanimate.family import build_model
    from models.easyanimate.model import EasyAnimateConfig, EasyAnimateDiT
    cfg = EasyAnimateConfig(num_layers=layers, dim=dim, ffn_dim=ffn, freq_dim=dim)
    with torch.device("meta"):
        net = EasyAnimateDiT(cfg)
    sd = random_weights(net)
    model = build_model(sd, "bench", None)
    return model, {"context": torch.randn(1, 256, cfg.text_dim)}


def hunyuan(double: int = 1, single: int = 1, hidden: int = 3072):
    from models.hunyuan.family import build_model
    from models.hunyuan.model import HunyuanConfig, HunyuanDiT
    cfg = HunyuanConfig(double_depth=double, single_depth=single, hidden=hidden,
                        mlp_dim=4 * hidden, refiner_mlp_dim=4 * hidden)
    with torch.device("meta"):
        net = HunyuanDiT(cfg)
    model = build_model(random_weights(net), "bench", None)
    mask = torch.zeros(1, 256, dtype=torch.long)
    mask[:, :40] = 1   # a 40-token prompt in the 256 the text encoder returns
    return model, {"context": torch.randn(1, 256, 4096), "mask": mask,
                   "pooled": torch.randn(1, 768), "guidance": 6.0}


def sd15(channels: int = 320):
    from models.animatediff.family import SDVideoModel
    from models.animatediff.unet import UNet, UNetConfig
    with torch.device("meta"):
        net = UNet(UNetConfig(model_channels=channels))
    net = net.to_empty(device="cpu")
    net.load_state_dict(random_weights(net))
    return SDVideoModel(net, "bench"), {"context": torch.randn(1, 77, 768)}


SHAPES = {  # latent [B, C, T, H, W] at two sizes: tokens grow ~2x
    "wan13": [(1, 16, 5, 30, 52), (1, 16, 9, 30, 52)],
    "wan14": [(1, 16, 3, 30, 52), (1, 16, 5, 30, 52)],
    "easyanimate": [(1, 16, 3, 30, 52), (1, 16, 5, 30, 52)],
    "sd15": [(1, 4, 4, 64, 64), (1, 4, 8, 64, 64)],
    "hunyuan": [(1, 16, 3, 30, 52), (1, 16, 5, 30, 52)],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default="wan13,wan14,easyanimate,sd15,hunyuan")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    builders = {"wan13": lambda: wan(1536, 8960, 2), "wan14": lambda: wan(5120, 13824, 1),
                "easyanimate": lambda: easyanimate(1), "sd15": sd15, "hunyuan": hunyuan}
    for fam in args.families.split(","):
        model, cond = builders[fam]()
        rows = []
        for shape in SHAPES[fam]:
            x = torch.randn(shape)
            sigma = torch.full((shape[0],), 0.5 if model.prediction == "flow" else 500.0)
            model.denoise(x, sigma, cond)  # warm-up: lazily built tables, thread pools
            grown = peak_rss_growth(lambda: model.denoise(x, sigma, cond))
            rows.append((shape, model.tokens(shape), grown, model.activation_bytes(shape)))
        (_, n0, g0, _), (_, n1, g1, _) = rows
        slope = (g1 - g0) / (n1 - n0)
        print(f"{fam}: {slope:.0f} bytes/token measured (intercept {fmt_bytes(g0 - slope * n0)})")
        for shape, n, grown, est in rows:
            print(f"  {shape} {n} tokens: measured {fmt_bytes(grown)}, estimated {fmt_bytes(est)} "
                  f"(x{est / grown:.2f})")
        model = cond = None  # free before the next family is built


if __name__ == "__main__":
    main()
