//! packaging/install-deps.sh on a machine it must prepare: a dpkg database
//! (DPKG_ADMINDIR) of a fresh Debian 12 or one without compilers and Rust,
//! and a PATH that holds only the tools the script uses plus stand-ins for
//! `id`, `sudo`, `apt-get`, `cargo`, `rustup` and `curl`. The stand-ins log
//! their arguments, so both the dry run (what it would do) and the real run
//! (what it does, with the stand-ins in place of the network) are checked.
//! The Makefile is run the same way to show it finds rustup's cargo.

use std::collections::BTreeSet;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{have, read, with_role};

/// Real tools install-deps.sh and the Makefile call; everything else on PATH
/// is a stand-in.
const TOOLS: [&str; 11] = [
    "bash",
    "sh",
    "dpkg-query",
    "grep",
    "sed",
    "head",
    "find",
    "mkdir",
    "chmod",
    "make",
    "cat",
];

const RUSTUP_INIT: &str = "curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable";

fn rust_version() -> String {
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml");
    manifest["package"]["rust-version"]
        .as_str()
        .expect("rust-version")
        .to_string()
}

struct Machine {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

struct Outcome {
    ok: bool,
    stderr: String,
    stdout: String,
}

impl Outcome {
    fn has(&self, needle: &str) -> bool {
        self.stderr.lines().any(|l| l.trim() == needle.trim())
    }

    /// The package names after `prefix` on the first stderr line with it.
    fn packages_after(&self, prefix: &str) -> BTreeSet<String> {
        let line = self
            .stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no line `{prefix}…` in:\n{}", self.stderr));
        line.trim_end_matches('\'')
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }
}

impl Machine {
    /// A machine whose dpkg database lists `installed` and nothing else.
    fn new(installed: &BTreeSet<String>) -> Machine {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        for d in ["bin", "home", "dpkg", "log"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let mut status = String::new();
        for p in installed {
            status.push_str(&format!(
                "Package: {p}\nStatus: install ok installed\nPriority: optional\nVersion: 1.0\nArchitecture: amd64\nMaintainer: nobody\nDescription: {p}\n\n"
            ));
        }
        std::fs::write(root.join("dpkg/status"), status).unwrap();
        for tool in TOOLS {
            let real = which(tool).unwrap_or_else(|| panic!("{tool} is not installed"));
            symlink(real, root.join("bin").join(tool)).unwrap();
        }
        let m = Machine { _dir: dir, root };
        m.uid(0);
        // Present for `command -v`; a dry run must never call them.
        m.stub("apt-get", "");
        m.stub("curl", "");
        m
    }

    /// A stand-in that logs its arguments to log/NAME, then runs `body`.
    fn stub(&self, name: &str, body: &str) {
        let path = self.root.join("bin").join(name);
        let log = self.root.join("log").join(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho \"$*\" >> '{}'\n{body}\n", log.display()),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn uid(&self, uid: u32) {
        self.stub("id", &format!("echo {uid}"));
    }

    /// `cargo` on PATH (in `dir`, bin/ unless given) reporting `version`;
    /// `cargo fmt`/`cargo clippy` answer only if listed in `components`.
    fn cargo_in(&self, dir: &Path, version: &str, components: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        let mut script = String::from("#!/bin/sh\ncase \"$1\" in\n");
        script.push_str(&format!(
            "  --version) echo 'cargo {version} (0000000 2026-01-01)' ;;\n"
        ));
        for c in components {
            script.push_str(&format!("  {c}) echo '{c} {version}' ;;\n"));
        }
        script.push_str("  *) exit 101 ;;\nesac\n");
        let path = dir.join("cargo");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn cargo(&self, version: &str) {
        self.cargo_in(&self.root.join("bin"), version, &[]);
    }

    fn cargo_home(&self) -> PathBuf {
        self.root.join("home/.cargo")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.root.join("log").join(name)).unwrap_or_default()
    }

    fn command(&self, program: &str, ci: bool) -> Command {
        let mut cmd = Command::new(self.root.join("bin").join(program));
        cmd.env_clear()
            .env("PATH", self.root.join("bin"))
            .env("HOME", self.root.join("home"))
            .env("DPKG_ADMINDIR", self.root.join("dpkg"))
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if ci {
            cmd.env("CI", "true");
        }
        cmd
    }

    fn run(&self, cmd: &mut Command) -> Outcome {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Outcome {
            ok: out.status.success(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        }
    }

    fn install_deps(&self, args: &[&str], ci: bool) -> Outcome {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/install-deps.sh");
        let mut cmd = self.command("bash", ci);
        cmd.arg(script).args(args);
        self.run(&mut cmd)
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/bin".into(), "/bin".into(), "/usr/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Debian 12 right after installation: none of the list's packages.
fn fresh_debian() -> BTreeSet<String> {
    [
        "base-files",
        "bash",
        "coreutils",
        "dpkg",
        "apt",
        "sed",
        "grep",
    ]
    .map(str::to_string)
    .into()
}

/// Every package of these roles except the compilers.
fn all_but_compilers(roles: &[&str]) -> BTreeSet<String> {
    let mut set = fresh_debian();
    for r in roles {
        set.extend(with_role(r));
    }
    set.remove("build-essential");
    set
}

fn union(roles: &[&str]) -> BTreeSet<String> {
    roles.iter().flat_map(|r| with_role(r)).collect()
}

fn skip() -> bool {
    !have("dpkg-query") || which("make").is_none()
}

#[test]
fn the_build_role_has_the_compilers_and_what_rustup_downloads_with() {
    let build = with_role("build");
    for p in ["build-essential", "pkg-config", "curl", "ca-certificates"] {
        assert!(build.contains(p), "the build role lacks {p}");
    }
    for p in ["cargo", "rustc"] {
        assert!(
            !build.contains(p),
            "Debian 12's {p} is older than rust-version {}: rustup brings it",
            rust_version()
        );
    }
}

#[test]
fn a_fresh_debian_as_root_gets_the_packages_then_rust_through_rustup() {
    if skip() {
        return;
    }
    let m = Machine::new(&fresh_debian());
    let out = m.install_deps(&["--dry-run", "build", "runtime"], false);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        out.packages_after("would run: apt-get install -y -qq --no-install-recommends"),
        union(&["build", "runtime"])
    );
    assert!(
        out.has(&format!(
            "sluice needs Rust >= {} (rust-version in Cargo.toml) to build, and cargo was not found.",
            rust_version()
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.has(&format!("would run: {RUSTUP_INIT}")),
        "{}",
        out.stderr
    );
    // Packages first: rustup's installer needs curl and the linker.
    let apt = out.stderr.find("would run: apt-get install").unwrap();
    let rustup = out.stderr.find("would run: curl").unwrap();
    assert!(apt < rustup, "{}", out.stderr);
    assert_eq!(m.log("apt-get"), "", "a dry run ran apt-get");
    assert_eq!(m.log("curl"), "", "a dry run ran curl");
}

#[test]
fn on_ci_rustup_also_installs_rustfmt_and_clippy() {
    if skip() {
        return;
    }
    let m = Machine::new(&all_but_compilers(&["build", "runtime", "test"]));
    let out = m.install_deps(&["--dry-run", "build", "runtime", "test"], true);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        out.packages_after("would run: apt-get install -y -qq --no-install-recommends"),
        BTreeSet::from(["build-essential".to_string()])
    );
    assert!(
        out.has(&format!(
            "would run: {RUSTUP_INIT} --component rustfmt --component clippy"
        )),
        "{}",
        out.stderr
    );
}

#[test]
fn debians_own_cargo_is_too_old_and_rustup_replaces_it() {
    if skip() {
        return;
    }
    let mut installed = all_but_compilers(&["build", "runtime"]);
    installed.extend(["cargo".to_string(), "rustc".to_string()]);
    let m = Machine::new(&installed);
    m.cargo("0.66.0");
    let out = m.install_deps(&["--dry-run", "build", "runtime"], false);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.has(&format!(
            "sluice needs Rust >= {} (rust-version in Cargo.toml) to build, and cargo 0.66.0 ({}) is older than that.",
            rust_version(),
            m.root.join("bin/cargo").display()
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.has(&format!("would run: {RUSTUP_INIT}")),
        "{}",
        out.stderr
    );

    // Just below rust-version is too old as well; rust-version itself is enough.
    let need = rust_version();
    let (major, minor) = need.split_once('.').unwrap();
    let below = format!("{major}.{}.9", minor.parse::<u32>().unwrap() - 1);
    m.cargo(&below);
    let out = m.install_deps(&["--dry-run", "build"], false);
    assert!(
        out.stderr.contains(&format!("cargo {below} (")),
        "{}",
        out.stderr
    );
    m.cargo(&format!("{need}.0"));
    let out = m.install_deps(&["--dry-run", "build"], false);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        !out.stderr.contains("rustup"),
        "cargo {need}.0 is enough: {}",
        out.stderr
    );
}

#[test]
fn an_old_toolchain_under_rustup_is_updated_by_rustup() {
    if skip() {
        return;
    }
    let m = Machine::new(&all_but_compilers(&["build"]));
    m.cargo("1.70.0");
    m.stub("rustup", "");
    let out = m.install_deps(&["--dry-run", "build"], true);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.has(
            "would run: rustup toolchain install stable --profile minimal --component rustfmt --component clippy"
        ),
        "{}",
        out.stderr
    );
    assert!(
        out.has("would run: rustup default stable"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("sh.rustup.rs"), "{}", out.stderr);
    assert_eq!(m.log("rustup"), "", "a dry run ran rustup");
}

#[test]
fn with_everything_in_place_it_does_and_says_nothing() {
    if skip() {
        return;
    }
    let mut installed = all_but_compilers(&["build", "runtime"]);
    installed.insert("build-essential".to_string());
    let m = Machine::new(&installed);
    m.cargo("1.95.0");
    for mode in [&["--dry-run"][..], &[]] {
        let args: Vec<&str> = mode.iter().copied().chain(["build", "runtime"]).collect();
        let out = m.install_deps(&args, false);
        assert!(out.ok && out.stderr.is_empty(), "{args:?}: {}", out.stderr);
    }
    assert_eq!(m.log("apt-get") + &m.log("curl"), "");
}

#[test]
fn a_non_root_user_is_told_the_sudo_commands() {
    if skip() {
        return;
    }
    let m = Machine::new(&fresh_debian());
    m.uid(1000);
    m.stub("sudo", "exit 1");
    let out = m.install_deps(&["build", "runtime"], false);
    assert!(!out.ok, "packages are missing: it must fail");
    let want = union(&["build", "runtime"]);
    assert_eq!(
        out.packages_after(
            "sudo apt-get update && sudo apt-get install -y --no-install-recommends"
        ),
        want
    );
    assert!(out.has(RUSTUP_INIT), "{}", out.stderr);
    assert!(!out.stderr.contains("su -c"), "{}", out.stderr);
    assert_eq!(m.log("apt-get") + &m.log("curl") + &m.log("sudo"), "");
}

#[test]
fn without_sudo_a_non_root_user_is_told_the_su_command() {
    if skip() {
        return;
    }
    let m = Machine::new(&all_but_compilers(&["build", "runtime"]));
    m.uid(1000);
    let out = m.install_deps(&["build", "runtime"], false);
    assert!(!out.ok);
    assert!(
        out.has(
            "su -c 'apt-get update && apt-get install -y --no-install-recommends build-essential'"
        ),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("sudo apt-get"), "{}", out.stderr);
    assert_eq!(m.log("apt-get") + &m.log("curl"), "");
}

/// A stand-in for sh.rustup.rs: the script curl hands to `sh -s -- ARGS`
/// records ARGS and leaves a cargo in CARGO_HOME, as rustup-init does.
fn fake_rustup_download(m: &Machine, version: &str) {
    let bin = m.cargo_home().join("bin");
    let script = format!(
        "cat <<'EOF'\necho \"$@\" > '{args}'\nmkdir -p '{bin}'\nprintf '#!/bin/sh\\necho \"cargo {version} (0000000 2026-01-01)\"\\n' > '{bin}/cargo'\nchmod +x '{bin}/cargo'\nEOF",
        args = m.root.join("log/rustup-init").display(),
        bin = bin.display(),
    );
    m.stub("curl", &script);
}

#[test]
fn as_root_it_installs_the_packages_and_rust_and_checks_the_result() {
    if skip() {
        return;
    }
    let m = Machine::new(&all_but_compilers(&["build", "runtime"]));
    fake_rustup_download(&m, "1.95.0");
    let out = m.install_deps(&["build", "runtime"], false);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        m.log("apt-get")
            .lines()
            .any(|l| l == "install -y -qq --no-install-recommends build-essential"),
        "apt-get ran with: {}",
        m.log("apt-get")
    );
    assert_eq!(
        m.log("curl").trim(),
        "--proto =https --tlsv1.2 -sSf https://sh.rustup.rs"
    );
    assert_eq!(
        m.log("rustup-init").trim(),
        "-y --profile minimal --default-toolchain stable"
    );
    assert!(
        out.stderr.contains(&format!(
            "Rust 1.95.0 is in {}/bin",
            m.cargo_home().display()
        )),
        "{}",
        out.stderr
    );

    // An installer that leaves an old cargo behind is an error, not a success.
    let m = Machine::new(&all_but_compilers(&["build"]));
    fake_rustup_download(&m, "1.60.0");
    let out = m.install_deps(&["build"], false);
    assert!(!out.ok, "{}", out.stderr);
    assert!(
        out.stderr.contains("rustup did not leave a cargo >="),
        "{}",
        out.stderr
    );
}

#[test]
fn a_non_root_user_with_the_packages_gets_rust_in_their_home() {
    if skip() {
        return;
    }
    let mut installed = all_but_compilers(&["build"]);
    installed.insert("build-essential".to_string());
    let m = Machine::new(&installed);
    m.uid(1000);
    fake_rustup_download(&m, "1.95.0");
    let out = m.install_deps(&["build"], false);
    assert!(out.ok, "{}", out.stderr);
    assert!(m.cargo_home().join("bin/cargo").is_file());
    assert_eq!(m.log("apt-get"), "");
}

#[test]
fn ci_adds_missing_rustfmt_and_clippy_or_fails_saying_why() {
    if skip() {
        return;
    }
    let mut installed = all_but_compilers(&["build"]);
    installed.insert("build-essential".to_string());
    let m = Machine::new(&installed);
    m.cargo_in(&m.root.join("bin"), "1.95.0", &["clippy"]);
    let out = m.install_deps(&["build"], true);
    assert!(!out.ok, "no rustup to add rustfmt: {}", out.stderr);
    assert!(
        out.stderr
            .contains("cargo fmt is missing and there is no rustup to add rustfmt"),
        "{}",
        out.stderr
    );
    m.stub("rustup", "");
    let out = m.install_deps(&["build"], true);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(m.log("rustup").trim(), "component add rustfmt");
    // Outside CI nobody asked for them.
    let out = m.install_deps(&["--dry-run", "build"], false);
    assert!(out.ok && out.stderr.is_empty(), "{}", out.stderr);
    // SLUICE_RUST_COMPONENTS names them explicitly (.ci/run, make check).
    let out = m.run(
        m.command("bash", false)
            .env("SLUICE_RUST_COMPONENTS", "rustfmt clippy")
            .arg("packaging/install-deps.sh")
            .args(["--dry-run", "build"]),
    );
    assert!(
        out.has("would run: rustup component add rustfmt"),
        "{}",
        out.stderr
    );
    let ci = read(".ci/run");
    assert!(
        ci.contains("SLUICE_RUST_COMPONENTS=\"rustfmt clippy\" ./packaging/install-deps.sh")
            && !ci.contains("|| true"),
        ".ci/run must ask install-deps.sh for rustfmt and clippy, and not ignore failures"
    );
}

#[test]
fn make_finds_rustups_cargo_in_the_home_directory() {
    if skip() {
        return;
    }
    let mut installed = all_but_compilers(&["build", "runtime"]);
    installed.insert("build-essential".to_string());
    let m = Machine::new(&installed);
    // Not on PATH: only in ~/.cargo/bin, where rustup puts it.
    m.cargo_in(&m.cargo_home().join("bin"), "1.95.0", &[]);
    let out = m.run(
        m.command("make", false)
            .args(["-s", "--no-print-directory", "deps"]),
    );
    assert!(
        out.ok && out.stderr.is_empty(),
        "make deps: {}{}",
        out.stdout,
        out.stderr
    );
    // And a fresh machine's `make run` stops at the package step, saying how.
    let m = Machine::new(&fresh_debian());
    m.uid(1000);
    let out = m.run(
        m.command("make", false)
            .args(["-s", "--no-print-directory", "run"]),
    );
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("su -c 'apt-get update && apt-get install"),
        "{}",
        out.stderr
    );
}
