"""One Wan2.1 T2V DiT forward on CPU: VideoForge vs ComfyUI native vs diffusers.

All models share ONE random fp32 state dict (official key names), so timings compare the
implementations, not the weights; outputs are checked for agreement before anything is timed.
Run:  python bench/wan_dit_forward.py [--layers 30] [--frames 9] [--size 160] [--repeats 3]
See bench/README.md for what each figure means.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from models.common.memory import peak_rss_growth  # noqa: E402
from models.wan.convert import to_diffusers  # noqa: E402
from models.wan.family import build_dit  # noqa: E402
from models.wan.model import WanConfig, WanModel  # noqa: E402

Forward = Callable[[], torch.Tensor]
PROMPT_TOKENS, TEXT_LEN = 20, 512


def random_state_dict(cfg: WanConfig, seed: int) -> dict[str, torch.Tensor]:
    """Seeded weights, std 0.02 (norm gains ~1): keeps activations O(1) through 30 blocks."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WanModel(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        w = torch.randn(shape, generator=g).mul_(0.02)
        sd[k] = w.add_(1.0) if len(shape) == 1 and "norm" in k and k.endswith("weight") else w
    return sd


def build_models(sd: dict[str, torch.Tensor], cfg: WanConfig, x: torch.Tensor, t: torch.Tensor,
                 ctx: torch.Tensor, which: list[str]) -> dict[str, tuple[torch.nn.Module, Forward]]:
    """name -> (module, zero-arg forward). Every module aliases the tensors of `sd` (assign=True),
    so three frameworks cost one copy of the weights."""
    out: dict[str, tuple[torch.nn.Module, Forward]] = {}
    ours = build_dit(sd, "bench", None).dit
    lens = torch.tensor([PROMPT_TOKENS])
    if "videoforge" in which:   # as our sampler feeds it: 512 padded tokens + prompt lengths
        out["videoforge"] = (ours, lambda: ours(x, t, ctx, context_lens=lens))
    if "videoforge512" in which:  # no lengths: attends all 512 tokens, same math as the others
        out["videoforge512"] = (ours, lambda: ours(x, t, ctx))
    if "comfy" in which or "comfy_sdpa" in which:
        comfy_dir = os.environ.get("COMFYUI_DIR", os.path.join(sys.prefix, "comfyui"))
        sys.path.append(comfy_dir)   # appended: ComfyUI's own `models/` dir must not shadow ours
        import comfy.cli_args
        comfy.cli_args.args.cpu = True   # model_management probes CUDA at import otherwise
        import comfy.ops
        from comfy.ldm.wan.model import WanModel as ComfyWan
        native = ComfyWan(model_type="t2v", patch_size=cfg.patch, text_len=TEXT_LEN,
                          in_dim=cfg.in_dim, dim=cfg.dim, ffn_dim=cfg.ffn_dim, freq_dim=cfg.freq_dim,
                          text_dim=cfg.text_dim, out_dim=cfg.out_dim, num_heads=cfg.num_heads,
                          num_layers=cfg.num_layers, device="meta", dtype=torch.float32,
                          operations=comfy.ops.disable_weight_init)   # what ComfyUI uses for fp32
        native.load_state_dict(sd, assign=True)
        native.eval()
        if "comfy" in which:
            out["comfy"] = (native, lambda: native(x, t, ctx))
        import comfy.ldm.wan.model as cwm
        from comfy.ldm.modules.attention import attention_pytorch

        def native_sdpa() -> torch.Tensor:
            # ComfyUI --cpu picks sub-quadratic attention; --use-pytorch-cross-attention gives SDPA.
            saved, cwm.optimized_attention = cwm.optimized_attention, attention_pytorch
            try:
                return native(x, t, ctx)
            finally:
                cwm.optimized_attention = saved
        if "comfy_sdpa" in which:
            out["comfy_sdpa"] = (native, native_sdpa)
    if "diffusers" in which:
        from accelerate import init_empty_weights
        from diffusers import WanTransformer3DModel
        with init_empty_weights():   # params on meta, buffers (rope tables) real
            dif = WanTransformer3DModel(
                patch_size=cfg.patch, num_attention_heads=cfg.num_heads,
                attention_head_dim=cfg.dim // cfg.num_heads, in_channels=cfg.in_dim,
                out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
                ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=cfg.eps)
        dif.load_state_dict(to_diffusers(sd), assign=True)
        dif.eval()
        out["diffusers"] = (dif, lambda: dif(x, t, ctx, return_dict=False)[0])
    return out


def timed(fn: Forward) -> float:
    with torch.inference_mode():
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def peak_rss_growth_mb(fn: Forward) -> float:
    """Peak resident memory added by one forward (models.common.memory.peak_rss_growth)."""
    return peak_rss_growth(fn) / 2 ** 20


def matmul_gflops(m: int, k: int, n: int, reps: int = 10, mm: bool = False) -> float:
    """Best-of-`reps` fp32 GFLOP/s of torch.mm([m, k], [k, n]), or (mm=False) of F.linear([m, k],
    W[n, k]): the transposed-weight layout every nn.Linear in the forward uses. Best, not
    median: it is a ceiling, and background load on a shared box only ever lowers it."""
    a, w = torch.randn(m, k), torch.randn(n, k)
    wt = w.t().contiguous()
    fn = (lambda: torch.mm(a, wt)) if mm else (lambda: F.linear(a, w))
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 2 * m * k * n / min(ts) / 1e9


def count_flops(fn: Forward) -> tuple[int, dict[str, int]]:
    from torch.utils.flop_counter import FlopCounterMode
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        fn()
    by_op = {str(op): int(n) for op, n in fc.get_flop_counts()["Global"].items()}
    return int(fc.get_total_flops()), by_op


def profile_buckets(model: torch.nn.Module, fn: Forward, patches: dict[str, str]) -> dict[str, float]:
    """ms per category for one forward: norm / linear modules are labelled with hooks and the
    rope / attention functions (module-level names in `patches`) wrapped at runtime only."""
    from torch.profiler import ProfilerActivity, profile, record_function
    timed(fn)   # warm: the memory probe just returned every cached page to the OS
    undo, handles = [], []
    for qual, label in patches.items():
        mod_name, attr = qual.rsplit(".", 1)
        mod, orig = sys.modules[mod_name], getattr(sys.modules[mod_name], attr)

        def wrapped(*a, _orig=orig, _label=label, **kw):
            with record_function(_label):
                return _orig(*a, **kw)
        setattr(mod, attr, wrapped)
        undo.append((mod, attr, orig))
    def enter(mod: torch.nn.Module, _args) -> None:
        mod._rf = record_function(mod._label)
        mod._rf.__enter__()
    for m in model.modules():
        kind = type(m).__name__
        m._label = "norm" if "Norm" in kind else "linear" if kind == "Linear" else None
        if m._label:
            handles += [m.register_forward_pre_hook(enter),
                        m.register_forward_hook(lambda mod, a, o: mod._rf.__exit__(None, None, None))]
    try:
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            with record_function("forward"):
                fn()
    finally:
        for mod, attr, orig in undo:
            setattr(mod, attr, orig)
        for h in handles:
            h.remove()
    ev = {e.key: e.cpu_time_total / 1e3 for e in prof.key_averages()}
    buckets = {k: ev.get(k, 0.0) for k in ("linear", "attention", "rope", "norm")}
    buckets["other"] = ev["forward"] - sum(buckets.values())
    buckets["total"] = ev["forward"]
    # dtype casts / copies cut across the buckets above (e.g. inside rope and norms): own figure.
    buckets["copies_self"] = sum(e.self_cpu_time_total / 1e3 for e in prof.key_averages()
                                 if e.key in ("aten::copy_", "aten::clone"))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return buckets


PROFILE_PATCHES = {
    "videoforge": {"models.wan.model.apply_rope": "rope", "models.wan.model.attention": "attention"},
    "comfy": {"comfy.ldm.wan.model.apply_rope1": "rope",
              "comfy.ldm.wan.model.optimized_attention": "attention"},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=9, help="video frames (1 + 4k)")
    p.add_argument("--size", type=int, default=160, help="height = width in pixels (/16)")
    p.add_argument("--layers", type=int, default=30, help="DiT blocks (30 = real 1.3B)")
    p.add_argument("--repeats", type=int, default=3, help="timed forwards per framework")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--frameworks", default="videoforge,videoforge512,comfy,comfy_sdpa,diffusers")
    p.add_argument("--profile", action="store_true", help="per-category profile of ours + native")
    p.add_argument("--out", default=str(ROOT / "bench/results/wan_dit_forward.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    which = args.frameworks.split(",")

    cfg = WanConfig(num_layers=args.layers)
    g = torch.Generator().manual_seed(1)
    lat = (1 + (args.frames - 1) // 4, args.size // 8, args.size // 8)
    x = torch.randn(1, cfg.in_dim, *lat, generator=g)
    t = torch.tensor([500.0])                                   # sigma 0.5, * 1000
    ctx = torch.zeros(1, TEXT_LEN, cfg.text_dim)                # zero padding as UMT5 output
    ctx[:, :PROMPT_TOKENS] = torch.randn(1, PROMPT_TOKENS, cfg.text_dim, generator=g) * 0.2
    # Matmul ceiling first, on a quiet heap; L = tokens after the 1x2x2 patching.
    L = lat[0] * lat[1] * lat[2] // 4
    shapes = {"mm_2048": (2048, 2048, 2048),
              f"linear_{L}x{cfg.dim}x{cfg.ffn_dim}": (L, cfg.dim, cfg.ffn_dim),
              f"linear_{L}x{cfg.ffn_dim}x{cfg.dim}": (L, cfg.ffn_dim, cfg.dim),
              f"linear_{L}x{cfg.dim}x{cfg.dim}": (L, cfg.dim, cfg.dim)}
    mm = {k: matmul_gflops(*s, mm=k.startswith("mm")) for k, s in shapes.items()}
    t0 = time.perf_counter()
    sd = random_state_dict(cfg, seed=0)
    models = build_models(sd, cfg, x, t, ctx, which)
    load = os.getloadavg()[0]   # other processes on the box skew every figure: record it
    n_params = sum(v.numel() for v in sd.values()) / 1e9
    print(f"load average {load:.2f} before; built {len(models)} models on one {n_params:.2f}B-param"
          f" state dict in {time.perf_counter() - t0:.0f}s; latent {list(x.shape)}, "
          f"{args.threads} threads, {torch.backends.cpu.get_cpu_capability()}")

    # Warm-up doubles as the agreement check: same weights, same inputs, same numbers.
    with torch.inference_mode():
        outs = {n: fn().float() for n, (_, fn) in models.items()}
    ref = outs[next(iter(outs))]
    rel = {n: ((o - ref).abs().max() / ref.abs().max()).item() for n, o in outs.items()}
    if max(rel.values()) > 1e-4:
        sys.exit(f"outputs disagree (max rel diff vs {next(iter(outs))}): {rel}")

    # Round-robin so drift (turbo, noisy neighbours) hits every framework alike.
    times: dict[str, list[float]] = {n: [] for n in models}
    for _ in range(args.repeats):
        for n, (_, fn) in models.items():
            times[n].append(timed(fn))
    med = {n: statistics.median(v) for n, v in times.items()}
    mem = {n: peak_rss_growth_mb(fn) for n, (_, fn) in models.items()}

    mm = {k: max(v, matmul_gflops(*shapes[k], mm=k.startswith("mm"))) for k, v in mm.items()}
    first = next(iter(models))
    flops, by_op = count_flops(models[first][1])
    attn = sum(v for k, v in by_op.items() if "scaled_dot_product" in k)
    achieved = flops / med[first] / 1e9

    print(f"\n{'framework':<14}{'median s':>10}{'min s':>8}{'peak +RSS MB':>14}{'rel diff':>10}")
    for n in models:
        print(f"{n:<14}{med[n]:>10.3f}{min(times[n]):>8.3f}{mem[n]:>14.0f}{rel[n]:>10.1e}")
    ratios = {f"{first}/{n}": med[first] / med[n] for n in models if n != first}
    print("ratios (<1: ours faster): " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    print(f"FLOPs ({first}): {flops / 1e9:.1f} G, attention (SDPA) {attn / 1e9:.2f} G counted; "
          f"achieved {achieved:.0f} GFLOP/s")
    for k, v in mm.items():
        print(f"  fp32 {k:<22} {v:6.0f} GFLOP/s -> forward at {achieved / v:.0%} of it")

    prof = {}
    if args.profile:
        for n in ("videoforge", "comfy"):
            if n in models:
                prof[n] = profile_buckets(models[n][0], models[n][1], PROFILE_PATCHES[n])
                print(f"{n} ms: " + ", ".join(f"{k} {v:.0f}" for k, v in prof[n].items()))

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "config": vars(args) | {"latent": list(x.shape), "prompt_tokens": PROMPT_TOKENS,
                                "torch": torch.__version__,
                                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                "loadavg_before": load, "loadavg_after": os.getloadavg()[0]},
        "median_s": med, "times_s": times, "peak_rss_growth_mb": mem, "max_rel_diff": rel,
        "ratios": ratios, "flops": {"total": flops, "attention_sdpa": attn, "by_op": by_op,
                                    "achieved_gflops": achieved},
        "matmul_gflops": mm, "profile_ms": prof}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
