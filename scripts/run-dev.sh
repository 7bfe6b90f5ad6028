#!/usr/bin/env bash
# Runs kmsd in the foreground on the local development token.
set -euo pipefail
cd "$(dirname "$0")/.."
module=""
for m in ${SOFTHSM2_MODULE:-} /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
         /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/lib64/pkcs11/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
  if [ -n "$m" ] && [ -f "$m" ]; then module=$m; break; fi
done
export SOFTHSM2_CONF="$(pwd)/softhsm/softhsm2.conf"
export KMSD_PKCS11_MODULE="${KMSD_PKCS11_MODULE:-$module}"
export KMSD_PIN_FILE="${KMSD_PIN_FILE:-$(pwd)/softhsm/dev.pin}"
export KMSD_DATA_DIR="${KMSD_DATA_DIR:-$(pwd)/var}"
export KMSD_ADDR="${KMSD_ADDR:-127.0.0.1:8080}"

# The development credential: TENCENTCLOUD_SECRET_ID/KEY when set (the SDKs'
# own variables), imported as an administrator; otherwise an administrator is
# created the first time and printed once.
if [ -n "${TENCENTCLOUD_SECRET_ID:-}" ] && [ -n "${TENCENTCLOUD_SECRET_KEY:-}" ]; then
  bin/kmsd credentials import -admin -name dev -if-none
else
  out=$(bin/kmsd credentials create -admin -name dev -if-none)
  if [ -n "$out" ]; then
    echo "=== development administrator credential (shown once; kmsctl and the SDKs read these) ==="
    echo "$out" | sed 's/^/export /'
    echo "=========================================================================================="
  else
    echo "run-dev: using the existing credentials (the first was printed when it was made; set TENCENTCLOUD_SECRET_ID/KEY to import your own)" >&2
  fi
fi
sleep 0.2 # SoftHSM2: two processes opening one token directory at the same instant can fail
exec bin/kmsd "$@"
