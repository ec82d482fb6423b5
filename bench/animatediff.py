"""AnimateDiff on CPU: one UNet call (one denoising step, one CFG pass) at the real SD1.5 + v2
motion-module sizes, VideoForge vs ComfyUI native vs diffusers, and the peak memory of a long
clip with and without context windows.

All frameworks share ONE random fp32 copy of the weights (UNet 860M parameters + a v2-shaped
motion module): the diffusers `UNetMotionModel` is built once, and ours / ComfyUI's alias its
tensors (our loaders take the LDM / official-layout names, converted by name only).
Run:  python bench/animatediff.py [--size 256] [--frames 16] [--long 48] [--window 16]
See bench/README.md for what each figure means.
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
sys.path.insert(0, str(ROOT / "tests"))
from fixtures.sd_unet import unet_to_ldm  # noqa: E402  (diffusers -> LDM names; tested there)
from models.animatediff.family import build_unet  # noqa: E402
from models.animatediff.motion import MotionSet, build_motion_model  # noqa: E402
from models.sampling.context import ContextOptions, windowed  # noqa: E402
from wan_dit_forward import peak_rss_growth_mb, timed  # noqa: E402

SD15 = dict(cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280))


def build(seed: int = 0):
    """diffusers UNetMotionModel (SD1.5 + v2-shaped module, random) and ours on its tensors."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SD15)
    # v2's shape (mid block); a 64-frame PE (AnimateLCM's length) so that one call may take a
    # whole long clip for the no-context-windows row
    adapter = MotionAdapter(motion_max_seq_length=64, use_motion_mid_block=True)
    with torch.no_grad():  # the zero-initialised proj_out would make the modules identities
        for n, p in adapter.named_parameters():
            if "proj_out" in n:
                p.normal_(0, 0.02)
    ref = UNetMotionModel.from_unet2d(unet, adapter).eval()
    del unet, adapter
    sd = ref.state_dict()
    spatial = {k: v for k, v in sd.items() if ".motion_modules." not in k}
    motion = {k: v for k, v in sd.items() if ".motion_modules." in k}
    ldm = {"model.diffusion_model." + k: v for k, v in unet_to_ldm(spatial).items()}
    ours = build_unet(ldm, "bench", None)
    mm = build_motion_model(motion, "bench-mm")
    return ref, ours, mm, ldm


def comfy_unet(ldm: dict[str, torch.Tensor]):
    comfy_dir = os.environ.get("COMFYUI_DIR", os.path.join(sys.prefix, "comfyui"))
    sys.path.append(comfy_dir)
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import comfy.model_detection
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    cfg = comfy.model_detection.detect_unet_config(ldm, "model.diffusion_model.")
    cfg.pop("image_model", None)
    cfg.update(num_heads=8, num_head_channels=-1)  # comfy.supported_models.SD15.unet_extra_config
    native = UNetModel(**cfg, device="meta", operations=comfy.ops.disable_weight_init)
    sd = {k[len("model.diffusion_model."):]: v for k, v in ldm.items()}
    native.load_state_dict(sd, assign=True)
    return native.eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--long", type=int, default=48)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--overlap", type=int, default=4)
    ap.add_argument("--out", default="out/bench_animatediff.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    ref, ours, mm, ldm = build()
    native = comfy_unet(ldm)
    s = args.size // 8
    ctx = torch.randn(1, 77, 768)
    t = torch.tensor([500.0])

    def latent(frames: int) -> torch.Tensor:
        return torch.randn(1, 4, frames, s, s, generator=torch.Generator().manual_seed(frames))

    ad = ours.with_motion(MotionSet(mm, "mm", temporal_norm="clip"))  # diffusers' norm: same cost
    x16 = latent(args.frames)
    flat = x16[0].transpose(0, 1)  # [(B T), 4, s, s]
    rows = {
        "sd_videoforge": lambda: ours.denoise(x16, t, {"context": ctx}),
        "sd_comfy": lambda: native(flat, t.repeat(args.frames), ctx.repeat(args.frames, 1, 1)),
        "ad_videoforge": lambda: ad.denoise(x16, t, {"context": ctx}),
        "ad_diffusers": lambda: ref(x16, t, ctx.repeat(args.frames, 1, 1)).sample,
    }
    with torch.inference_mode():  # agreement first: like must be compared with like
        a, b = rows["sd_videoforge"](), rows["sd_comfy"]().transpose(0, 1)[None]
        c, d = rows["ad_videoforge"](), rows["ad_diffusers"]()
    agree = {"sd vs comfy": ((a - b).abs().max() / b.abs().max()).item(),
             "ad vs diffusers": ((c - d).abs().max() / d.abs().max()).item()}
    print("max rel diff:", agree)
    assert max(agree.values()) < 1e-4, agree
    del a, b, c, d
    result = {"size": args.size, "frames": args.frames, "agreement": agree, "rows": {}}
    for name, fn in rows.items():
        peak = peak_rss_growth_mb(fn)
        result["rows"][name] = {"s": round(timed(fn), 2), "peak_mb": round(peak)}
        print(name, result["rows"][name], flush=True)
    # A long clip: one UNet call over all frames vs context windows (what Sample Video does at
    # every step). The bench module's PE covers 64 frames, so both are legal for 48 frames.
    opts = ContextOptions(length=args.window, overlap=args.overlap, schedule="static", fuse="pyramid")
    long_model = ours.with_motion(MotionSet(mm, "mm"))
    x_long = latent(args.long)
    win = windowed(long_model.denoise, opts, lambda _t: 0)
    for name, fn in {f"ad{args.long}_no_context": lambda: long_model.denoise(x_long, t, {"context": ctx}),
                     f"ad{args.long}_context_{args.window}_{args.overlap}":
                         lambda: win(x_long, t, {"context": ctx})}.items():
        peak = peak_rss_growth_mb(fn)
        result["rows"][name] = {"s": round(timed(fn), 2), "peak_mb": round(peak)}
        print(name, result["rows"][name], flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
