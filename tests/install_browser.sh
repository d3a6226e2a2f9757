#!/usr/bin/env bash
# Installs Debian's Chromium and ChromeDriver for the report's browser tests, when they
# are missing and this user may install packages. Otherwise says why; those tests then
# skip with the same reason.
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "browser tests will skip: chromium and chromedriver are missing and installing them" \
         "needs root (apt-get install chromium chromium-driver)" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "browser tests will skip: no apt-get to install chromium and chromium-driver;" \
         "install Chromium and a matching ChromeDriver on the PATH" >&2
    exit 0
fi
echo "Installing Debian's chromium and chromium-driver for the browser tests"
if ! { "${as_root[@]}" apt-get update -qq &&
       DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq \
           --no-install-recommends chromium chromium-driver >/dev/null; }; then
    echo "browser tests will skip: apt-get could not install chromium and chromium-driver" >&2
fi
