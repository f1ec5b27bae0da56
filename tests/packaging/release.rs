//! The release binary `make build` produces: under 30 MB, with its line
//! tables and symbols split into sluice.debug beside it, which Rust's panic
//! backtraces follow (checked on a small program split the same way).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{read, run};

const LIMIT: u64 = 30_000_000;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn split(bin: &Path) -> String {
    run(Command::new("bash")
        .arg(manifest_dir().join("packaging/split-debuginfo.sh"))
        .arg(bin))
}

fn sections(bin: &Path) -> String {
    run(Command::new("readelf").args(["-S", "-W"]).arg(bin))
}

fn has_section(sections: &str, name: &str) -> bool {
    sections
        .lines()
        .any(|l| l.split_whitespace().any(|w| w == name))
}

#[test]
fn the_release_profile_keeps_line_tables_only() {
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml");
    let release = manifest["profile"]["release"]
        .as_table()
        .expect("[profile.release]");
    assert_eq!(
        release.get("debug").and_then(|d| d.as_str()),
        Some("line-tables-only"),
        "backtraces need line tables; more debug info only grows sluice.debug"
    );
    assert!(
        release.get("strip").is_none(),
        "cargo's strip would drop the line tables before make build splits them off"
    );
}

#[test]
fn make_build_leaves_a_binary_under_30_mb_with_its_debug_info_beside_it() {
    // Exactly what a user runs; cargo makes it a no-op when the build is
    // current. Without the variables cargo sets for this test (build scripts
    // such as ring's watch CARGO_PKG_NAME and CARGO_MANIFEST_DIR), so the
    // release build is the one `make build` from a shell left.
    let mut make = Command::new("make");
    make.current_dir(manifest_dir())
        .args(["-s", "--no-print-directory", "build"]);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let set_by_cargo = name == "CARGO"
            || name == "OUT_DIR"
            || name == "CARGO_PRIMARY_PACKAGE"
            || name == "CARGO_TARGET_TMPDIR"
            || name == "CARGO_RUSTC_CURRENT_DIR"
            || [
                "CARGO_PKG_",
                "CARGO_BIN_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
            ]
            .iter()
            .any(|p| name.starts_with(p));
        if set_by_cargo || ["MAKEFLAGS", "MFLAGS", "MAKELEVEL"].contains(&name.as_ref()) {
            make.env_remove(name.as_ref());
        }
    }
    run(&mut make);
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("target"));
    let bin = target.join("release/sluice");
    let debug = target.join("release/sluice.debug");

    let size = std::fs::metadata(&bin)
        .expect("target/release/sluice")
        .len();
    assert!(
        size < LIMIT,
        "make build left a {size}-byte binary (limit {LIMIT})"
    );
    let s = sections(&bin);
    assert!(!has_section(&s, ".debug_line"), "{s}");
    let link = run(Command::new("readelf")
        .args(["--string-dump=.gnu_debuglink"])
        .arg(&bin));
    assert!(link.contains("sluice.debug"), "{link}");
    assert!(has_section(&sections(&debug), ".debug_line"));

    // sluice's own functions resolve to file:line in its sources.
    let nm = run(Command::new("nm").arg(&debug));
    let addrs: Vec<String> = nm
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[1].eq_ignore_ascii_case("t") && f[2].starts_with("_ZN6sluice"))
                .then(|| format!("0x{}", f[0]))
        })
        .take(20)
        .collect();
    assert!(!addrs.is_empty(), "no sluice functions in the symbol table");
    let lines = run(Command::new("addr2line").arg("-e").arg(&debug).args(&addrs));
    assert!(
        lines.lines().any(|l| l.contains("/src/")
            && l.rsplit(':')
                .next()
                .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n > 0))),
        "no file:line for sluice's functions:\n{lines}"
    );

    // The Dockerfile's builder strips the same build (the unsplit binary cargo
    // keeps in deps/) in one step; global symbols stay for backtraces.
    let unsplit = std::fs::read_dir(target.join("release/deps"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("sluice-") && !n.contains('.'))
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .expect("target/release/deps/sluice-*");
    let dockerfile = read("Dockerfile");
    let strip = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("&& strip "))
        .expect("the Dockerfile's strip step");
    let flags: Vec<&str> = strip
        .split_whitespace()
        .take_while(|w| w.starts_with('-'))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let docker_bin = tmp.path().join("sluice");
    run(Command::new("strip")
        .args(&flags)
        .arg("-o")
        .arg(&docker_bin)
        .arg(&unsplit));
    let docker_size = std::fs::metadata(&docker_bin).unwrap().len();
    assert!(
        docker_size < LIMIT,
        "`strip {}` leaves {docker_size} bytes",
        flags.join(" ")
    );
    let globals = run(Command::new("nm").arg("-g").arg(&docker_bin));
    assert!(
        globals.lines().any(|l| l.contains(" T _ZN6sluice")),
        "the Docker binary keeps no sluice symbols"
    );

    // Splitting again changes nothing, and the stripped binary still runs.
    split(&bin);
    assert_eq!(std::fs::metadata(&bin).unwrap().len(), size);
    let help = run(Command::new(&bin).arg("--help"));
    assert!(help.contains("Usage"), "{help}");
}

#[test]
fn backtraces_of_a_split_binary_keep_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("boom.rs");
    std::fs::write(
        &src,
        "#[inline(never)]\nfn deep(n: usize) -> usize {\n    if n > 1 {\n        panic!(\"boom\");\n    }\n    n\n}\nfn main() {\n    println!(\"{}\", deep(std::env::args().count() + 1));\n}\n",
    )
    .unwrap();
    let bin = dir.path().join("boom");
    run(Command::new("rustc")
        .args([
            "--edition=2021",
            "-O",
            "-C",
            "debuginfo=line-tables-only",
            "-o",
        ])
        .arg(&bin)
        .arg(&src));
    split(&bin);
    // The `at file:line` lines of the backtrace (the panic message names its
    // location without any debug info, so it does not count).
    let frames = |bin: &Path| -> (Vec<String>, String) {
        let out = Command::new(bin)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        let at = text
            .lines()
            .map(str::trim_start)
            .filter(|l| l.starts_with("at "))
            .map(str::to_string)
            .collect();
        (at, text)
    };
    let (at, text) = frames(&bin);
    assert!(
        at.iter().any(|l| l.contains("boom.rs:4:")),
        "no file:line for deep():\n{text}"
    );
    // It is the debug file that answers: without it, no file:line.
    std::fs::remove_file(dir.path().join("boom.debug")).unwrap();
    let (at, text) = frames(&bin);
    assert!(!at.iter().any(|l| l.contains("boom.rs")), "{text}");
}
