#!/usr/bin/env bash
# Keeps the arrows one way: only hsm/p11 may link PKCS#11, and kms knows no HTTP.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
for pkg in ./httpapi/... ./kms/... ./store/... ./hsm; do
  if go list -deps "$pkg" | grep -qE 'miekg/pkcs11|crypto11'; then
    echo "layering: $pkg depends on PKCS#11 (only hsm/p11 may)" >&2; fail=1
  fi
done
for pkg in ./kms/... ./store/... ./hsm/...; do
  if go list -deps "$pkg" | grep -qE 'labstack/echo|^net/http$'; then
    echo "layering: $pkg depends on HTTP (only httpapi and cmd may)" >&2; fail=1
  fi
done
exit $fail
