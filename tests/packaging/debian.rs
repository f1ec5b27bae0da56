//! The one Debian package list: every installer reads it, every required
//! GStreamer element and every library the binary links comes from its
//! runtime packages.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::process::Command;

use gst::prelude::*;
use sluice::media::elements::REQUIRED_ELEMENTS;

use crate::support::{dpkg_owner, have, package_list, read, run, with_role, LIST, ROLES};

#[test]
fn the_package_list_is_well_formed_and_read_by_every_installer() {
    let list = package_list();
    for role in ROLES {
        let listed = run(Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/install-deps.sh"))
            .args(["--list", role]));
        let listed: BTreeSet<String> = listed.lines().map(str::to_string).collect();
        assert_eq!(
            listed,
            with_role(role),
            "install-deps.sh --list {role} disagrees with {LIST}"
        );
    }
    assert!(
        list.contains_key("nix-bin"),
        "CI needs nix-bin for the flake parse check"
    );
    // Makefile, .ci/run and the Dockerfile install through the one script only.
    for (file, call) in [
        ("Makefile", "install-deps.sh build runtime"),
        (".ci/run", "install-deps.sh build runtime test"),
        ("Dockerfile", "install-deps.sh runtime"),
    ] {
        let text = read(file);
        assert!(text.contains(call), "{file} must run `{call}`");
        assert!(
            !text.contains("apt-get install"),
            "{file} installs packages outside {LIST}"
        );
    }
}

#[test]
fn every_required_element_comes_from_a_runtime_package_of_the_list() {
    if !have("dpkg") {
        return;
    }
    sluice::media::init().expect("GStreamer init");
    let runtime = with_role("runtime");
    let mut problems = Vec::new();
    for (element, declared) in REQUIRED_ELEMENTS {
        let Some(factory) = gst::ElementFactory::find(element) else {
            problems.push(format!("{element}: not installed (want {declared})"));
            continue;
        };
        let file = factory
            .plugin()
            .and_then(|p| p.filename())
            .unwrap_or_else(|| panic!("{element}: GStreamer knows no plugin file"));
        let Some(owner) = dpkg_owner(&file) else {
            problems.push(format!("{element}: no package owns {}", file.display()));
            continue;
        };
        if owner != *declared {
            problems.push(format!(
                "{element}: REQUIRED_ELEMENTS says {declared}, dpkg says {owner}"
            ));
        }
        if !runtime.contains(&owner) {
            problems.push(format!(
                "{element}: {owner} lacks the runtime role in {LIST}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Installed packages with their dependencies (Pre-Depends and Depends, every
/// alternative) and the virtual packages they provide.
fn installed_packages() -> (HashMap<String, Vec<String>>, HashMap<String, Vec<String>>) {
    let fmt = "${Package}\t${db:Status-Abbrev}\t${Provides}\t${Pre-Depends}, ${Depends}\n";
    let out = run(Command::new("dpkg-query").args(["-W", "-f", fmt]));
    let names = |field: &str| -> Vec<String> {
        field
            .split([',', '|'])
            .filter_map(|d| d.split_whitespace().next())
            .map(|d| d.split(':').next().unwrap_or(d).to_string())
            .collect()
    };
    let (mut deps, mut provides) = (HashMap::new(), HashMap::<String, Vec<String>>::new());
    for line in out.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 4 || !f[1].starts_with("ii") {
            continue;
        }
        for virt in names(f[2]) {
            provides.entry(virt).or_default().push(f[0].to_string());
        }
        deps.entry(f[0].to_string())
            .or_insert_with(Vec::new)
            .extend(names(f[3]));
    }
    (deps, provides)
}

#[test]
fn the_binary_links_only_libraries_that_the_runtime_packages_bring() {
    if !have("dpkg") {
        return;
    }
    let (deps, provides) = installed_packages();
    let mut closure = HashSet::new();
    let mut todo: Vec<String> = with_role("runtime").into_iter().collect();
    while let Some(p) = todo.pop() {
        let real = provides.get(&p).cloned().unwrap_or_default();
        for q in std::iter::once(p).chain(real) {
            if let Some(ds) = deps.get(&q) {
                if closure.insert(q) {
                    todo.extend(ds.iter().cloned());
                }
            }
        }
    }
    let ldd = run(Command::new("ldd").arg(env!("CARGO_BIN_EXE_sluice")));
    let libs: Vec<&str> = ldd
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .collect();
    assert!(
        libs.iter().any(|l| l.contains("libgstreamer-1.0")),
        "ldd: {ldd}"
    );
    for lib in libs {
        let owner = dpkg_owner(Path::new(lib)).unwrap_or_else(|| panic!("no package owns {lib}"));
        assert!(
            closure.contains(&owner),
            "{lib} is from {owner}, which the runtime packages of {LIST} do not bring"
        );
    }
}
