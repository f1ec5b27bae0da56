use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CAP: usize = 1024;

fn check(head: &[u8]) -> HeadCheck {
    HeadScan::default().check(head, CAP)
}

fn complete(len: usize, body: Framing) -> HeadCheck {
    HeadCheck::Complete { len, body }
}

#[test]
fn good_heads_are_complete_at_the_blank_line() {
    let h = b"GET /live HTTP/1.1\r\nHost: x\r\n\r\nBODY";
    assert_eq!(check(h), complete(h.len() - 4, Framing::None));
    assert_eq!(
        check(b"\r\nGET / HTTP/1.0\n\n"),
        complete(18, Framing::None)
    );
    let obs = b"GET /a?b=%ff HTTP/1.1\r\nX-Bin: \xc3\xa9\t!\r\n\r\n";
    assert_eq!(check(obs), complete(obs.len(), Framing::None));
    assert_eq!(
        check(b"OPTIONS * HTTP/1.1\r\n\r\n"),
        complete(22, Framing::None)
    );
}

#[test]
fn the_head_says_how_the_body_is_framed() {
    let framing =
        |headers: &str| match check(format!("POST / HTTP/1.1\r\n{headers}\r\n").as_bytes()) {
            HeadCheck::Complete { body, .. } => body,
            other => panic!("{headers}: {other:?}"),
        };
    assert_eq!(framing("Content-Length: 12\r\n"), Framing::Length(12));
    assert_eq!(framing("content-length:7, 7\r\n"), Framing::Length(7));
    assert_eq!(framing("Content-Length: 0\r\n"), Framing::None);
    assert_eq!(framing("Transfer-Encoding: chunked\r\n"), Framing::Chunked);
    assert_eq!(
        framing("Content-Length: 3\r\nTransfer-Encoding: gzip, Chunked\r\n"),
        Framing::Chunked
    );
    assert_eq!(framing("Transfer-Encoding: gzip\r\n"), Framing::Unknown);
    for bad in [
        "Content-Length: 1, 2\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: \r\n",
    ] {
        let head = format!("POST / HTTP/1.1\r\n{bad}\r\n");
        assert!(
            matches!(
                check(head.as_bytes()),
                HeadCheck::Refused(Refused::Malformed(_))
            ),
            "{bad}"
        );
    }
    let tunnel = check(b"CONNECT example.test:443 HTTP/1.1\r\n\r\n");
    assert_eq!(tunnel, complete(37, Framing::Unknown));
}

#[test]
fn partial_heads_wait_and_resume() {
    let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut scan = HeadScan::default();
    for n in 1..head.len() {
        assert_eq!(scan.check(&head[..n], CAP), HeadCheck::Incomplete, "{n}");
    }
    assert_eq!(scan.check(head, CAP), complete(head.len(), Framing::None));
}

#[test]
fn heads_over_the_cap_are_refused() {
    let mut head = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
    head.extend(vec![b'a'; CAP]);
    assert!(matches!(
        check(&head),
        HeadCheck::Refused(Refused::TooLarge(_))
    ));
    head.extend(b"\r\n\r\n");
    assert!(matches!(
        check(&head),
        HeadCheck::Refused(Refused::TooLarge(_))
    ));
    // Exactly at the cap is fine.
    let mut exact = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
    exact.extend(vec![b'a'; CAP - exact.len() - 4]);
    exact.extend(b"\r\n\r\n");
    assert_eq!(check(&exact), complete(CAP, Framing::None));
    let many: String = (0..=MAX_HEADERS)
        .map(|i| format!("X-{i}: {i}\r\n"))
        .collect();
    let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
    let verdict = HeadScan::default().check(head.as_bytes(), 1 << 20);
    assert!(matches!(verdict, HeadCheck::Refused(Refused::TooLarge(_))));
}

#[test]
fn broken_request_and_header_lines_are_malformed() {
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
        b"GET /\xff HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: \x01\r\n\r\n",
    ] {
        assert!(
            matches!(check(bad), HeadCheck::Refused(Refused::Malformed(_))),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // A broken request line is refused before the head is complete.
    assert!(matches!(
        check(b"GARBAGE\r\nX: y"),
        HeadCheck::Refused(Refused::Malformed(_))
    ));
}

/// Reads from the gate until `want` bytes came, or it stalls for 50 ms.
async fn take(gate: &mut HeadGate<tokio::io::DuplexStream>, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < want {
        let read = tokio::time::timeout(std::time::Duration::from_millis(50), gate.read(&mut buf));
        match read.await {
            Ok(Ok(n)) if n > 0 => got.extend(&buf[..n]),
            _ => break,
        }
    }
    got
}

fn marker_of(handle: &GateHandle, got: &[u8]) -> Option<Refused> {
    let text = String::from_utf8_lossy(got);
    let path = text.strip_prefix("GET ")?.split(' ').next()?;
    handle.refusal(&http::Request::get(path).body(()).unwrap())
}

#[tokio::test]
async fn the_gate_holds_a_head_back_then_passes_exactly_the_body() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (mut gate, handle) = HeadGate::new(server, CAP);
    let (_rd, mut wr) = tokio::io::split(client);
    wr.write_all(b"POST / HTTP/1.1\r\nContent-Length: 8\r\n")
        .await
        .unwrap();
    assert!(
        take(&mut gate, 1).await.is_empty(),
        "nothing before the head is complete"
    );
    // The body may look like anything, a blank line included.
    wr.write_all(b"\r\nab\r\n\r\n").await.unwrap();
    let first = b"POST / HTTP/1.1\r\nContent-Length: 8\r\n\r\nab\r\n\r\n";
    assert_eq!(take(&mut gate, first.len()).await, first);
    wr.write_all(b"cd").await.unwrap();
    assert_eq!(take(&mut gate, 2).await, b"cd");
    // The body ended: the next head is checked too, even split mid-line.
    wr.write_all(b"GET /a HT").await.unwrap();
    assert!(take(&mut gate, 1).await.is_empty());
    wr.write_all(b"TP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(take(&mut gate, 19).await, b"GET /a HTTP/1.1\r\n\r\n");
    let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
    big.extend(vec![b'a'; CAP * 2]);
    wr.write_all(&big).await.unwrap();
    // The head is replaced by a marker request; the rest is dropped, and
    // the gate reports no end (hyper would cut the answer short).
    let got = take(&mut gate, 4096).await;
    assert!(got.ends_with(b"\r\n\r\n"), "{got:?}");
    assert!(matches!(
        marker_of(&handle, &got),
        Some(Refused::TooLarge(_))
    ));
    wr.write_all(b"more junk").await.unwrap();
    assert!(take(&mut gate, 1).await.is_empty());
    assert!(handle.refused());
    let other = http::Request::get("/.refused-head/x").body(()).unwrap();
    assert_eq!(handle.refusal(&other), None);
}

#[tokio::test]
async fn pipelined_heads_are_checked_one_by_one() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (mut gate, handle) = HeadGate::new(server, CAP);
    let (_rd, mut wr) = tokio::io::split(client);
    let one = b"GET /1 HTTP/1.1\r\n\r\n";
    let two = b"POST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz";
    let mut all = one.to_vec();
    all.extend(two);
    all.extend(b"BROKEN\r\n\r\n");
    wr.write_all(&all).await.unwrap();
    assert_eq!(take(&mut gate, one.len()).await, one);
    assert_eq!(take(&mut gate, two.len()).await, two);
    let got = take(&mut gate, 4096).await;
    assert!(
        matches!(marker_of(&handle, &got), Some(Refused::Malformed(_))),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_long_body_passes_in_reads_of_any_size_and_the_next_head_is_gated() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (mut gate, handle) = HeadGate::new(server, CAP);
    let (_rd, mut wr) = tokio::io::split(client);
    let head = b"PUT /x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n";
    wr.write_all(head).await.unwrap();
    assert_eq!(take(&mut gate, head.len()).await, head);
    // The body arrives after the head, so it is passed on as it comes.
    let body = vec![b'\n'; 5000];
    wr.write_all(&body).await.unwrap();
    assert_eq!(take(&mut gate, body.len()).await, body);
    wr.write_all(b"nonsense\r\n\r\n").await.unwrap();
    let got = take(&mut gate, 4096).await;
    assert!(
        matches!(marker_of(&handle, &got), Some(Refused::Malformed(_))),
        "{got:?}"
    );
}

#[test]
fn chunked_bodies_end_after_the_last_chunk_and_trailers() {
    let body = b"3\r\nabc\r\n10;ext=\"x\"\r\n0123456789abcdef\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
    let end = body.len() - 4;
    assert_eq!(Chunks::default().feed(body), Fed::Done(end));
    // Byte by byte, the same end.
    let mut c = Chunks::default();
    for (i, b) in body.iter().enumerate() {
        match c.feed(std::slice::from_ref(b)) {
            Fed::More => assert!(i + 1 < end, "{i}"),
            Fed::Done(1) => {
                assert_eq!(i + 1, end);
                break;
            }
            other => panic!("{i}: {other:?}"),
        }
    }
    assert_eq!(Chunks::default().feed(b"0\n\n"), Fed::Done(3));
    assert_eq!(Chunks::default().feed(b"5\r\nab"), Fed::More);
    for bad in [
        &b"zz\r\n"[..],
        b"\r\n",
        b"1\r\naXY",
        b"fffffffffffffffff\r\n",
    ] {
        assert_eq!(Chunks::default().feed(bad), Fed::Lost, "{bad:?}");
    }
}

#[tokio::test]
async fn a_chunked_body_is_followed_to_its_end() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (mut gate, handle) = HeadGate::new(server, CAP);
    let (_rd, mut wr) = tokio::io::split(client);
    let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n";
    wr.write_all(head).await.unwrap();
    assert_eq!(take(&mut gate, head.len()).await, head);
    // The rest arrives later, with the next (broken) head behind it.
    wr.write_all(b"4\r\n\r\n\r\n\r\n0\r\n\r\nJUNK\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(take(&mut gate, 14).await, b"4\r\n\r\n\r\n\r\n0\r\n\r\n");
    let got = take(&mut gate, 4096).await;
    assert!(
        matches!(marker_of(&handle, &got), Some(Refused::Malformed(_))),
        "{got:?}"
    );
}

#[tokio::test]
async fn an_unknown_transfer_coding_ends_the_gating() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (mut gate, handle) = HeadGate::new(server, CAP);
    let (_rd, mut wr) = tokio::io::split(client);
    let req = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nJUNK\r\n\r\n";
    wr.write_all(req).await.unwrap();
    assert_eq!(take(&mut gate, req.len()).await, req);
    assert!(!handle.refused());
}
