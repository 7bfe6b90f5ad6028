#!/usr/bin/env bash
# Makes an NSS softoken database that kmsd can use as its PKCS#11 token, and
# prints the settings that point kmsd at it. An example for operators of a
# second, independent PKCS#11 implementation (CI runs the conformance suite
# on it too; the tests make their own databases the same way, see
# softhsm/modules.go).
#
#   scripts/nss-token.sh [DIR] [LABEL]     (defaults: softhsm/nss, hsmkms)
#
# NSS softoken is libsoftokn3.so from libnss3; certutil comes from
# libnss3-tools (apt-get install -y libnss3 libnss3-tools). certutil -N makes
# the database; its password is the token's user PIN. The module needs
# C_Initialize arguments naming the database (pkcs11.init_args,
# KMSD_PKCS11_INIT_ARGS); dbTokenDescription sets the token label (without
# it the label is "NSS Certificate DB"). Idempotent: an existing database is
# kept, with its PIN file.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-softhsm/nss}"
label="${2:-hsmkms}"
mkdir -p "$dir"
chmod 700 "$dir"
dir="$(cd "$dir" && pwd)"
pinfile="$dir/user.pin"

module=""
for m in ${NSS_SOFTOKEN_MODULE:-} /usr/lib/x86_64-linux-gnu/libsoftokn3.so /usr/lib/aarch64-linux-gnu/libsoftokn3.so \
         /usr/lib64/libsoftokn3.so /usr/lib/libsoftokn3.so; do
  if [ -n "$m" ] && [ -f "$m" ]; then module="$m"; break; fi
done
if [ -z "$module" ] && command -v dpkg >/dev/null 2>&1; then
  module="$(dpkg -L libnss3 2>/dev/null | grep '/libsoftokn3\.so$' | head -n1 || true)"
fi
if [ -z "$module" ] || ! command -v certutil >/dev/null 2>&1; then
  echo "nss-token: NSS softoken or certutil missing: apt-get install -y libnss3 libnss3-tools" >&2
  exit 1
fi

if [ ! -f "$dir/key4.db" ]; then
  umask 077
  od -An -tx1 -N12 /dev/urandom | tr -d ' \n' > "$pinfile"
  echo >> "$pinfile"
  certutil -N -d "sql:$dir" -f "$pinfile"
  echo "nss-token: created NSS database $dir (user PIN in $pinfile)" >&2
elif [ ! -s "$pinfile" ]; then
  echo "nss-token: $dir has a database but no $pinfile; remove $dir to start over" >&2
  exit 1
fi

# certPrefix/keyPrefix/secmod name the files in configdir; flags= keeps the
# database read-write.
init_args="configdir='sql:$dir' certPrefix='' keyPrefix='' secmod='secmod.db' flags= dbTokenDescription='$label'"
cat <<EOF
# kmsd settings for this token (environment; or pkcs11.module,
# pkcs11.init_args, pkcs11.token_label and pkcs11.pin_file in kmsd.yaml):
export KMSD_PKCS11_MODULE=$module
export KMSD_PKCS11_INIT_ARGS="$init_args"
export KMSD_TOKEN_LABEL=$label
export KMSD_PIN_FILE=$pinfile
EOF
