//! HDHomeRun tuner emulation over HTTP: a client that follows Plex's
//! sequence (discover -> lineup_status -> lineup -> lineup.post -> open a
//! channel) gets documents that parse and a channel that plays; the device
//! keeps its DeviceID across restarts; TunerCount follows the free slots
//! and the connections the lineup's providers still allow;
//! the HDHR_* settings shape the answers.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;
use sluice::config::TrustProxy;

/// The DeviceID, UDN and URLBase of a device.xml, read by Python's XML parser.
fn parse_device_xml(xml: &str) -> (String, String, String) {
    let script = r#"
import sys, xml.etree.ElementTree as ET
ns = {"u": "urn:schemas-upnp-org:device-1-0"}
root = ET.fromstring(sys.stdin.read())
dev = root.find("u:device", ns)
print(dev.find("u:serialNumber", ns).text)
print(dev.find("u:UDN", ns).text)
print(root.find("u:URLBase", ns).text)
assert dev.find("u:deviceType", ns).text == "urn:schemas-upnp-org:device:MediaServer:1"
"#;
    use std::io::Write;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(xml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "device.xml does not parse: {}\n{xml}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines().map(str::to_string);
    (
        lines.next().unwrap(),
        lines.next().unwrap(),
        lines.next().unwrap(),
    )
}

async fn device_xml(ts: &TestServer) -> String {
    let r = client().get(ts.url("/device.xml")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("xml"));
    r.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plex_sequence_discovers_lists_and_plays_a_channel() {
    let mut ts = start().await;
    add_stream(&ts, "small-ball", "test://ball?size=320x240&rate=25").await;
    let r = client()
        .put(ts.url("/api/streams/demo-snow"))
        .json(&serde_json::json!({"enabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // 1. discover.json
    let d = get_json(&ts.url("/discover.json")).await;
    assert_eq!(d["Manufacturer"], "Silicondust");
    assert_eq!(d["ModelNumber"], "HDTC-2US");
    assert_eq!(d["FirmwareName"], "hdhomeruntc_atsc");
    assert!(d["FirmwareVersion"].is_string() && d["FriendlyName"].is_string());
    assert!(d["DeviceAuth"].as_str().is_some_and(|a| !a.is_empty()));
    let device_id = d["DeviceID"].as_str().unwrap().to_string();
    assert!(
        sluice::tuner::valid_device_id(&device_id),
        "{device_id} must be 8 hex digits with the HDHomeRun check digit"
    );
    assert_eq!(d["BaseURL"], ts.base);
    assert_eq!(d["LineupURL"], format!("{}/lineup.json", ts.base));
    assert_eq!(d["TunerCount"], 3, "MAX_CONCURRENT_TRANSCODES, all free");

    // 2. lineup_status.json
    let s = get_json(&ts.url("/lineup_status.json")).await;
    assert_eq!(
        s,
        serde_json::json!({"ScanInProgress": 0, "ScanPossible": 1, "Source": "Cable", "SourceList": ["Cable"]})
    );

    // 3. lineup.json: every enabled stream, in number order.
    let lineup = get_json(d["LineupURL"].as_str().unwrap()).await;
    let lineup = lineup.as_array().unwrap().clone();
    let catalog: Vec<Value> = client()
        .get(ts.url("/api/streams"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let enabled: Vec<&Value> = catalog.iter().filter(|s| s["enabled"] == true).collect();
    assert_eq!(lineup.len(), enabled.len());
    assert_eq!(lineup.len(), 4, "three demo streams left enabled and ours");
    let numbers: Vec<&str> = lineup
        .iter()
        .map(|c| c["GuideNumber"].as_str().unwrap())
        .collect();
    assert_eq!(numbers, ["1", "2", "4", "5"]);
    for (c, s) in lineup.iter().zip(&enabled) {
        assert_eq!(c["GuideName"], s["name"]);
        assert_eq!(c["GuideNumber"], s["number"]);
        assert_eq!(c["HD"], 1);
        assert_eq!(
            c["URL"],
            format!(
                "{}/streams/preview/{}?format=ts",
                ts.base,
                s["id"].as_str().unwrap()
            )
        );
    }

    // 4. lineup.post
    for scan in ["start", "abort"] {
        let r = client()
            .post(ts.url(&format!("/lineup.post?scan={scan}&source=Cable")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scan}");
    }
    let r = client()
        .post(ts.url("/lineup.post?scan=now"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "bad_request");

    // 5. Open a channel: MPEG-TS that ffprobe decodes, one tuner fewer.
    let channel = lineup
        .iter()
        .find(|c| c["GuideName"] == "small-ball")
        .unwrap();
    let resp = client()
        .get(channel["URL"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "video/mp2t");
    let busy = get_json(&ts.url("/discover.json")).await;
    assert_eq!(busy["TunerCount"], 2, "a running channel takes a tuner");
    let bytes = read_for(resp, Duration::from_secs(3), 4 << 20).await;
    let file = ts.dir.path().join("channel.ts");
    std::fs::write(&file, &bytes).unwrap();
    let probe = ffprobe(&file);
    assert!(
        probe["format"]["format_name"]
            .as_str()
            .unwrap()
            .contains("mpegts"),
        "{probe}"
    );
    assert_eq!(
        stream_of(&probe, "video").expect("video")["codec_name"],
        "h264"
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            ts.state().pool.snapshot().transcodes == 0
        })
        .await,
        "the tuner is freed when the client hangs up"
    );
    assert_eq!(get_json(&ts.url("/discover.json")).await["TunerCount"], 3);

    // device.xml: XML with the same DeviceID.
    let xml = device_xml(&ts).await;
    let (serial, udn, base) = parse_device_xml(&xml);
    assert_eq!(serial, device_id);
    assert_eq!(udn, format!("uuid:{device_id}"));
    assert_eq!(base, ts.base);

    // The same device after a restart on the same data dir.
    ts.restart(|_| {}).await;
    let again = get_json(&ts.url("/discover.json")).await;
    assert_eq!(again["DeviceID"], device_id.as_str());
    assert_eq!(again["DeviceAuth"], d["DeviceAuth"]);
    assert_eq!(parse_device_xml(&device_xml(&ts).await).0, device_id);

    // Switched off: every tuner route is a JSON 404.
    ts.restart(|s| s.hdhr_enabled = false).await;
    for path in [
        "/discover.json",
        "/lineup_status.json",
        "/lineup.json",
        "/device.xml",
    ] {
        let r = client().get(ts.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].is_string() && body["message"].is_string());
    }
    let r = client()
        .post(ts.url("/lineup.post?scan=start"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuner_count_drops_when_a_provider_limit_is_reached() {
    let ts = start().await;
    let c = client();
    // The lineup: two channels of one account that allows one connection.
    for s in ts.state().catalog.snapshot().iter() {
        let r = c
            .put(ts.url(&format!("/api/streams/{}", s.id)))
            .json(&serde_json::json!({"enabled": false}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = c
        .post(ts.url("/api/providers"))
        .json(&serde_json::json!({"id": "acme", "name": "Acme", "maxConnections": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for id in ["one", "two"] {
        let r = c
            .post(ts.url("/api/streams"))
            .json(&serde_json::json!({
                "id": id, "name": id, "provider": "acme",
                "url": "test://ball?size=320x240&rate=25"
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let tuners = || async { get_json(&ts.url("/discover.json")).await["TunerCount"].clone() };
    assert_eq!(tuners().await, 1, "the provider allows one connection");

    let resp = c
        .get(ts.url("/streams/preview/one?format=ts&quality=low"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        tuners().await,
        0,
        "encoders and channel slots are free, the provider is not"
    );
    let r = c
        .get(ts.url("/streams/preview/two?format=ts&quality=low"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "one client switches, as Plex does");
    assert_eq!(tuners().await, 0);
    drop(resp);
    drop(r);
    assert!(
        eventually(Duration::from_secs(10), || {
            ts.state().providers.connections("acme") == 0
        })
        .await
    );
    assert_eq!(tuners().await, 1, "the tuner comes back after the hang-up");
    let r = c
        .put(ts.url("/api/providers/acme"))
        .json(&serde_json::json!({"maxConnections": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(tuners().await, 3, "now the encoder slots bound it");
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_url_and_quality_settings_shape_the_lineup() {
    let ts = start_with(|s| {
        s.hdhr_base_url = Some("http://nas.example:8080".into());
        s.hdhr_quality = Some("low".into());
    })
    .await;
    let d = get_json(&ts.url("/discover.json")).await;
    assert_eq!(d["BaseURL"], "http://nas.example:8080");
    assert_eq!(d["LineupURL"], "http://nas.example:8080/lineup.json");
    let lineup = get_json(&ts.url("/lineup.json")).await;
    assert_eq!(
        lineup[0]["URL"],
        "http://nas.example:8080/streams/preview/demo-smpte?format=ts&quality=low"
    );
    let (_, _, base) = parse_device_xml(&device_xml(&ts).await);
    assert_eq!(base, "http://nas.example:8080");
    ts.stop().await;

    // A profile that does not exist stops start-up, naming the variable.
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.hdhr_quality = Some("ultra".into());
    let err = sluice::Server::start(s).await.err().expect("refused");
    assert!(err.to_string().contains("HDHR_QUALITY"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_names_the_base_and_only_a_trusted_proxy_says_https() {
    let ts = start().await;
    let get = |host: &'static str, proto: Option<&'static str>| {
        let mut req = client().get(ts.url("/discover.json")).header("host", host);
        if let Some(p) = proto {
            req = req.header("x-forwarded-proto", p);
        }
        req.send()
    };
    let r: Value = get("tv.lan:3000", Some("https"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["BaseURL"], "http://tv.lan:3000", "untrusted peer");
    let r = get("bad host/x", None).await.unwrap();
    assert_eq!(r.status(), 400);
    ts.stop().await;

    let ts = start_with(|s| s.trust_proxy = TrustProxy::parse("127.0.0.1").unwrap()).await;
    let r: Value = client()
        .get(ts.url("/lineup.json"))
        .header("host", "tv.example.com")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r[0]["URL"],
        "https://tv.example.com/streams/preview/demo-smpte?format=ts"
    );
    ts.stop().await;
}

/// A network namespace of the test's own with only a loopback that carries
/// multicast, deleted on drop: SSDP never reaches the machine's LAN.
struct Netns {
    name: String,
}

impl Netns {
    fn create() -> Netns {
        let name = format!("sluice-ssdp-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ns = Netns { name };
        ns.run(&["ip", "netns", "add", &ns.name]);
        for args in [
            &["link", "set", "lo", "up"][..],
            &["link", "set", "lo", "multicast", "on"],
            &["route", "add", "224.0.0.0/4", "dev", "lo"],
        ] {
            let mut all = vec!["ip", "-n", &ns.name];
            all.extend_from_slice(args);
            ns.run(&all);
        }
        ns
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A child process killed and reaped on drop.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Listens on the SSDP group like a media server: prints `ready`, then the
/// first `ssdp:alive` NOTIFY, the answer to its own M-SEARCH, and the first
/// `ssdp:byebye`, each as one JSON line.
const SSDP_CLIENT: &str = r#"
import json, socket, struct, sys
def out(kind, text):
    print(json.dumps({"kind": kind, "text": text}), flush=True)
l = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
l.bind(("", 1900))
l.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4s", socket.inet_aton("239.255.255.250"), socket.inet_aton("0.0.0.0")))
l.settimeout(60)
out("ready", "")
def wait_for(nts):
    while True:
        data, _ = l.recvfrom(4096)
        text = data.decode()
        if text.startswith("NOTIFY") and ("NTS: " + nts) in text:
            return text
out("alive", wait_for("ssdp:alive"))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b'M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: "ssdp:discover"\r\nMX: 1\r\nST: urn:schemas-upnp-org:device:MediaServer:1\r\n\r\n',
         ("239.255.255.250", 1900))
data, _ = s.recvfrom(4096)
out("answer", data.decode())
out("byebye", wait_for("ssdp:byebye"))
"#;

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn ssdp_announces_answers_and_says_goodbye_in_a_network_namespace() {
    use std::io::BufRead;
    let ns = Netns::create();
    let mut listener = Reaped(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "/usr/bin/python3",
                "-c",
                SSDP_CLIENT,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    let stdout = listener.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let next = |kind: &str| -> String {
        let v = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no {kind} from the SSDP listener"));
        assert_eq!(v["kind"], kind, "{v}");
        v["text"].as_str().unwrap().to_string()
    };
    next("ready");

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut bin = BinServer::start_under(
        &["ip", "netns", "exec", &ns.name],
        &data,
        &[],
        &[("HDHR_SSDP", "true"), ("LOG_LEVEL", "info")],
    );
    let device_id = serde_json::from_slice::<Value>(
        &std::fs::read(data.join(sluice::tuner::IDENTITY_FILE)).unwrap(),
    )
    .unwrap()["deviceId"]
        .as_str()
        .unwrap()
        .to_string();
    let location = format!("http://127.0.0.1:{}/device.xml", bin.addr.port());

    let alive = next("alive");
    assert_eq!(
        header(&alive, "LOCATION"),
        Some(location.as_str()),
        "{alive}"
    );
    assert_eq!(
        header(&alive, "NT"),
        Some("urn:schemas-upnp-org:device:MediaServer:1")
    );
    assert_eq!(
        header(&alive, "USN"),
        Some(format!("uuid:{device_id}::urn:schemas-upnp-org:device:MediaServer:1").as_str())
    );

    let answer = next("answer");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(
        header(&answer, "LOCATION"),
        Some(location.as_str()),
        "{answer}"
    );
    assert_eq!(
        header(&answer, "ST"),
        Some("urn:schemas-upnp-org:device:MediaServer:1")
    );
    // The location serves the device with the same DeviceID.
    let xml = ns.run(&["ip", "netns", "exec", &ns.name, "curl", "-sS", &location]);
    let (serial, _, base) = parse_device_xml(&xml);
    assert_eq!(serial, device_id);
    assert_eq!(base, format!("http://127.0.0.1:{}", bin.addr.port()));

    assert!(bin.terminate(), "clean exit: {}", bin.stderr_text());
    let bye = next("byebye");
    assert_eq!(
        header(&bye, "USN"),
        Some(format!("uuid:{device_id}::urn:schemas-upnp-org:device:MediaServer:1").as_str())
    );
}
