//! Shared helpers: the package list parsed on its own, tool detection (skip
//! off Debian, fail on CI), dpkg ownership, and sluice's real settings parser
//! applied to the variables a deployment file sets.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{CommandFactory, Parser};
use serde_norway::Value;
use sluice::config::Settings;

pub const LIST: &str = "packaging/debian-packages.txt";
pub const ROLES: [&str; 5] = ["build", "runtime", "hardware", "test", "bench"];

pub fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `<package> <roles>` lines, parsed here independently of install-deps.sh.
pub fn package_list() -> BTreeMap<String, BTreeSet<String>> {
    let mut list = BTreeMap::new();
    for (n, line) in read(LIST).lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields.len(),
            2,
            "{LIST}:{}: want `<package> <roles>`",
            n + 1
        );
        let roles: BTreeSet<String> = fields[1].split(',').map(str::to_string).collect();
        for r in &roles {
            assert!(
                ROLES.contains(&r.as_str()),
                "{LIST}:{}: unknown role {r}",
                n + 1
            );
        }
        let dup = list.insert(fields[0].to_string(), roles);
        assert!(
            dup.is_none(),
            "{LIST}:{}: {} listed twice",
            n + 1,
            fields[0]
        );
    }
    list
}

pub fn with_role(role: &str) -> BTreeSet<String> {
    package_list()
        .into_iter()
        .filter(|(_, roles)| roles.contains(role))
        .map(|(p, _)| p)
        .collect()
}

pub fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Whether `tool` runs here; on CI a missing tool is a failure, not a skip.
pub fn have(tool: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok();
    assert!(
        found || !on_ci(),
        "{tool} is missing on CI: .ci/run installs it from {LIST}"
    );
    if !found {
        eprintln!("skipping the {tool} checks: {tool} is not installed");
    }
    found
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The installed package that owns `file`, trying the merged-/usr spellings.
pub fn dpkg_owner(file: &Path) -> Option<String> {
    let mut candidates = vec![file.to_path_buf()];
    if let Ok(real) = file.canonicalize() {
        candidates.insert(0, real);
    }
    let s = file.to_string_lossy();
    match s.strip_prefix("/usr") {
        Some(rest) => candidates.push(PathBuf::from(rest)),
        None => candidates.push(PathBuf::from(format!("/usr{s}"))),
    }
    candidates.into_iter().find_map(|c| {
        let out = Command::new("dpkg").arg("-S").arg(&c).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| !l.starts_with("diversion"))?;
        let pkgs = line.rsplit_once(": ")?.0;
        Some(pkgs.split(", ").next()?.split(':').next()?.to_string())
    })
}

/// Settings exactly as sluice would parse these variables (via their flags),
/// so every value a deployment file sets is proven valid.
pub fn settings_from_env(file: &str, env: &BTreeMap<String, String>) -> Settings {
    let cmd = Settings::command();
    let mut argv = vec!["sluice".to_string()];
    for (name, value) in env {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()));
        match arg.and_then(|a| a.get_long()) {
            Some(long) => argv.push(format!("--{long}={value}")),
            None => assert!(
                ["XDG_CACHE_HOME"].contains(&name.as_str()),
                "{file}: {name} is not a sluice variable"
            ),
        }
    }
    let settings = Settings::try_parse_from(&argv).unwrap_or_else(|e| panic!("{file}: {e}"));
    settings
        .validate()
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    settings
}

pub fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `1536m`, `1536Mi`, `1.5Gi` and so on, in bytes.
pub fn quantity(s: &str) -> u64 {
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().unwrap_or_else(|_| panic!("quantity {s}"));
    let mult = match unit.to_ascii_lowercase().trim_end_matches('b') {
        "" => 1u64,
        "k" | "ki" => 1 << 10,
        "m" | "mi" => 1 << 20,
        "g" | "gi" => 1 << 30,
        _ => panic!("unit of {s}"),
    };
    (n * mult as f64) as u64
}
