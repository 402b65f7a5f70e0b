#!/usr/bin/env bash
# Installs what the dashboard's browser tests drive: Debian's chromium and its chromedriver.
# Does nothing when both are present. Needs root (or sudo) to install; says so otherwise.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "install_browser.sh: chromium and chromium-driver are missing and this user cannot install" \
         "Debian packages; run as root: apt-get install chromium chromium-driver" >&2
    exit 1
fi
echo "install_browser.sh: installing chromium and chromium-driver (Debian packages) for the dashboard tests" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
chromium --version >&2
