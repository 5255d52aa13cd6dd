#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests (tests/e2e). Playwright drives this
# system browser; it never downloads a browser build of its own. Quick when it is there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "The browser tests need Chromium at /usr/bin/chromium (Debian's 'chromium' package)." >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "Installing Chromium needs root (or sudo)." >&2; exit 1; }
  sudo="sudo"
fi
echo "Installing Chromium (Debian package) for the browser tests..."
# Wait for another apt run (a second checkout, unattended upgrades) instead of failing on its lock.
apt_get() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@"; }
apt_get update -qq
apt_get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
[ -x /usr/bin/chromium ] || { echo "Chromium did not install." >&2; exit 1; }
