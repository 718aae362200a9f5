#!/usr/bin/env bash
# The system packages the test suite needs besides the Python environment: Debian's chromium, which the
# report test drives headless. Installs them with apt when it can (root, or passwordless sudo); otherwise
# stops with the command to run. Called by `make test` before the suite starts.
set -euo pipefail
packages=(chromium)
missing=()
for package in "${packages[@]}"; do
  command -v "$package" >/dev/null 2>&1 || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo)
else
  echo "error: the tests need Debian's ${missing[*]} (the report test renders the HTML report headless)," \
    "and this user cannot install it. Run: sudo apt-get install ${missing[*]}  then make test again." >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: the tests need ${missing[*]} and this machine has no apt-get: install ${missing[*]} with" \
    "your package manager (it must be on PATH as 'chromium'), then make test again." >&2
  exit 1
fi
echo "installing ${missing[*]} with apt-get (the report test drives it headless; once per machine)"
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
