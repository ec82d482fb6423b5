#!/usr/bin/env bash
# README "main job": run the shipped Wan2.1 T2V workflow in a headless ComfyUI and write an mp4.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
env=$(bash "$root/.ci/env.sh")
cd "$root"
exec "$env/bin/python" .ci/demo.py "$@"
