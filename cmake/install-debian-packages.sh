#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages named as arguments that are not installed yet (apt-get, through
# sudo when not root). Used by the README's commands (tests/run.sh, examples/run_demo.sh, examples/run_fashion_mnist.sh), which name
# the packages they need. Without apt-get it only says what it assumes.
#
#   bash cmake/install-debian-packages.sh <caller> <package>...
set -euo pipefail

caller="$1"
shift
if ! command -v apt-get >/dev/null 2>&1; then
  echo "$caller: no apt-get here; assuming $* (or equivalents) are installed" >&2
  exit 0
fi
missing=()
for p in "$@"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "$caller: installing ${missing[*]}"
sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
  sudo=(sudo)
fi
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
