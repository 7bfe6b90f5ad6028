#!/usr/bin/env bash
# Idempotent set-up for development and CI: installs SoftHSM2, NSS softoken
# with certutil (libnss3, libnss3-tools: the second PKCS#11 implementation
# make test runs the conformance suite on) and the PostgreSQL server with
# apt-get when they are missing (through sudo when not root). Tests make their own throwaway tokens and PostgreSQL clusters
# (store/pgtest); the local development token is made by scripts/dev-token.sh.
# Nothing is started or enabled: Debian's postgresql package may start its
# default cluster, which the tests do not use.
set -euo pipefail

module_found() {
  for m in ${SOFTHSM2_MODULE:-} /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
           /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/lib64/pkcs11/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
    [ -n "$m" ] && [ -f "$m" ] && return 0
  done
  return 1
}

softhsm_found() { command -v softhsm2-util >/dev/null 2>&1 && module_found; }

nss_module_found() {
  for m in ${NSS_SOFTOKEN_MODULE:-} /usr/lib/x86_64-linux-gnu/libsoftokn3.so /usr/lib/aarch64-linux-gnu/libsoftokn3.so \
           /usr/lib64/libsoftokn3.so /usr/lib/libsoftokn3.so; do
    [ -n "$m" ] && [ -f "$m" ] && return 0
  done
  return 1
}

# The PostgreSQL server binaries the tests start (see store/pgtest).
postgres_found() {
  [ -n "${KMS_TEST_POSTGRES_BIN:-}" ] && [ -x "$KMS_TEST_POSTGRES_BIN/postgres" ] && return 0
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && return 0
  command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1
}

missing=()
softhsm_found || missing+=(softhsm2)
nss_module_found || missing+=(libnss3)
command -v certutil >/dev/null 2>&1 || missing+=(libnss3-tools)
# KMS_TEST_POSTGRES_DSN names an existing server: no local binaries needed.
if [ -z "${KMS_TEST_POSTGRES_DSN:-}" ] && ! postgres_found; then
  missing+=(postgresql)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "setup: missing ${missing[*]}; installing with apt-get" >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: apt-get not found: install SoftHSM2 2.6+ (package softhsm2 / softhsm), NSS with certutil (nss, nss-tools) and the PostgreSQL server (13+) with your package manager" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if ! softhsm_found; then
  echo "setup: SoftHSM2 installed but libsofthsm2.so not found; set SOFTHSM2_MODULE to its path" >&2
  exit 1
fi
if ! nss_module_found || ! command -v certutil >/dev/null 2>&1; then
  echo "setup: libnss3/libnss3-tools installed but libsoftokn3.so or certutil not found; set NSS_SOFTOKEN_MODULE to the module's path (dpkg -L libnss3)" >&2
  exit 1
fi
if [ -z "${KMS_TEST_POSTGRES_DSN:-}" ] && ! postgres_found; then
  echo "setup: postgresql installed but initdb not found; set KMS_TEST_POSTGRES_BIN to the directory of initdb and postgres" >&2
  exit 1
fi
echo "setup: installed ${missing[*]}" >&2
