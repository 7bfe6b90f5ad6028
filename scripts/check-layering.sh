#!/usr/bin/env bash
# Keeps the arrows one way: only hsm/p11 may link PKCS#11, kms knows no HTTP,
# and the client package stays a client.
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
# kmsclient is a thin client of kmsd's API, shared by kmsctl and the KMS
# plugin: it speaks HTTP and signs with tcsign, and knows nothing of the
# server's layers.
if go list -deps ./kmsclient | grep -qE '^hsmkms/(httpapi|kms|store|hsm|audit)(/|$)|miekg/pkcs11|crypto11|labstack/echo'; then
  echo "layering: kmsclient depends on the server's layers (it may use only tcsign)" >&2; fail=1
fi
exit $fail
