#!/usr/bin/env bash
# The Debian/Ubuntu packages the napari tests need: Xvfb (a virtual display) and Qt's X11 and
# OpenGL libraries. Uses sudo only when not root; does nothing (and says so) without apt-get.
set -euo pipefail

PACKAGES="xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0
  libxkbcommon-x11-0 libxcb-cursor0 libgl1 libegl1 libfontconfig1 libdbus-1-3"

if ! command -v apt-get >/dev/null 2>&1; then
  echo "no apt-get here: install Xvfb and Qt's X11/OpenGL libraries ($PACKAGES) yourself" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "not root and no sudo: run this script as root to install: $PACKAGES" >&2
    exit 1
  fi
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
echo "installed: $(echo $PACKAGES | tr -s ' \n' ' ')"
