# syntax=docker/dockerfile:1
#
# sluice container image: a Rust builder stage, then a slim Debian runtime that
# carries only the runtime GStreamer plugins. Both stages install their Debian
# packages from packaging/debian-packages.txt through packaging/install-deps.sh,
# the same list and installer the Makefile and .ci/run use, so the image cannot
# drift from `make run`.
#
#   docker build -t sluice .
#   docker run -p 3000:3000 -v sluice-data:/data --stop-timeout 30 sluice
#
# or `docker compose up` with compose.yaml.

# ---- build -------------------------------------------------------------------
# A fixed Rust release (at least Cargo.toml's rust-version) on the same Debian
# release as the runtime stage; raise it deliberately.
FROM rust:1.95.0-bookworm AS builder
WORKDIR /src

# Build-role packages (compilers, pkg-config, GStreamer headers) from the one
# list; install-deps.sh checks the image's cargo against Cargo.toml's
# rust-version, so no rustup install happens here.
COPY Cargo.toml ./
COPY packaging/debian-packages.txt packaging/install-deps.sh packaging/
RUN bash packaging/install-deps.sh build \
 && rm -rf /var/lib/apt/lists/*

COPY . .
# The target dir is a cache mount, so the binary is copied out of it. Then it is
# stripped of its debug info (line tables included) and its local symbols,
# from some 360 MB to about 9 MB; the global symbols stay, so a backtrace still
# names the functions that cross crate boundaries.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin sluice \
 && install -D -m 0755 target/release/sluice /out/sluice \
 && strip --strip-debug --discard-all /out/sluice

# ---- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# Runtime-role packages (GStreamer core, base/good/bad/ugly/libav plugins,
# CA certificates, curl for the health check) and the hardware role's VA-API
# drivers (Intel iHD and i965, AMD radeonsi via Mesa), without recommends.
# They are used only when the container is given /dev/dri (compose.yaml).
COPY packaging/debian-packages.txt packaging/install-deps.sh /tmp/sluice-deps/packaging/
RUN bash /tmp/sluice-deps/packaging/install-deps.sh runtime hardware \
 && rm -rf /tmp/sluice-deps /var/lib/apt/lists/*

# Fixed numeric ids so Kubernetes' runAsNonRoot and volume ownership line up.
RUN groupadd --system --gid 10001 sluice \
 && useradd --system --uid 10001 --gid sluice --create-home --home-dir /home/sluice \
      --shell /usr/sbin/nologin sluice \
 && mkdir -p /data /etc/sluice \
 && chown sluice:sluice /data

COPY --from=builder /out/sluice /usr/local/bin/sluice
COPY pipelines/profiles.toml /etc/sluice/profiles.toml

ENV HOST=0.0.0.0 \
    PORT=3000 \
    SLUICE_DATA_DIR=/data \
    SLUICE_PROFILES=/etc/sluice/profiles.toml

# The catalog (streams.json) lives here; a named volume keeps it across upgrades.
VOLUME /data
EXPOSE 3000
USER 10001:10001
WORKDIR /data

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD curl -fsS -o /dev/null "http://127.0.0.1:${PORT}/live" || exit 1

# SIGTERM drains sessions within SHUTDOWN_GRACE (default 10 s); `docker stop`
# waits 10 s by default, so compose.yaml raises stop_grace_period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sluice"]
