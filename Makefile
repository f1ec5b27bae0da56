# sluice — `make run` serves the demo catalog, `make test` runs every test,
# `make bench` measures sluice against ffmpeg and writes BENCHMARKS.md.
SHELL := /bin/bash
PACKAGES_FILE := packaging/debian-packages.txt
CARGO ?= cargo
PORT ?= 3000

# Packages with a given role from the one package list.
packages = $(shell awk -v role="$(1)" '!/^\#/ && NF >= 2 { n = split($$2, r, ","); for (i = 1; i <= n; i++) if (r[i] == role) { print $$1; break } }' $(PACKAGES_FILE))

.PHONY: run build test deps test-deps bench-deps check fmt clippy bench clean

## Install missing system packages (apt, when root), build release, serve the demo catalog.
run: deps build
	./target/release/sluice --port $(PORT)

build:
	$(CARGO) build --release --locked

## Run every test (unit, integration, browser, packaging, the bench harness's self-check).
test: deps test-deps
	$(CARGO) test --locked --all-targets -- --test-threads=2

deps:
	@./packaging/install-deps.sh build runtime

test-deps:
	@./packaging/install-deps.sh test

bench-deps:
	@./packaging/install-deps.sh bench

## sluice against one ffmpeg process per viewer, side by side; writes BENCHMARKS.md.
bench: deps bench-deps
	$(CARGO) bench --locked --bench bench

check: fmt clippy

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --locked --all-targets -- -D warnings

clean:
	$(CARGO) clean
