//! deploy/kubernetes.yaml (probes, drain, data, secret) and flake.nix
//! (parses, wraps the plugins, its NixOS module knows every setting).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use clap::CommandFactory;
use serde::Deserialize;
use serde_norway::Value;
use sluice::config::Settings;

use crate::support::{have, on_ci, quantity, read, run, scalar, settings_from_env};

#[test]
fn the_kubernetes_manifest_probes_drains_and_keeps_its_data() {
    let docs: Vec<Value> = serde_norway::Deserializer::from_str(&read("deploy/kubernetes.yaml"))
        .map(|d| Value::deserialize(d).expect("kubernetes.yaml is YAML"))
        .collect();
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(k))
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let (deploy, service, pvc) = (
        kind("Deployment"),
        kind("Service"),
        kind("PersistentVolumeClaim"),
    );
    let pod = &deploy["spec"]["template"]["spec"];
    let c = &pod["containers"][0];

    let (mut env, mut from_secret) = (BTreeMap::new(), Vec::new());
    for e in c["env"].as_sequence().expect("env") {
        let name = e["name"].as_str().unwrap().to_string();
        match scalar(&e["value"]) {
            Some(v) => {
                env.insert(name, v);
            }
            None if e["valueFrom"]["secretKeyRef"]["key"].is_string() => from_secret.push(name),
            None => panic!("{name}: neither a value nor a Secret key"),
        }
    }
    assert_eq!(
        from_secret,
        ["ADMIN_API_KEY"],
        "the admin key comes from a Secret"
    );
    let settings = settings_from_env("deploy/kubernetes.yaml", &env);
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace * 1000 > settings.shutdown_grace_ms,
        "terminationGracePeriodSeconds must exceed SHUTDOWN_GRACE"
    );
    let limit = quantity(
        c["resources"]["limits"]["memory"]
            .as_str()
            .expect("memory limit"),
    );
    assert!(
        limit > settings.memory_critical,
        "memory limit must sit above MEMORY_CRITICAL_THRESHOLD"
    );
    assert!(
        c["resources"]["requests"]["memory"].is_string()
            && c["resources"]["requests"]["cpu"].is_string()
    );

    let port = c["ports"][0].clone();
    assert_eq!(port["containerPort"].as_u64(), Some(settings.port.into()));
    for (probe, path) in [("livenessProbe", "/live"), ("readinessProbe", "/ready")] {
        assert_eq!(c[probe]["httpGet"]["path"].as_str(), Some(path), "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], port["name"], "{probe} port");
    }
    let mount = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"].as_str() == settings.data_dir.to_str())
        .expect("data dir mount");
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("data volume");
    assert_eq!(
        volume["persistentVolumeClaim"]["claimName"],
        pvc["metadata"]["name"]
    );

    let labels = deploy["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .unwrap();
    for (k, v) in service["spec"]["selector"].as_mapping().expect("selector") {
        assert_eq!(
            labels.get(k),
            Some(v),
            "Service selector does not match the pods"
        );
    }
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port["name"]);
    let uid = read("Dockerfile")
        .lines()
        .find_map(|l| {
            l.strip_prefix("USER ")
                .map(|u| u.split(':').next().unwrap_or(u).to_string())
        })
        .unwrap();
    assert_eq!(
        pod["securityContext"]["runAsUser"]
            .as_u64()
            .map(|u| u.to_string()),
        Some(uid)
    );
    let image = c["image"].as_str().unwrap();
    assert!(
        image.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))),
        "image tag {image} is not the crate version"
    );
}

fn manifest() -> Vec<Value> {
    serde_norway::Deserializer::from_str(&read("deploy/kubernetes.yaml"))
        .map(|d| Value::deserialize(d).expect("kubernetes.yaml is YAML"))
        .collect()
}

/// kubernetes-validate as install-deps.sh leaves it (test role): in a venv
/// under the user's cache, at the version the script pins.
fn kubernetes_validate() -> Option<PathBuf> {
    let script = read("packaging/install-deps.sh");
    let version = script
        .lines()
        .find_map(|l| l.strip_prefix("KUBERNETES_VALIDATE_VERSION="))
        .expect("install-deps.sh pins KUBERNETES_VALIDATE_VERSION")
        .trim();
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    let bin = cache.join(format!(
        "sluice/kubernetes-validate-{version}/bin/kubernetes-validate"
    ));
    let found = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found || !on_ci(),
        "{} is missing on CI: install-deps.sh test installs it",
        bin.display()
    );
    if !found {
        eprintln!(
            "skipping the schema check: run packaging/install-deps.sh test to install kubernetes-validate {version}"
        );
    }
    found.then_some(bin)
}

#[test]
fn the_kubernetes_manifest_validates_against_the_kubernetes_schemas() {
    let Some(validate) = kubernetes_validate() else {
        return;
    };
    let check = |file: &std::path::Path| {
        Command::new(&validate)
            .arg("--strict")
            .arg(file)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("kubernetes-validate runs")
    };
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes.yaml");
    let out = check(&file);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.matches(" passed for resource ").count(),
        manifest().len(),
        "every resource is checked: {text}"
    );
    // The schemas are really consulted: a wrong type and an unknown field fail.
    let dir = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("containerPort: 3000", "containerPort: \"three thousand\""),
        (
            "pathType: Prefix",
            "pathType: Prefix\n            weight: 1",
        ),
    ] {
        let source = read("deploy/kubernetes.yaml");
        assert!(source.contains(from), "{from}");
        let broken = dir.path().join("broken.yaml");
        std::fs::write(&broken, source.replacen(from, to, 1)).unwrap();
        assert!(!check(&broken).status.success(), "{to} passed the schemas");
    }
}

#[test]
fn the_ingress_sends_every_viewer_of_a_stream_to_one_replica() {
    let docs = manifest();
    let all = |k: &str| -> Vec<&Value> {
        docs.iter()
            .filter(|d| d["kind"].as_str() == Some(k))
            .collect()
    };
    let deploy = all("Deployment")[0];
    let pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .unwrap();
    assert!(
        deploy["spec"]["replicas"].as_u64().unwrap() >= 2,
        "scaled out"
    );
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    let env = |name: &str| {
        c["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str() == Some(name))
            .and_then(|e| scalar(&e["value"]))
    };
    assert_eq!(env("MAX_CONCURRENT_TRANSCODES").as_deref(), Some("auto"));
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/ready"),
        "a saturated replica leaves the rotation"
    );
    let service = |name: &str| {
        all("Service")
            .into_iter()
            .find(|s| s["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no Service {name}"))
    };

    let hashed: Vec<&Value> = all("Ingress")
        .into_iter()
        .filter(|i| {
            i["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"].is_string()
        })
        .collect();
    assert_eq!(hashed.len(), 1, "one Ingress hashes the channel routes");
    let ing = hashed[0];
    let ann = &ing["metadata"]["annotations"];
    assert_eq!(
        ann["nginx.ingress.kubernetes.io/use-regex"].as_str(),
        Some("true")
    );
    assert_eq!(
        ann["nginx.ingress.kubernetes.io/upstream-hash-by"].as_str(),
        Some("$1")
    );
    assert!(
        ann["nginx.ingress.kubernetes.io/upstream-hash-by-subset"].is_null(),
        "the whole ring, not subsets: one replica per stream"
    );
    assert_eq!(
        ann["nginx.ingress.kubernetes.io/proxy-buffering"].as_str(),
        Some("off")
    );
    let paths = ing["spec"]["rules"][0]["http"]["paths"]
        .as_sequence()
        .unwrap();
    let regexes: Vec<String> = paths
        .iter()
        .map(|p| p["path"].as_str().unwrap().to_string())
        .collect();
    for p in paths {
        let backend = &p["backend"]["service"];
        let svc = service(backend["name"].as_str().unwrap());
        for (k, v) in svc["spec"]["selector"].as_mapping().unwrap() {
            assert_eq!(
                pod_labels.get(k),
                Some(v),
                "the hashed Service selects the pods"
            );
        }
        assert_eq!(svc["spec"]["ports"][0]["name"], backend["port"]["name"]);
        assert_ne!(
            backend["name"].as_str(),
            Some("sluice"),
            "the hashed routes have an upstream of their own"
        );
    }
    // $1 is the stream id of every route that reads a channel (as nginx's
    // PCRE matches the location; Python's re agrees on this syntax).
    let cases = [
        ("/streams/preview/news-1?quality=low", "news-1"),
        ("/streams/preview/news-1", "news-1"),
        ("/streams/hls/news-1/master.m3u8", "news-1"),
        ("/streams/hls/news-1/medium/index.m3u8", "news-1"),
        ("/streams/snapshot/news-1.jpg", "news-1"),
    ];
    let program = format!(
        "import re, sys\npats = {regexes:?}\nfor path, want in {cases:?}:\n    got = [m.group(1) for m in (re.match(p, path) for p in pats) if m]\n    assert got == [want], (path, got)\nassert not any(re.match(p, '/api/streams') for p in pats)\n",
        cases = cases.iter().map(|(p, w)| (p.to_string(), w.to_string())).collect::<Vec<_>>(),
    );
    run(Command::new("python3").args(["-c", &program]));

    // The rest of the routes go to any ready replica.
    let plain: Vec<&Value> = all("Ingress")
        .into_iter()
        .filter(|i| {
            i["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"].is_null()
        })
        .collect();
    assert_eq!(plain.len(), 1);
    let p = &plain[0]["spec"]["rules"][0]["http"]["paths"][0];
    assert_eq!(p["path"].as_str(), Some("/"));
    assert_eq!(p["backend"]["service"]["name"].as_str(), Some("sluice"));
}

#[test]
fn the_flake_parses_wraps_the_plugins_and_knows_every_setting() {
    let flake = read("flake.nix");
    for needle in [
        "cargoLock.lockFile = ./Cargo.lock",
        "GST_PLUGIN_SYSTEM_PATH_1_0",
        "lib.makeSearchPathOutput \"lib\" \"lib/gstreamer-1.0\"",
        "pipelines/profiles.toml \"$out/share/sluice/profiles.toml\"",
        "DynamicUser = true",
        "ProtectSystem = \"strict\"",
        "NoNewPrivileges = true",
        "Restart = \"on-failure\"",
    ] {
        assert!(flake.contains(needle), "flake.nix lacks {needle}");
    }
    let plugins = flake
        .split("gstPlugins = pkgs:")
        .nth(1)
        .and_then(|s| s.split("];").next())
        .expect("gstPlugins");
    for p in [
        "gstreamer",
        "gst-plugins-base",
        "gst-plugins-good",
        "gst-plugins-bad",
        "gst-plugins-ugly",
        "gst-libav",
    ] {
        assert!(
            plugins.split_whitespace().any(|w| w == p),
            "the wrapped plugin path lacks gst_all_1.{p}"
        );
    }
    // The module rejects unknown settings, so it must know every variable sluice reads.
    for arg in Settings::command().get_arguments() {
        if let Some(var) = arg.get_env() {
            let quoted = format!("\"{}\"", var.to_string_lossy());
            assert!(
                flake.contains(&quoted) || flake.contains(&format!("{} =", var.to_string_lossy())),
                "the NixOS module does not know {quoted}"
            );
        }
    }

    if !have("nix-instantiate") {
        return;
    }
    // Parsing and evaluating need no store; the dummy one also works without root.
    let nix = || {
        let mut cmd = Command::new("nix-instantiate");
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["--store", "dummy://"]);
        cmd
    };
    run(nix().args(["--parse", "flake.nix"]));
    let shape = run(nix().args([
        "--eval",
        "--strict",
        "--json",
        "-E",
        "let f = import ./flake.nix; in [ (builtins.attrNames f) (builtins.attrNames (builtins.functionArgs f.outputs)) f.inputs.nixpkgs.url ]",
    ]));
    let shape: serde_json::Value = serde_json::from_str(&shape).expect("nix --json");
    assert_eq!(
        shape[0],
        serde_json::json!(["description", "inputs", "outputs"])
    );
    assert_eq!(shape[1], serde_json::json!(["nixpkgs", "self"]));
    assert!(
        shape[2]
            .as_str()
            .unwrap_or("")
            .starts_with("github:NixOS/nixpkgs/"),
        "{shape}"
    );
}

/// flake.nix's NixOS module evaluated for one `services.sluice` setting
/// (tests/packaging/nixos-module.nix stands in for nixpkgs' lib).
fn nixos_module(overrides: &str) -> serde_json::Value {
    let out = run(Command::new("nix-instantiate")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--store", "dummy://", "--eval", "--strict", "--json", "-E"])
        .arg(format!(
            "(import ./tests/packaging/nixos-module.nix) {overrides}"
        )));
    serde_json::from_str(&out).expect("nix --json")
}

#[test]
fn the_nixos_module_turns_any_data_dir_below_var_lib_into_a_state_directory() {
    if !have("nix-instantiate") {
        return;
    }
    for (data_dir, state) in [
        ("/var/lib/sluice", "sluice"),
        ("/var/lib/sluice/", "sluice"),
        ("/var/lib//sluice//", "sluice"),
        ("/var/lib/media/sluice", "media/sluice"),
    ] {
        let m = nixos_module(&format!("{{ dataDir = \"{data_dir}\"; }}"));
        assert_eq!(m["failedAssertions"], serde_json::json!([]), "{data_dir}");
        assert_eq!(m["serviceConfig"]["StateDirectory"], state, "{data_dir}");
        let dir = format!("/var/lib/{state}");
        assert_eq!(m["serviceConfig"]["WorkingDirectory"], dir.as_str());
        assert_eq!(m["environment"]["SLUICE_DATA_DIR"], dir.as_str());
    }
    for data_dir in [
        "/var/lib/",
        "/var/lib",
        "/srv/sluice",
        "/var/lib/../etc",
        "var/lib/sluice",
        "/var/library/sluice",
    ] {
        let m = nixos_module(&format!("{{ dataDir = \"{data_dir}\"; }}"));
        let failed = m["failedAssertions"].to_string();
        assert!(
            failed.contains("services.sluice.dataDir must name a directory below /var/lib/"),
            "{data_dir}: {failed}"
        );
    }
}

#[test]
fn the_nixos_module_grants_groups_and_keeps_media_dirs_visible() {
    if !have("nix-instantiate") {
        return;
    }
    let m = nixos_module("{ }");
    assert_eq!(
        m["serviceConfig"]["SupplementaryGroups"],
        serde_json::json!([])
    );
    assert_eq!(m["serviceConfig"]["PrivateTmp"], true);
    assert_eq!(m["serviceConfig"]["ProtectHome"], true);
    assert_eq!(m["warnings"], serde_json::json!([]));

    let m = nixos_module("{ mediaDir = \"/srv/media\"; supplementaryGroups = [ \"media\" ]; }");
    assert_eq!(
        m["serviceConfig"]["SupplementaryGroups"],
        serde_json::json!(["media"])
    );
    assert_eq!(m["serviceConfig"]["PrivateTmp"], true);
    assert_eq!(m["serviceConfig"]["ProtectHome"], true);
    assert_eq!(m["environment"]["SLUICE_MEDIA_DIR"], "/srv/media");
    assert_eq!(m["warnings"], serde_json::json!([]));

    // Hardware encoding: the render group and the VA drivers' path.
    let m = nixos_module("{ hardwareAcceleration = true; supplementaryGroups = [ \"media\" ]; }");
    assert_eq!(
        m["serviceConfig"]["SupplementaryGroups"],
        serde_json::json!(["media", "render"])
    );
    assert_eq!(
        m["environment"]["LIBVA_DRIVERS_PATH"],
        "/run/opengl-driver/lib/dri"
    );

    // (mediaDir, PrivateTmp, ProtectHome, a warning that names)
    for (media, private_tmp, protect_home, warning) in [
        (
            "/tmp/media",
            false,
            serde_json::json!(true),
            Some("PrivateTmp"),
        ),
        (
            "/var/tmp/media/",
            false,
            serde_json::json!(true),
            Some("PrivateTmp"),
        ),
        (
            "/run/user/1000/media",
            true,
            serde_json::json!("read-only"),
            Some("ProtectHome"),
        ),
        (
            "/home/alice/Videos",
            true,
            serde_json::json!("read-only"),
            None,
        ),
        ("/tmpfiles/media", true, serde_json::json!(true), None),
    ] {
        let m = nixos_module(&format!("{{ mediaDir = \"{media}\"; }}"));
        assert_eq!(m["serviceConfig"]["PrivateTmp"], private_tmp, "{media}");
        assert_eq!(m["serviceConfig"]["ProtectHome"], protect_home, "{media}");
        let warnings = m["warnings"].as_array().unwrap();
        match warning {
            Some(setting) => assert!(
                warnings.len() == 1
                    && warnings[0]
                        .as_str()
                        .is_some_and(|w| w.contains(media) && w.contains(setting)),
                "{media}: {warnings:?}"
            ),
            None => assert!(warnings.is_empty(), "{media}: {warnings:?}"),
        }
    }
}

#[test]
fn the_nix_package_strips_local_symbols_and_debug_info() {
    let flake = read("flake.nix");
    assert!(
        flake.contains("stripDebugFlags = [ \"--strip-debug\" \"--discard-all\" ];"),
        "the Nix package must strip like the Dockerfile"
    );
    assert!(
        !flake.contains("dontStrip"),
        "the Nix package must be stripped"
    );
}
