"""EasyAnimate V5.1 12B: memory of one transformer block at bf16 vs fp8 storage (CPU).

The 12B architecture (width 3072, 48 MMDiT blocks, Qwen2-VL text 3584 wide) is too large to
materialise here, and its memory is per block anyway: one block is built with random weights in
each storage dtype, and for each the script reports the bytes the block's weights take, the
whole transformer's extrapolation (48 blocks + the rest, counted from shapes), and the peak
resident memory one block forward adds on top of its weights (fp32 compute, as on CPU: every
layer casts its stored weight to the activation dtype when it runs, so fp8 storage costs one
layer's fp32 copy at a time, not a second model). Also the max relative error of the fp8 block
output vs bf16 storage.
Run:  python bench/easyanimate_block.py [--frames 1] [--size 384x672] [--text 256]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from models.easyanimate.model import Block, EasyAnimateConfig, EasyAnimateDiT, rope_cos_sin  # noqa: E402
from wan_dit_forward import peak_rss_growth_mb, timed  # noqa: E402


def block_with(cfg: EasyAnimateConfig, storage: torch.dtype, seed: int = 0) -> Block:
    """One block, random weights (std 0.02, norms ~1) stored in `storage` (>= 2-D weights;
    norms and biases stay float32 as our loader keeps them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        block = Block(cfg)
    block = block.to_empty(device="cpu")
    for name, p in block.named_parameters():
        if p.dim() >= 2:
            w = torch.randn(p.shape, generator=g) * 0.02
            p.data = w.to(storage)
        else:
            p.data = (1 + 0.1 * torch.randn(p.shape, generator=g)) if "norm" in name \
                else 0.02 * torch.randn(p.shape, generator=g)
    return block.eval()


def param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=1, help="latent frames")
    ap.add_argument("--size", default="384x672", help="video HxW in pixels")
    ap.add_argument("--text", type=int, default=256, help="text tokens (the pipeline pads to 256)")
    ap.add_argument("--out", default="out/bench_easyanimate_block.json")
    args = ap.parse_args()
    cfg = EasyAnimateConfig()
    hp, wp = (int(v) for v in args.size.split("x"))
    gh, gw = hp // 16, wp // 16
    tokens = args.frames * gh * gw
    with torch.device("meta"):
        full = EasyAnimateDiT(cfg)
    n_block = sum(p.numel() for p in full.transformer_blocks[0].parameters())
    n_total = sum(p.numel() for p in full.parameters())
    n_rest = n_total - cfg.num_layers * n_block
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, tokens, cfg.dim, generator=g)
    c = torch.randn(1, args.text, cfg.dim, generator=g)
    temb = torch.randn(1, cfg.time_embed_dim, generator=g)
    cos, sin = rope_cos_sin(cfg.head_dim, args.frames, gh, gw, cfg.patch_size)
    result = {"config": "EasyAnimateV5.1-12b", "params_total": n_total, "params_block": n_block,
              "tokens": {"video": tokens, "text": args.text}, "rows": {}}
    outs = {}
    for name, dt in (("bf16", torch.bfloat16), ("fp8_e4m3fn", torch.float8_e4m3fn)):
        block = block_with(cfg, dt)
        run = lambda: block(x, c, temb, cos, sin)  # noqa: E731
        peak = peak_rss_growth_mb(run)
        with torch.inference_mode():
            outs[name] = run()[0]
        weights = param_bytes(block)
        whole = weights * cfg.num_layers + n_rest * 2  # embeddings / out layers kept in bf16
        result["rows"][name] = {"block_weights_mb": round(weights / 2**20, 1),
                                "transformer_gb": round(whole / 2**30, 2),
                                "forward_peak_mb": round(peak), "forward_s": round(timed(run), 2)}
        print(name, result["rows"][name], flush=True)
        del block
    ref = outs["bf16"]
    result["fp8_vs_bf16_max_rel"] = ((outs["fp8_e4m3fn"] - ref).abs().max() / ref.abs().max()).item()
    print("fp8 vs bf16 storage, max rel diff of the block output:", result["fp8_vs_bf16_max_rel"])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
