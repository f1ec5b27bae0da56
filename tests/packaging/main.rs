//! Packaging checks: the one Debian package list and what must come from it,
//! install-deps.sh on machines it must prepare (no compilers, no or an old
//! Rust, root or not), the size and debug info of the binary `make build`
//! leaves, and the Nix, Docker, Compose and Kubernetes files that read the
//! list or must agree with the server. There is no Docker engine or Nix daemon here,
//! so each file is checked against the real system instead: dpkg's database,
//! GStreamer's plugin registry, `ldd` on the built binary, `nix-instantiate`,
//! and sluice's own settings parser for every variable the files set.
//!
//! Outside Debian (no dpkg) or without `nix-instantiate` the tools' checks are
//! skipped with a note, except on CI, where .ci/run installs both and a
//! missing tool fails the test.

mod debian;
mod deploy;
mod docker;
mod install;
mod release;
mod support;
