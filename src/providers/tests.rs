use std::time::Duration;

use super::*;

fn stream(id: &str, url: &str, provider: Option<&str>) -> Stream {
    Stream {
        id: id.into(),
        name: id.into(),
        url: url.into(),
        backup_urls: vec![],
        group: None,
        logo: None,
        tvg_id: None,
        provider: provider.map(Into::into),
        number: None,
        headers: Default::default(),
        attributes: Default::default(),
        enabled: true,
        created_at: String::new(),
        updated_at: String::new(),
    }
}

fn input(id: &str, name: &str, max: Option<u32>) -> ProviderInput {
    ProviderInput {
        id: Some(id.into()),
        name: Some(name.into()),
        max_connections: Some(max),
        ..Default::default()
    }
}

#[tokio::test]
async fn leases_count_against_the_limit_and_give_back_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let p = Providers::open(dir.path()).unwrap();
    p.create(input("acme", "Acme", Some(2))).await.unwrap();
    let a = stream("a", "http://h/a.ts", Some("acme"));
    let b = stream("b", "http://other/b.ts", Some("acme"));
    let first = p.try_open(&a).unwrap();
    let second = p.try_open(&b).unwrap();
    assert_eq!(p.connections("acme"), 2);
    let busy = p.try_open(&a).unwrap_err();
    assert_eq!((busy.id.as_str(), busy.limit), ("acme", 2));
    assert!(busy.to_string().contains("limit of 2"));
    drop(first);
    assert_eq!(p.connections("acme"), 1);
    let third = p.try_open(&a).unwrap();
    drop((second, third));
    assert_eq!(p.connections("acme"), 0);
    // Local sources count against nobody.
    let t = p.try_open(&stream("t", "test://smpte", None)).unwrap();
    assert_eq!(t.provider(), None);
}

#[tokio::test]
async fn a_waiter_gets_the_connection_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(Providers::open(dir.path()).unwrap());
    p.create(input("one", "One", Some(1))).await.unwrap();
    let s = stream("s", "http://h/s.ts", Some("one"));
    let held = p.try_open(&s).unwrap();
    let soon = tokio::time::Instant::now() + Duration::from_millis(50);
    assert!(p.open_within(&s, soon).await.is_err(), "nothing given back");
    let (p2, s2) = (p.clone(), s.clone());
    let waiter = tokio::spawn(async move {
        let later = tokio::time::Instant::now() + Duration::from_secs(5);
        p2.open_within(&s2, later)
            .await
            .map(|l| l.provider().map(String::from))
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    drop(held);
    assert_eq!(waiter.await.unwrap().unwrap().as_deref(), Some("one"));
}

#[tokio::test]
async fn implicit_providers_are_listed_without_credentials_and_take_a_limit() {
    let dir = tempfile::tempdir().unwrap();
    let p = Providers::open(dir.path()).unwrap();
    let streams: Vec<Stream> = (1..=3)
        .map(|n| {
            stream(
                &format!("c{n}"),
                &format!("http://x.example:8080/live/alice/pw/{n}.ts"),
                None,
            )
        })
        .chain([stream("t", "test://smpte", None)])
        .collect();
    let list = p.list(&streams);
    assert_eq!(list.len(), 1, "{list:?}");
    let v = &list[0];
    assert!(v.implicit && v.streams == 3 && v.max_connections.is_none());
    assert_eq!(v.host.as_deref(), Some("x.example:8080"));
    let shown = serde_json::to_string(&list).unwrap();
    assert!(!shown.contains("alice") && !shown.contains("pw"), "{shown}");
    let id = v.id.clone();
    let set = ProviderInput {
        max_connections: Some(Some(1)),
        ..Default::default()
    };
    p.update(&id, set, &streams).await.unwrap();
    let held = p.try_open(&streams[0]).unwrap();
    assert!(p.try_open(&streams[2]).is_err(), "one account, limit 1");
    assert_eq!(p.view(&id, &streams).unwrap().connections, 1);
    drop(held);
    // Unknown ids are not made up.
    let unknown = p
        .update("implicit-000000000000", ProviderInput::default(), &streams)
        .await;
    assert!(matches!(unknown, Err(ProviderError::NotFound(_))));
    // The limit survives a restart; deleting it lifts it.
    drop(p);
    let p = Providers::open(dir.path()).unwrap();
    assert_eq!(p.get(&id).unwrap().max_connections, Some(1));
    p.delete(&id, &streams).await.unwrap();
    let (_a, _b) = (
        p.try_open(&streams[0]).unwrap(),
        p.try_open(&streams[1]).unwrap(),
    );
}

#[tokio::test]
async fn crud_validates_and_refuses_deleting_a_provider_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let p = Providers::open(dir.path()).unwrap();
    let made = p.create(input("acme", "Acme", None)).await.unwrap();
    assert_eq!(made.max_connections, None);
    assert!(matches!(
        p.create(input("acme", "Again", None)).await,
        Err(ProviderError::Conflict(_))
    ));
    for bad in [
        input("implicit-x", "X", None),
        input("bad id", "X", None),
        input("ok", "", None),
        input("ok", "X", Some(0)),
    ] {
        assert!(
            matches!(p.create(bad).await, Err(ProviderError::Invalid(_))),
            "refused"
        );
    }
    let streams = vec![stream("s", "http://h/s", Some("acme"))];
    assert!(matches!(
        p.delete("acme", &streams).await,
        Err(ProviderError::InUse(_, 1))
    ));
    // Absent maxConnections keeps it; null removes it.
    let put: ProviderInput = serde_json::from_str(r#"{"maxConnections": 3}"#).unwrap();
    assert_eq!(
        p.update("acme", put, &streams)
            .await
            .unwrap()
            .max_connections,
        Some(3)
    );
    let put: ProviderInput = serde_json::from_str(r#"{"name": "Acme TV"}"#).unwrap();
    assert_eq!(
        p.update("acme", put, &streams)
            .await
            .unwrap()
            .max_connections,
        Some(3)
    );
    let put: ProviderInput = serde_json::from_str(r#"{"maxConnections": null}"#).unwrap();
    assert_eq!(
        p.update("acme", put, &streams)
            .await
            .unwrap()
            .max_connections,
        None
    );
    p.delete("acme", &[]).await.unwrap();
    assert!(!p.exists("acme"));
    let on_disk: Vec<Provider> =
        serde_json::from_slice(&std::fs::read(dir.path().join(PROVIDERS_FILE)).unwrap()).unwrap();
    assert!(on_disk.is_empty());
}

#[tokio::test]
async fn a_validated_url_counts_against_the_provider_of_its_catalog_stream() {
    let dir = tempfile::tempdir().unwrap();
    let p = Providers::open(dir.path()).unwrap();
    p.create(input("acme", "Acme", Some(1))).await.unwrap();
    let streams = vec![stream("s", "http://h/s.ts", Some("acme"))];
    let held = p.try_open_url("http://h/s.ts", &streams).unwrap();
    assert_eq!(held.provider(), Some("acme"));
    assert!(p.try_open(&streams[0]).is_err());
    let other = p.try_open_url("http://elsewhere/x.ts", &streams).unwrap();
    assert!(other.provider().unwrap().starts_with(IMPLICIT_PREFIX));
}

#[test]
fn import_provider_is_an_id_or_an_object() {
    let id: ImportProvider = serde_json::from_str(r#""acme""#).unwrap();
    assert!(matches!(id, ImportProvider::Id(ref s) if s == "acme"));
    let spec: ImportProvider =
        serde_json::from_str(r#"{"id": "acme", "name": "Acme", "maxConnections": 2}"#).unwrap();
    assert!(matches!(spec, ImportProvider::Spec(ref i) if i.max_connections == Some(Some(2))));
}

#[tokio::test]
async fn room_is_the_connections_left_unless_something_is_unlimited() {
    let dir = tempfile::tempdir().unwrap();
    let p = Providers::open(dir.path()).unwrap();
    p.create(input("a", "A", Some(2))).await.unwrap();
    p.create(input("b", "B", Some(1))).await.unwrap();
    let streams = vec![
        stream("a1", "http://h/1", Some("a")),
        stream("a2", "http://h/2", Some("a")),
        stream("b1", "http://h/3", Some("b")),
    ];
    assert_eq!(p.room(&streams), Some(3));
    let held = p.try_open(&streams[0]).unwrap();
    assert_eq!(p.room(&streams), Some(2));
    let held2 = p.try_open(&streams[2]).unwrap();
    assert_eq!(p.room(&streams), Some(1));
    let mut more = streams.clone();
    more.push(stream("free", "http://elsewhere/x", None));
    assert_eq!(p.room(&more), None, "an implicit provider without a limit");
    let active: Vec<String> = p.active(&more).into_iter().map(|v| v.id).collect();
    assert_eq!(active, ["a", "b"], "limited or connected");
    drop((held, held2));
    assert_eq!(p.room(&streams), Some(3));
    p.delete("a", &[]).await.unwrap();
    p.delete("b", &[]).await.unwrap();
    assert!(p.active(&more).is_empty());
    let open = p.try_open(&more[3]).unwrap();
    assert_eq!(
        p.active(&more).len(),
        1,
        "an unlimited provider with a connection"
    );
    drop(open);
}

#[tokio::test]
async fn a_closing_connection_is_counted_until_it_is_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = Providers::open(dir.path()).unwrap();
    p.create(input("one", "One", Some(1))).await.unwrap();
    let s = stream("s", "http://h/s.ts", Some("one"));
    let lease = p.try_open(&s).unwrap();
    assert_eq!(p.closing("one"), 0);
    lease.mark_closing();
    lease.mark_closing();
    assert_eq!(p.closing("one"), 1, "marked once");
    assert!(p.try_open(&s).is_err(), "still open until dropped");
    drop(lease);
    assert_eq!((p.closing("one"), p.connections("one")), (0, 0));
    ProviderLease::none().mark_closing();
}
