//! The Dockerfile (built from the package list, run as documented) and
//! compose.yaml (health check, restart, memory limit, data volume).

use std::collections::BTreeMap;
use std::path::Path;

use serde_norway::Value;

use crate::support::{dpkg_owner, have, quantity, read, scalar, settings_from_env, with_role};

/// Dockerfile instructions, continuation lines joined, with their stage index.
fn dockerfile() -> Vec<(usize, String, String)> {
    let text = read("Dockerfile").replace("\\\n", " ");
    let mut stage = 0;
    let mut out = Vec::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (op, rest) = line.split_once(' ').unwrap_or((line, ""));
        let op = op.to_ascii_uppercase();
        if op == "FROM" {
            stage += 1;
        }
        out.push((
            stage,
            op,
            rest.split_whitespace().collect::<Vec<_>>().join(" "),
        ));
    }
    out
}

#[test]
fn the_dockerfile_builds_then_runs_with_only_the_runtime_packages() {
    let ins = dockerfile();
    let last = ins.iter().map(|i| i.0).max().unwrap_or(0);
    let find = |stage: usize, op: &str| -> Vec<String> {
        ins.iter()
            .filter(|i| i.0 == stage && i.1 == op)
            .map(|i| i.2.clone())
            .collect()
    };
    let froms: Vec<String> = ins
        .iter()
        .filter(|i| i.1 == "FROM")
        .map(|i| i.2.clone())
        .collect();
    assert!(
        froms.len() >= 2 && froms[0].contains(" AS builder"),
        "multi-stage: {froms:?}"
    );
    assert!(
        froms[last - 1].starts_with("debian:bookworm-slim"),
        "runtime base: {froms:?}"
    );
    assert!(
        froms[0].contains("bookworm"),
        "builder and runtime must share a Debian release: {froms:?}"
    );
    // The builder is a fixed Rust release, new enough for rust-version.
    let (image, _) = froms[0].split_once(" AS ").unwrap();
    let tag = image.strip_prefix("rust:").expect("a rust: builder image");
    let version = tag.strip_suffix("-bookworm").expect("a bookworm tag");
    let parts: Vec<u32> = version
        .split('.')
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("{tag}: not a fixed release"))
        })
        .collect();
    assert_eq!(parts.len(), 3, "{tag}: pin major.minor.patch");
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    let need: Vec<u32> = manifest["package"]["rust-version"]
        .as_str()
        .unwrap()
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(
        parts[..need.len()] >= need[..],
        "{tag} is older than rust-version {need:?}"
    );
    // install-deps.sh checks cargo against Cargo.toml, so it is copied first.
    let stage1: Vec<&(usize, String, String)> = ins.iter().filter(|i| i.0 == 1).collect();
    let manifest_copy = stage1
        .iter()
        .position(|i| i.1 == "COPY" && i.2.split_whitespace().next() == Some("Cargo.toml"));
    let deps_run = stage1
        .iter()
        .position(|i| i.1 == "RUN" && i.2.contains("install-deps.sh build"));
    assert!(
        manifest_copy.is_some() && manifest_copy < deps_run,
        "the builder must copy Cargo.toml before install-deps.sh build"
    );

    let build_runs = find(1, "RUN").join(" && ");
    assert!(
        build_runs.contains("install-deps.sh build &&"),
        "builder: {build_runs}"
    );
    assert!(
        build_runs.contains("cargo build --release --locked"),
        "builder: {build_runs}"
    );
    // The binary that leaves the builder is stripped (tests/packaging/release.rs
    // measures what this strip makes of the release build).
    let after_build = build_runs
        .split("cargo build --release --locked")
        .nth(1)
        .unwrap_or("");
    assert!(
        after_build.contains("strip --strip-debug --discard-all /out/sluice"),
        "builder: {build_runs}"
    );
    let runs = find(last, "RUN").join(" && ");
    let args: Vec<&str> = runs
        .split("install-deps.sh")
        .nth(1)
        .unwrap_or("")
        .split("&&")
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        args,
        ["runtime", "hardware"],
        "the runtime stage installs exactly the runtime and hardware-driver roles: {runs}"
    );
    let copies = find(last, "COPY").join("\n");
    assert!(
        copies.contains("packaging/debian-packages.txt packaging/install-deps.sh"),
        "{copies}"
    );

    let env: BTreeMap<String, String> = find(last, "ENV")
        .iter()
        .flat_map(|e| e.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let settings = settings_from_env("Dockerfile", &env);
    assert_eq!(settings.host.to_string(), "0.0.0.0");
    let profiles = settings.profiles.to_string_lossy().into_owned();
    assert!(
        copies.contains(&format!("pipelines/profiles.toml {profiles}")),
        "profiles not copied to {profiles}"
    );
    assert_eq!(find(last, "VOLUME"), [settings.data_dir.to_string_lossy()]);
    assert_eq!(find(last, "EXPOSE"), [settings.port.to_string()]);
    let user = find(last, "USER").pop().expect("USER");
    assert!(
        !["root", "0", "0:0"].contains(&user.as_str()),
        "runs as root: {user}"
    );

    let health = find(last, "HEALTHCHECK").pop().expect("HEALTHCHECK");
    assert!(health.contains("/live"), "{health}");
    let probe = health
        .split(" CMD ")
        .nth(1)
        .and_then(|c| c.split_whitespace().next())
        .expect("CMD");
    if have("dpkg") {
        let owner = dpkg_owner(&Path::new("/usr/bin").join(probe)).expect("probe's package");
        assert!(
            with_role("runtime").contains(&owner),
            "HEALTHCHECK uses {probe} from {owner}: not runtime"
        );
    }

    let ignore = read(".dockerignore");
    let ignored: Vec<&str> = ignore.lines().map(str::trim).collect();
    for local in ["target", ".git", "data"] {
        assert!(
            ignored.contains(&local),
            ".dockerignore must exclude {local}"
        );
    }
    for needed in ["Cargo.toml", "Cargo.lock", "src", "pipelines", "packaging"] {
        assert!(
            !ignored
                .iter()
                .any(|p| p.trim_matches('/') == needed || *p == "*"),
            ".dockerignore drops {needed}"
        );
    }
}

#[test]
fn compose_has_health_check_restart_memory_limit_and_data_volume() {
    let text = read("compose.yaml");
    let doc: Value = serde_norway::from_str(&text).expect("compose.yaml is YAML");
    let svc = &doc["services"]["sluice"];
    assert_eq!(svc["build"].as_str(), Some("."), "builds the Dockerfile");
    assert!(
        ["always", "unless-stopped", "on-failure"].contains(&svc["restart"].as_str().unwrap_or(""))
    );

    let raw = svc["environment"].as_mapping().expect("environment map");
    assert!(
        raw.get("ADMIN_API_KEY").is_none_or(Value::is_null),
        "an empty ADMIN_API_KEY stops start-up: leave it null"
    );
    let env: BTreeMap<String, String> = raw
        .iter()
        .filter_map(|(k, v)| Some((k.as_str()?.to_string(), scalar(v)?)))
        .collect();
    let settings = settings_from_env("compose.yaml", &env);

    let limit = quantity(svc["mem_limit"].as_str().expect("mem_limit"));
    assert!(
        limit > settings.memory_critical,
        "mem_limit must sit above MEMORY_CRITICAL_THRESHOLD"
    );
    let grace = humantime::parse_duration(
        svc["stop_grace_period"]
            .as_str()
            .expect("stop_grace_period"),
    )
    .unwrap();
    assert!(
        grace > settings.shutdown_grace(),
        "stop_grace_period must exceed SHUTDOWN_GRACE"
    );

    let test: Vec<String> = svc["healthcheck"]["test"]
        .as_sequence()
        .expect("healthcheck.test")
        .iter()
        .filter_map(scalar)
        .collect();
    let url = test
        .iter()
        .find(|t| t.contains("/live"))
        .expect("health check on /live");
    assert!(url.contains(&format!(":{}/", settings.port)), "{url}");
    let ports: Vec<String> = svc["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .filter_map(scalar)
        .collect();
    assert!(
        ports
            .iter()
            .any(|p| p.ends_with(&format!(":{}", settings.port))),
        "{ports:?}"
    );

    let data_dir = read("Dockerfile")
        .lines()
        .find_map(|l| l.trim().strip_prefix("VOLUME ").map(str::to_string))
        .unwrap();
    let volumes: Vec<String> = svc["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(scalar)
        .collect();
    let named = volumes
        .iter()
        .find_map(|v| v.strip_suffix(&format!(":{data_dir}")))
        .expect("a volume on the data dir");
    assert!(
        doc["volumes"]
            .as_mapping()
            .is_some_and(|m| m.contains_key(named)),
        "volume {named} not declared"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with('#') && l.contains("/dev/dri")),
        "commented /dev/dri line"
    );
}
