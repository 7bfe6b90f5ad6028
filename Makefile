# hsmkms — see README.md. `make run` and `make test` work on a fresh Debian
# machine with Go: both install SoftHSM2 (and NSS softoken with certutil,
# PostgreSQL) with apt-get when they are missing.
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
# Fuzz budgets are execution counts, not durations: go1.26's fuzz coordinator
# can fail a duration-bounded run with a bare "context deadline exceeded" and
# no crasher (golang/go#75804, fixed in go1.27). 20000x is 1-5 s per target here.
FUZZTIME ?= 20000x
# make bench: the soak part runs BENCH_SOAK (short by default; make soak runs
# SOAK, the full 10 minutes, measured after SOAK_WARM of load that lets the
# legacy API's replay cache fill: 300 s of window, plus up to 60 s for which
# an expired nonce's minute is kept before it is dropped whole, plus a GC
# cycle at the full size). BENCH_ARGS passes extra
# loadgen flags, e.g. BENCH_ARGS='-rounds 5 -sessions 1'. See BENCHMARKS.md.
BENCH_SOAK ?= 1m
SOAK ?= 10m
SOAK_WARM ?= 400s
BENCH_ARGS ?=
# The software-only KMS mock that make bench sets beside kmsd's Encrypt
# (scripts/loadgen/mock.go): local-kms at a pinned version, installed into
# bin/ from the Go module proxy (go install verifies it against the checksum
# database). MOCK= leaves the cell out.
LOCAL_KMS_VERSION := v0.0.0-20260228092603-2a5e92d09ab6
MOCK ?= bin/local-kms

.PHONY: all setup token build run test vet fuzz clean bench soak

all: build

setup:
	@scripts/setup.sh

token: setup
	@scripts/dev-token.sh

build:
	$(GO) build -o bin/ ./cmd/...

run: token build
	scripts/run-dev.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	cd test/consumers && $(GO) vet ./...
	@scripts/check-layering.sh

# The PKCS#11 conformance suite (hsm/p11) and kmsd's end-to-end tests run
# twice: on SoftHSM2 (with everything else) and on NSS softoken, a second,
# independent implementation (KMS_TEST_PKCS11=nss: each test makes its own
# NSS database; see softhsm/modules.go). Tests that need SoftHSM2 itself (the
# fault-injection module forwards to it) use it in both runs.
SECOND_MODULE_PKGS ?= ./hsm/p11 ./cmd/kmsd
test: setup vet
	$(GO) test -race -count=1 ./...
	KMS_TEST_PKCS11=nss $(GO) test -race -count=1 $(SECOND_MODULE_PKGS)
	# Real AWS KMS API consumers (Vault/OpenBao's awskms seal, SOPS), in a
	# nested module of their own: SOPS brings the Google, Azure and Vault
	# clients with it (test/consumers/go.mod).
	cd test/consumers && $(GO) test -race -count=1 ./...
	# Allocation counts of the hot path, without -race (which makes sync.Pool drop items).
	$(GO) test -count=1 -run 'Allocs' ./httpapi ./tcsign ./kms
	@$(MAKE) --no-print-directory fuzz

# Short fixed-count runs of every fuzz target, so they never rot
# (e.g. make fuzz FUZZTIME=2000000x for a longer campaign).
FUZZ_TARGETS := kms:FuzzParseBlob kms:FuzzParseContext kms:FuzzParsePolicy kms:FuzzStoredPolicyNeverWidens \
	httpapi:FuzzParseParams httpapi:FuzzDecodeJSONParams httpapi:FuzzDecodeFormParams \
	httpapi:FuzzParseTC3Authorization httpapi:FuzzDecodeJSONParamsMatchesReference httpapi:FuzzSigV4Verifier audit:FuzzVerify
fuzz:
	@set -e; log=$$(mktemp); trap 'rm -f $$log' EXIT; for t in $(FUZZ_TARGETS); do \
		echo "fuzz ./$${t%%:*} $${t#*:} ($(FUZZTIME))"; \
		if ! $(GO) test -run='^$$' -fuzz="^$${t#*:}$$" -fuzztime=$(FUZZTIME) ./$${t%%:*} >$$log 2>&1; then cat $$log; exit 1; fi; \
	done

# Raw PKCS#11 ceiling and kmsd side by side on a fresh token, many keys,
# a short soak; prints encrypt_ratio_to_raw_hsm last. A 2 s smoke run of the
# same harness is part of make test (scripts/loadgen/smoke_test.go).
bench: setup
	$(GO) build -o bin/ ./cmd/... ./scripts/loadgen
	$(if $(MOCK),GOBIN=$(CURDIR)/bin $(GO) install github.com/nsmithuk/local-kms@$(LOCAL_KMS_VERSION))
	bin/loadgen -kmsd bin/kmsd $(if $(MOCK),-mock $(MOCK)) -soak $(BENCH_SOAK) $(BENCH_ARGS)

soak: setup
	$(GO) build -o bin/ ./cmd/... ./scripts/loadgen
	bin/loadgen -kmsd bin/kmsd -parts soak -soak $(SOAK) -soak-warm $(SOAK_WARM) $(BENCH_ARGS)

clean:
	rm -rf bin
