#!/usr/bin/env bash
# The whole test suite (README: "Run the tests"). Creates / reuses the cached environment
# (.ci/env.sh), then runs pytest with it. Extra arguments go to pytest (and skip the second pass).
#
# Second pass: tests/unit + tests/parity again under another CPU's kernel set (AVX2 instead of
# AVX-512 / AMX in PyTorch, MKL and oneDNN), so results that depend on which kernels a CPU
# picks fail here and not on the next machine. VIDEOFORGE_ONE_PASS=1 skips it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
env=$(bash "$root/.ci/env.sh")
# chromium + playwright-core for tests/comfy/test_browser.py (which reads this variable).
VIDEOFORGE_NODE_PATH=$(bash "$root/.ci/browser_env.sh")
export VIDEOFORGE_NODE_PATH
# Forcing PyTorch's kernel set alone on an AMX CPU trips a PyTorch bug in bf16 attention
# ("pack_vnni2 is only supported when avx512 is supported"): cap MKL / oneDNN the same way.
case "${ATEN_CPU_CAPABILITY:-}" in
  avx2|default)
    export MKL_ENABLE_INSTRUCTIONS=${MKL_ENABLE_INSTRUCTIONS:-AVX2}
    export ONEDNN_MAX_CPU_ISA=${ONEDNN_MAX_CPU_ISA:-AVX2} ;;
esac
cd "$root"
set +e
"$env/bin/python" -m pytest tests -q -rs "$@"
rc=$?
if [ "$rc" -eq 0 ] && [ "$#" -eq 0 ] && [ -z "${VIDEOFORGE_ONE_PASS:-}" ]; then
  echo "[videoforge] second pass: tests/unit + tests/parity with AVX2 kernels (PyTorch, MKL, oneDNN)"
  MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 \
    "$env/bin/python" -m pytest tests/unit tests/parity -q -p no:cacheprovider
  rc=$?
fi
set -e
# pytest's 5 = "no tests collected": a suite that ran nothing must not pass.
[ "$rc" -eq 5 ] && echo "no tests were collected" >&2
exit "$rc"
