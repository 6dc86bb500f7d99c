#!/bin/bash
# Install what tests/test_report_page.py needs to open report.html in a real browser: Debian's
# headless-capable Chromium (/usr/bin/chromium) and a font for it to draw text with. Idempotent:
# installs only what is missing and does nothing when all is there. Needs root (or sudo) and the
# apt repositories; no browser is ever downloaded from anywhere else (no Playwright download).
#
#   bash tests/install_browser.sh
#
# `make test` runs it before the suite, as it runs slurm/install_deps.sh for the SLURM daemons.
set -euo pipefail

PACKAGES=(chromium fonts-dejavu-core)
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi
missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "tests/install_browser.sh: ${PACKAGES[*]} already installed"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "error: ${missing[*]} missing and no apt-get here; install Chromium (as /usr/bin/chromium) by hand" >&2
    exit 2
fi
if [ "${#SUDO[@]}" -gt 0 ] && ! command -v sudo >/dev/null; then
    echo "error: installing ${missing[*]} needs root (or sudo)" >&2
    exit 2
fi
echo "tests/install_browser.sh: installing ${missing[*]}"
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
