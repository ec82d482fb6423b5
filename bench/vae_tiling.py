"""Wan2.1 VAE decode: peak memory and time, untiled vs tiled, VideoForge vs ComfyUI native,
on the same weights; and how far tiled output is from untiled (trained tiny VAE).

Every measurement runs in a fresh subprocess (`--worker`), so one run's allocator cache never
flatters the next. Peak memory = the kernel's resident high-water mark during the decode minus
the resident size just before it (weights and input latent excluded; the output video, which
any decoder must hand back, included — reported separately too).

    E=$(bash .ci/env.sh); $E/bin/python bench/vae_tiling.py            # ~20 min on 2 cores
    $E/bin/python bench/vae_tiling.py --quick                          # smaller sizes, ~3 min

Writes a JSON next to the printed tables (bench/results/vae_tiling.json).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from models.common.memory import peak_rss_growth  # noqa: E402

TRAINED = ROOT / "demo" / "weights" / "vae" / "videoforge_demo_wan_vae.safetensors"


# ------------------------------------------------------------------ worker (one decode)
def random_vae_sd(dim: int, seed: int = 0) -> dict[str, torch.Tensor]:
    from models.wan.vae import WanVAE
    torch.manual_seed(seed)
    m = WanVAE(dim, 16)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
            elif p.dim() > 1:
                torch.nn.init.kaiming_uniform_(p, a=5 ** 0.5)
                p.mul_(0.5)
            else:
                p.zero_()
    return {k: v.contiguous() for k, v in m.state_dict().items()}


def latent_for(job: dict) -> torch.Tensor:
    """Normalised latent: random for the memory rows; the trained VAE's encoding of a synthetic
    clip for the error rows (decoding noise through a trained VAE is not what users do)."""
    t, h, w = (job["frames"] - 1) // 4 + 1, job["height"] // 8, job["width"] // 8
    if job.get("clip"):
        from demo.data import make_clip
        from models.wan.vae import WanVAE
        from safetensors.torch import load_file
        clip, _ = make_clip(seed=5, frames=job["frames"], height=job["height"], width=job["width"], soft=2.0)
        return WanVAE.from_state_dict(load_file(str(TRAINED))).encode(clip[None])
    return torch.randn(1, 16, t, h, w, generator=torch.Generator().manual_seed(0))


def worker(job: dict) -> dict:
    torch.set_num_threads(job.get("threads") or torch.get_num_threads())
    from models.wan.vae import LATENT_MEAN, LATENT_STD, WanVAE
    from safetensors.torch import load_file
    sd = load_file(str(TRAINED)) if job["weights"] == "trained" else random_vae_sd(job["dim"])
    sd = {k: v.float() for k, v in sd.items()}
    lat = latent_for(job)
    if job["impl"] == "videoforge":
        from models.common.tiling import TilePlan
        vae = WanVAE.from_state_dict(sd).eval()
        plan = TilePlan(job["tile"], job["overlap"], job.get("t_tile", 0), job.get("t_overlap", 8))

        def run():
            with torch.inference_mode():
                return (vae.decode(lat, plan=plan) + 1) / 2   # [1, 3, F, H, W] in 0..1
    else:
        comfy_dir = os.environ.get("COMFYUI_DIR", os.path.join(sys.prefix, "comfyui"))
        sys.path.append(comfy_dir)
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        import importlib.util

        import comfy.sd
        # ComfyUI's nodes.py by path: our own `nodes/` package comes first on sys.path
        spec = importlib.util.spec_from_file_location("comfy_nodes", os.path.join(comfy_dir, "nodes.py"))
        comfy_nodes = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(comfy_nodes)
        vae = comfy.sd.VAE(sd=sd)
        raw = lat * torch.tensor(LATENT_STD).view(1, -1, 1, 1, 1) + torch.tensor(LATENT_MEAN).view(1, -1, 1, 1, 1)

        def run():
            with torch.inference_mode():
                if job["tile"]:
                    img = comfy_nodes.VAEDecodeTiled().decode(
                        vae, {"samples": raw}, job["tile"], job["overlap"],
                        job.get("t_tile") or 64, job.get("t_overlap") or 8)[0]
                else:
                    img = comfy_nodes.VAEDecode().decode(vae, {"samples": raw})[0]
                return img.reshape(1, -1, *img.shape[-3:]).permute(0, 4, 1, 2, 3)  # [1, 3, F, H, W]
    box: dict = {}

    def timed_run() -> None:
        t0 = time.perf_counter()
        box["out"] = run()
        box["secs"] = time.perf_counter() - t0

    peak_mb = peak_rss_growth(timed_run) / 2 ** 20
    out, secs = box["out"], box["secs"]
    res = {**job, "seconds": secs, "peak_mb": peak_mb, "output_mb": out.numel() * 4 / 2 ** 20,
           "shape": list(out.shape)}
    if job.get("save"):
        torch.save(out.float().contiguous(), job["save"])
    return res


# ------------------------------------------------------------------ driver
# glibc raises its mmap threshold after big frees, so freed per-frame activations stay in the
# heap and the resident high-water mark creeps up with the number of decode steps. Fixed
# thresholds show the decoder's own memory; users can set the same variables.
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def run_job(job: dict) -> dict:
    env = {**os.environ, **(FIXED_MALLOC if job.get("fixed_malloc") else {})}
    r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True,
                       text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"worker failed for {job}:\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"  {res['impl']:10s} {res['width']}x{res['height']}x{res['frames']:<4d} tile {res['tile']:4d}/"
          f"{res['overlap']:<3d} peak {res['peak_mb']:8.0f} MB (output {res['output_mb']:6.0f})  "
          f"{res['seconds']:7.1f} s", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--dim", type=int, default=96, help="VAE base dim for the memory rows (real: 96)")
    ap.add_argument("--series-size", type=int, default=128, help="frame side for the frames series")
    ap.add_argument("--series-tiled", action="store_true", help="also tiled rows in the frames series")
    ap.add_argument("--hd-frames", type=int, default=1, help="frames of the 720p rows (1 = one latent frame)")
    ap.add_argument("--malloc-series", action="store_true",
                    help="only the frames series of ours, with and without fixed glibc thresholds")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "vae_tiling.json"))
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return
    q = a.quick
    results: dict[str, list] = {"frames": [], "720p": [], "error": []}
    base = dict(weights="random", dim=a.dim)
    if a.malloc_series:
        rows = [run_job({**base, "impl": "videoforge", "tile": 0, "overlap": 0, "frames": f,
                         "height": a.series_size, "width": a.series_size, "fixed_malloc": True})
                for f in (17, 33, 65, 129)]
        for r in rows:
            print(f"| {r['frames']} | {r['peak_mb'] - r['output_mb']:.0f} MB | {r['seconds']:.0f} s |")
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(rows, indent=1))
        return

    print("1) peak memory vs frame count (fixed size)")
    size = 64 if q else a.series_size
    impls = (("videoforge", 0), ("comfy", 0))
    if a.series_tiled:
        impls += (("videoforge", size // 2), ("comfy", size // 2))
    for frames in ((17, 33) if q else (17, 33, 65, 129)):
        for impl, tile in impls:
            results["frames"].append(run_job({**base, "impl": impl, "tile": tile, "overlap": 32,
                                              "frames": frames, "height": size, "width": size}))

    print("2) 720p-equivalent frame, untiled vs tiled")
    h, w = (360, 640) if q else (720, 1280)
    for impl, tile, ov in (("videoforge", 0, 0), ("videoforge", 256, 64), ("comfy", 0, 0), ("comfy", 256, 64)):
        results["720p"].append(run_job({**base, "impl": impl, "tile": tile, "overlap": ov,
                                        "frames": a.hd_frames, "height": h, "width": w}))

    print(f"3) tiled vs untiled output, trained tiny VAE ({TRAINED.name})")
    tmp = Path("/tmp/vf_vae_tiling")
    tmp.mkdir(exist_ok=True)
    eh, ew, ef = (128, 192, 9) if q else (256, 384, 17)
    outs = {}
    for impl, tile, ov in (("videoforge", 0, 0), ("videoforge", 128, 32), ("videoforge", 64, 16),
                           ("comfy", 0, 0), ("comfy", 128, 32), ("comfy", 64, 16)):
        key = f"{impl}_{tile}_{ov}"
        outs[key] = tmp / f"{key}.pt"
        results["error"].append(run_job({"weights": "trained", "dim": 16, "impl": impl, "tile": tile,
                                         "overlap": ov, "frames": ef, "height": eh, "width": ew,
                                         "clip": True, "save": str(outs[key])}))
    ref = {impl: torch.load(outs[f"{impl}_0_0"], weights_only=True) for impl in ("videoforge", "comfy")}
    for r in results["error"]:
        o = torch.load(outs[f"{r['impl']}_{r['tile']}_{r['overlap']}"], weights_only=True)
        r["max_abs_vs_own_untiled"] = (o - ref[r["impl"]]).abs().max().item()
        r["mean_abs_vs_own_untiled"] = (o - ref[r["impl"]]).abs().mean().item()
    results["untiled_videoforge_vs_comfy_max_abs"] = (ref["videoforge"] - ref["comfy"]).abs().max().item()

    print("\n| frames | " + " | ".join(f"{i} tile {t}" for i, t in impls) + " |  (peak MB, output excluded)")
    print("|---" * (len(impls) + 1) + "|")
    for frames in sorted({r["frames"] for r in results["frames"]}):
        row = [r for r in results["frames"] if r["frames"] == frames]
        print(f"| {frames} | " + " | ".join(f"{r['peak_mb'] - r['output_mb']:.0f} MB, {r['seconds']:.0f} s" for r in row) + " |")
    print("\n| 720p-eq | peak MB | seconds |")
    for r in results["720p"]:
        print(f"| {r['impl']} tile {r['tile']} | {r['peak_mb']:.0f} | {r['seconds']:.1f} |")
    print("\n| error rows | max abs vs own untiled (0..1) | mean abs | seconds |")
    for r in results["error"]:
        print(f"| {r['impl']} tile {r['tile']}/{r['overlap']} | {r['max_abs_vs_own_untiled']:.4f} "
              f"({r['max_abs_vs_own_untiled'] * 255:.2f}/255) | {r['mean_abs_vs_own_untiled']:.5f} | {r['seconds']:.1f} |")
    print(f"untiled ours vs ComfyUI untiled: max abs {results['untiled_videoforge_vs_comfy_max_abs']:.2e}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
