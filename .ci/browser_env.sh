#!/usr/bin/env bash
# Installs (once) what the browser test (tests/comfy/test_browser.py) needs and prints the
# node_modules folder holding playwright-core:
#   - Debian `chromium` at /usr/bin/chromium (apt-get, only when it is missing; needs root);
#   - npm `playwright-core` (driver only: no browser download) in a cache outside the clone,
#     ${VIDEOFORGE_CACHE:-$HOME/.cache/videoforge}/node-<version>/node_modules.
set -euo pipefail
PLAYWRIGHT_VERSION=1.65.1  # needs node >= 20
cache=${VIDEOFORGE_CACHE:-$HOME/.cache/videoforge}
dir="$cache/node-$PLAYWRIGHT_VERSION"
mkdir -p "$cache"
# One installer at a time (apt and npm both dislike a second writer in the same place).
exec 8>"$cache/.lock-browser"
flock -w 1800 8 || { echo "[videoforge] timed out waiting for $cache/.lock-browser" >&2; exit 1; }

apt_install() {
  echo "[videoforge] installing Debian packages: $* (first run only)" >&2
  local log="$cache/apt.log"
  # Its chatter goes to a log, shown only when apt fails.
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
           --no-install-recommends -o Dpkg::Use-Pty=0 "$@"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "[videoforge] apt-get install $* failed (full log: $log)" >&2
    exit 1
  fi
}

if [ ! -x /usr/bin/chromium ]; then
  apt_install chromium
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt_install nodejs npm
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "[videoforge] playwright-core $PLAYWRIGHT_VERSION needs node >= 20, found $(node --version)" >&2
  exit 1
fi

if [ ! -f "$dir/.complete" ]; then
  rm -rf "$dir"
  mkdir -p "$dir"
  echo "[videoforge] installing playwright-core $PLAYWRIGHT_VERSION in $dir (first run only)" >&2
  # The driver talks to /usr/bin/chromium: never fetch Playwright's own browser builds.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$dir" --no-save --no-audit --no-fund \
    --loglevel=error "playwright-core@$PLAYWRIGHT_VERSION" >&2
  touch "$dir/.complete"
fi
echo "$dir/node_modules"
