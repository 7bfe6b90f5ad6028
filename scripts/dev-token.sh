#!/usr/bin/env bash
# Makes the local development token (label "hsmkms") once: a SoftHSM2
# config under softhsm/ pointing at the git-ignored softhsm/tokens/, and a
# random user PIN in softhsm/dev.pin (mode 0600). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
conf="$root/softhsm/softhsm2.conf"
tokens="$root/softhsm/tokens"
pinfile="$root/softhsm/dev.pin"
label="${KMSD_TOKEN_LABEL:-hsmkms}"

mkdir -p "$tokens"
chmod 700 "$tokens"
sed "s|@TOKENDIR@|$tokens|" softhsm/softhsm2.conf.in > "$conf"
export SOFTHSM2_CONF="$conf"

if softhsm2-util --show-slots 2>/dev/null | grep -Eq "^[[:space:]]*Label:[[:space:]]+$label[[:space:]]*$"; then
  if [ ! -s "$pinfile" ]; then
    echo "dev-token: token '$label' exists but $pinfile is missing; remove softhsm/tokens/ to start over" >&2
    exit 1
  fi
  exit 0
fi

umask 077
pin=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
sopin=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
softhsm2-util --init-token --free --label "$label" --pin "$pin" --so-pin "$sopin" >/dev/null
printf '%s\n' "$pin" > "$pinfile"
echo "dev-token: created SoftHSM2 token '$label' in softhsm/tokens (user PIN in softhsm/dev.pin)" >&2
