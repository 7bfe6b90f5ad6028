#!/bin/bash
# A/B comparison of two kmsd binaries, side by side on one machine.
#
#   scripts/loadgen/ab.sh A_KMSD B_KMSD PAIRS OUTDIR [loadgen flags...]
#
# Runs PAIRS pairs of short loadgen runs (A then B, each on a fresh token,
# each normalised by its own raw ceiling), then prints per-cell B/A ratios
# per pair and their median (scripts/loadgen/ab_summary.py). With
# OPS including mock-encrypt and "-mock bin/local-kms", it also prints each
# kmsd cell's B/A divided, pair by pair, by the mock's own B/A (the same
# binary in both runs: the VM's luck), the steadier figure. Environment:
# LOADGEN (default bin/loadgen), OPS (default encrypt,decrypt,legacy-encrypt),
# CONC (default 16,64), DUR (default 3s).
set -euo pipefail
A=$1 B=$2 N=$3 OUT=$4
shift 4
LOADGEN=${LOADGEN:-bin/loadgen}
mkdir -p "$OUT"
for i in $(seq 1 "$N"); do
	for v in A B; do
		bin=$A
		[ "$v" = B ] && bin=$B
		"$LOADGEN" -kmsd "$bin" -ops "${OPS:-encrypt,decrypt,legacy-encrypt}" -conc "${CONC:-16,64}" \
			-rounds 1 -duration "${DUR:-3s}" -warm 500ms -raw-duration 2s -many-keys 0 -soak 0 -parts main "$@" \
			>"$OUT/$v.$i.out" 2>&1
	done
done
python3 "$(dirname "$0")/ab_summary.py" "$OUT"
