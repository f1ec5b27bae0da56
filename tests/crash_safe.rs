//! Crash safety of the catalog (SPEC §5, §8) against the real binary: a
//! SIGKILL in the middle of a burst of concurrent writes loses no write that
//! was acknowledged, and a corrupt catalog at start-up is moved aside
//! (`streams.json.corrupt-<timestamp>`), logged, and replaced by an empty one.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::BinServer;
use serde_json::{json, Value};

const WRITERS: usize = 8;
/// Acknowledged writes to wait for before the kill (the burst goes on).
const ACKED_BEFORE_KILL: usize = 25;

async fn catalog_ids(srv: &BinServer) -> BTreeSet<String> {
    let list: Vec<Value> = common::client()
        .get(srv.url("/api/streams"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list.iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// One round: burst, SIGKILL mid-burst, restart, check. Returns the number
/// of acknowledged writes and the number of writes in flight at the kill.
async fn kill_mid_burst(data: &std::path::Path, round: usize) -> (usize, usize) {
    let envs = [("RATE_LIMIT_ADMIN", "off"), ("RATE_LIMIT_API", "off")];
    let srv = BinServer::start(data, &[], &envs);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let base = srv.base.clone();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (acked, in_flight, base) = (acked.clone(), in_flight.clone(), base.clone());
        writers.push(tokio::spawn(async move {
            let c = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            for n in 0.. {
                let id = format!("r{round}-w{w}-{n}");
                in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let sent = c
                    .post(format!("{base}/api/streams"))
                    .json(&json!({"id": id, "name": id, "url": "test://smpte"}))
                    .send()
                    .await;
                in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                match sent {
                    Ok(r) if r.status() == 201 => acked.lock().unwrap().push(id),
                    Ok(r) => panic!("write {id} answered {}", r.status()),
                    // The server died under us: the write was not acknowledged.
                    Err(_) => return,
                }
            }
        }));
    }
    let reached = common::eventually(Duration::from_secs(60), || {
        acked.lock().unwrap().len() >= ACKED_BEFORE_KILL
    })
    .await;
    assert!(reached, "the burst made no progress");
    let pending = in_flight.load(std::sync::atomic::Ordering::SeqCst);
    let mut srv = srv;
    srv.kill();
    for w in writers {
        w.await.unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();

    // The file on disk is a whole catalog, never a torn one.
    let bytes = std::fs::read(data.join("streams.json")).unwrap();
    serde_json::from_slice::<Vec<Value>>(&bytes).expect("streams.json parses after SIGKILL");

    let again = BinServer::start(data, &[], &envs);
    let ids = catalog_ids(&again).await;
    let lost: Vec<&String> = acked.iter().filter(|id| !ids.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged writes lost after SIGKILL: {lost:?}"
    );
    assert!(
        !again.stderr_text().contains("corrupt"),
        "{}",
        again.stderr_text()
    );
    (acked.len(), pending)
}

#[tokio::test]
async fn sigkill_mid_burst_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut total = 0;
    let mut interrupted = 0;
    for round in 0..3 {
        let (acked, pending) = kill_mid_burst(&data, round).await;
        total += acked;
        interrupted += pending;
    }
    assert!(total >= 3 * ACKED_BEFORE_KILL);
    // Writes were really in flight when the process died.
    assert!(interrupted > 0, "no write was in flight at any kill");
}

#[tokio::test]
async fn corrupt_catalog_is_moved_aside_and_the_server_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let torn = b"[{\"id\": \"news\", \"name\": \"Ne";
    std::fs::write(data.join("streams.json"), torn).unwrap();

    let mut srv = BinServer::start(&data, &[], &[]);
    let aside: Vec<std::path::PathBuf> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("streams.json.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    let suffix = aside[0].file_name().unwrap().to_string_lossy().to_string();
    let ts = suffix.trim_start_matches("streams.json.corrupt-");
    assert!(
        !ts.is_empty() && ts.bytes().all(|b| b.is_ascii_digit()),
        "{suffix}"
    );
    assert_eq!(std::fs::read(&aside[0]).unwrap(), torn);

    // Logged clearly, at error level, naming where the old file went.
    let logs = srv.stderr_text();
    let line = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"].as_str().is_some_and(|m| m.contains("corrupt")))
        .unwrap_or_else(|| panic!("no corrupt-catalog log line: {logs}"));
    assert_eq!(line["level"], "ERROR", "{line}");
    assert!(line.to_string().contains(&suffix), "{line}");

    assert!(catalog_ids(&srv).await.is_empty());
    let r = common::client()
        .post(srv.url("/api/streams"))
        .json(&json!({"id": "fresh", "name": "Fresh", "url": "test://ball"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    srv.kill();
    let srv = BinServer::start(&data, &[], &[]);
    assert_eq!(
        catalog_ids(&srv).await,
        BTreeSet::from(["fresh".to_string()])
    );
}
