#!/usr/bin/env bash
# Idempotent set-up for development and CI: installs SoftHSM2 with apt-get
# when it is missing. Tests make their own throwaway tokens; the local
# development token is made by scripts/dev-token.sh.
set -euo pipefail

module_found() {
  for m in ${SOFTHSM2_MODULE:-} /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
           /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/lib64/pkcs11/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
    [ -n "$m" ] && [ -f "$m" ] && return 0
  done
  return 1
}

if command -v softhsm2-util >/dev/null 2>&1 && module_found; then
  exit 0
fi

echo "setup: SoftHSM2 is missing; installing it with apt-get" >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: apt-get not found: install SoftHSM2 2.6+ with your package manager (package softhsm2 / softhsm)" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends softhsm2 >/dev/null
if ! module_found; then
  echo "setup: SoftHSM2 installed but libsofthsm2.so not found; set SOFTHSM2_MODULE to its path" >&2
  exit 1
fi
echo "setup: SoftHSM2 installed: $(softhsm2-util --version)" >&2
