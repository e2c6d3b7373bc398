#!/usr/bin/env bash
# Headless Chromium for tests/recipes/test_report_html.py, which renders report.html.
#
# Idempotent and quick when a browser is there (it returns at once). Otherwise it installs
# Debian's `chromium` package with apt-get where it may (root, or passwordless sudo);
# elsewhere it says why in one line and the test skips with that reason.
# MAEDFER_NO_CHROMIUM_INSTALL=1 leaves the machine alone.
set -uo pipefail
for browser in chromium chromium-browser google-chrome google-chrome-stable; do
    command -v "$browser" >/dev/null 2>&1 && exit 0
done
[[ "${MAEDFER_NO_CHROMIUM_INSTALL:-}" == 1 ]] && exit 0
say() { echo "install-chromium: $*; the report.html rendering test will skip" >&2; exit 0; }
command -v apt-get >/dev/null 2>&1 || say "no apt-get here (not Debian or Ubuntu)"
if [[ "$(id -u)" == 0 ]]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    say "installing Debian's chromium needs root or passwordless sudo"
fi
echo "install-chromium: installing Debian's chromium (once) ..." >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq >/dev/null 2>&1 || say "apt-get update failed (no registry?)"
"${sudo[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
    || say "apt-get install chromium failed"
