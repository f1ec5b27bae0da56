# sluice — `make run` serves the demo catalog, `make test` runs every test,
# `make bench` measures sluice against ffmpeg and writes BENCHMARKS.md.
# Each installs what is missing first (packaging/install-deps.sh): the Debian
# packages of packaging/debian-packages.txt and, to build, Rust through rustup.
SHELL := /bin/bash
CARGO ?= cargo
PORT ?= 3000
# rustup installs cargo here; it comes first, as after `. ~/.cargo/env`.
export PATH := $(or $(CARGO_HOME),$(HOME)/.cargo)/bin:$(PATH)
RELEASE_BIN := $(or $(CARGO_TARGET_DIR),target)/release/sluice

.PHONY: run build test deps build-deps test-deps bench-deps check-deps check fmt clippy bench clean

## Install missing system packages (apt, when root) and Rust (rustup), build release, serve the demo catalog.
run: deps build
	$(RELEASE_BIN) --port $(PORT)

## The release binary, target/release/sluice: stripped, with its line tables
## and symbols in sluice.debug beside it, where backtraces find them.
build: build-deps
	$(CARGO) build --release --locked
	@./packaging/split-debuginfo.sh $(RELEASE_BIN)

## Run every test (unit, integration, browser, packaging, the bench harness's self-check).
test: deps test-deps
	$(CARGO) test --locked --all-targets -- --test-threads=2

deps:
	@CARGO="$(CARGO)" ./packaging/install-deps.sh build runtime

build-deps:
	@CARGO="$(CARGO)" ./packaging/install-deps.sh build

test-deps:
	@./packaging/install-deps.sh test

bench-deps:
	@./packaging/install-deps.sh bench

check-deps:
	@CARGO="$(CARGO)" SLUICE_RUST_COMPONENTS="rustfmt clippy" ./packaging/install-deps.sh build

## sluice against one ffmpeg process per viewer, side by side; writes BENCHMARKS.md.
bench: deps bench-deps
	$(CARGO) bench --locked --bench bench

check: check-deps fmt clippy

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --locked --all-targets -- -D warnings

clean:
	$(CARGO) clean
