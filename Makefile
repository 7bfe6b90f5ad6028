# hsmkms — see README.md. `make run` and `make test` work on a fresh Debian
# machine with Go: both install SoftHSM2 with apt-get when it is missing.
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
FUZZTIME ?= 10s

.PHONY: all setup token build run test vet fuzz clean

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
	@scripts/check-layering.sh

test: setup vet
	$(GO) test -race -count=1 ./...
	@$(MAKE) --no-print-directory fuzz

# Short fixed-time runs of every fuzz target, so they never rot.
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzParseBlob$$' -fuzztime=$(FUZZTIME) ./kms
	$(GO) test -run='^$$' -fuzz='^FuzzParseContext$$' -fuzztime=$(FUZZTIME) ./kms
	$(GO) test -run='^$$' -fuzz='^FuzzParseParams$$' -fuzztime=$(FUZZTIME) ./httpapi

clean:
	rm -rf bin
