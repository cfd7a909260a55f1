# cnsmo: `make demo` and `make test` work on a fresh machine: they install what they need.
SHELL := /bin/bash
GO ?= go
BIN := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/cnsmo/cnsmo/internal/version.Version=$(VERSION)
TEST_TIMEOUT ?= 25m

.PHONY: all build deps images role-image test test-unit demo bench lint clean clean-testbed fuzz

all: build

# wireguard-go (user-space WireGuard for the exec driver's `wireguard` engine) is built from the
# module pinned in go.mod; the testbed's VMs find it beside cnsmo-role.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/wireguard-go golang.zx2c4.com/wireguard

deps:
	@bash scripts/deps.sh

images: deps
	@bash images/build.sh

# cnsmo-role in a container (Nuvla 2 members, recipes/nuvla2): it copies the built binary.
role-image: images build
	@CNSMO_BIN=$(CURDIR)/$(BIN) bash images/build.sh role

# All tests, unit and end to end (printed as go test prints them, then the slowest tests). CNSMO_REQUIRE_ALL=1 turns a missing capability into a failure
# instead of a skip (deps and images installed everything), so neither CI nor a developer passes by skipping.
test: deps images build role-image
	set -o pipefail; CNSMO_REQUIRE_ALL=1 CNSMO_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -json ./... | $(GO) run ./internal/tools/testsummary
	$(GO) test -run '^$$' -fuzz FuzzParseRules -fuzztime 10s ./roles/fw
	$(GO) test -run '^$$' -fuzz FuzzParseRunXML -fuzztime 10s ./ssclient
	$(GO) test -run '^$$' -fuzz FuzzParseEntry -fuzztime 10s ./roles/vpn
	$(GO) test -run '^$$' -fuzz FuzzParseRequest -fuzztime 10s ./roles/vpn
	$(GO) test -run '^$$' -fuzz FuzzDNSAnswer -fuzztime 10s ./roles/vpn
	$(GO) test -run '^$$' -fuzz FuzzParseRoster -fuzztime 10s ./roles/vpn

# Unit tests only (no root, Docker or packages needed).
test-unit:
	$(GO) test -short -count=1 ./...

demo: deps images build role-image
	@bash scripts/demo.sh

bench: deps images build
	rm -f bench/results.json bench/pairs.json
	CNSMO_BENCH=1 CNSMO_BENCH_IMAGES=1 CNSMO_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -p 1 -timeout 60m -run '^TestBench' ./...
	$(GO) run ./bench/tabulate -dir bench -out BENCHMARKS.md

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt: $$unformatted"; exit 1; fi
	$(GO) vet ./...

# Removes what a killed test or demo left behind: the testbed's VMs, routers and host links, and
# every container labelled by cnsmo's drivers.
clean-testbed: build
	$(BIN)/cnsmo-testbed clean
	@ids=$$(docker ps -aq --filter label=cnsmo.owner=cnsmo); if [ -n "$$ids" ]; then docker rm -f $$ids >/dev/null; fi; echo "clean-testbed: done"

clean:
	rm -rf $(BIN)
