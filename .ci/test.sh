#!/usr/bin/env bash
# The whole test suite (README: "Run the tests"). Creates / reuses the cached environment
# (.ci/env.sh), then runs pytest with it. Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
env=$(bash "$root/.ci/env.sh")
# chromium + playwright-core for tests/comfy/test_browser.py (which reads this variable).
VIDEOFORGE_NODE_PATH=$(bash "$root/.ci/browser_env.sh")
export VIDEOFORGE_NODE_PATH
cd "$root"
set +e
"$env/bin/python" -m pytest tests -q -rs "$@"
rc=$?
set -e
# pytest's 5 = "no tests collected": a suite that ran nothing must not pass.
[ "$rc" -eq 5 ] && echo "no tests were collected" >&2
exit "$rc"
