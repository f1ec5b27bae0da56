use std::collections::BTreeMap;

use super::*;

#[tokio::test]
async fn first_start_creates_a_demo_catalog_with_demo_smpte() {
    let dir = tempfile::tempdir().unwrap();
    let (cat, opened) = Catalog::open(dir.path(), None).unwrap();
    assert!(matches!(opened, Opened::CreatedDemo(n) if n >= 2));
    assert!(cat
        .get("demo-smpte")
        .unwrap()
        .url
        .starts_with("test://smpte"));
    for s in cat.snapshot().iter() {
        validate(s, None).unwrap();
    }
    let (again, opened) = Catalog::open(dir.path(), None).unwrap();
    assert_eq!(opened, Opened::Loaded(cat.len()));
    assert_eq!(again.snapshot(), cat.snapshot());
}

#[tokio::test]
async fn crud_persists_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let (cat, _) = Catalog::open(dir.path(), None).unwrap();
    let s = cat
        .create(StreamInput {
            name: Some("News HD!".into()),
            url: Some("http://u:p@example.test/live.ts".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(s.id, "news-hd");
    let s2 = cat
        .create(StreamInput {
            name: Some("News HD".into()),
            url: Some("rtsp://cam/x".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(s2.id, "news-hd-2");
    let err = cat
        .create(StreamInput {
            name: Some("x".into()),
            url: Some("ftp://x/y".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, CatalogError::Invalid(m) if m.contains("ftp")));
    let up = cat
        .update(
            "news-hd",
            StreamInput {
                enabled: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!up.enabled);
    cat.delete("news-hd-2").await.unwrap();
    assert!(matches!(
        cat.delete("news-hd-2").await,
        Err(CatalogError::NotFound(_))
    ));
    let (reopened, _) = Catalog::open(dir.path(), None).unwrap();
    assert_eq!(reopened.snapshot(), cat.snapshot());
    assert_eq!(
        reopened.get("news-hd").unwrap().redacted().url,
        "http://***@example.test/live.ts"
    );
}

#[tokio::test]
async fn import_matches_on_tvg_id_then_url_and_never_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (cat, _) = Catalog::open(dir.path(), None).unwrap();
    let demo = cat.len();
    let e = |line, tvg: Option<&str>, name: &str, url: &str| ImportEntry {
        line,
        name: name.into(),
        url: url.into(),
        tvg_id: tvg.map(Into::into),
        ..Default::default()
    };
    let first = vec![
        e(2, Some("One.uk"), "One HD", "http://h/1?token=a"),
        e(4, Some("One.uk"), "One SD", "http://h/1sd?token=a"),
        e(6, None, "Radio", "http://h/radio"),
        e(8, None, "Bad", "ftp://h/x"),
        e(10, None, "Radio again", "http://h/radio"),
    ];
    let out = cat.import(first).await.unwrap();
    assert_eq!((out.imported, out.updated, out.skipped), (3, 0, 2));
    assert_eq!(out.errors[0].line, 8);
    assert!(out.errors[0].message.contains("ftp"), "{:?}", out.errors);
    assert!(out.errors[1].message.contains("line 6"), "{:?}", out.errors);
    assert_eq!(cat.get("one-uk").unwrap().name, "One HD");
    assert_eq!(cat.get("one-uk-2").unwrap().name, "One SD");
    assert_eq!(cat.get("radio").unwrap().url, "http://h/radio");
    // Another URL under the same tvg-id and name is a mirror: it joins the
    // stream as a backup, the URL stays. The radio is matched by URL.
    let again = vec![
        e(2, Some("One.uk"), "One HD", "http://h/1?token=b"),
        e(4, Some("One.uk"), "One SD", "http://h/1sd?token=b"),
        e(6, None, "Radio 1", "http://h/radio"),
    ];
    let out = cat.import(again.clone()).await.unwrap();
    assert_eq!(
        (
            out.imported,
            out.updated,
            out.unchanged,
            out.merged_as_backup,
            out.skipped
        ),
        (0, 1, 0, 2, 0)
    );
    assert_eq!(cat.len(), demo + 3);
    let one = cat.get("one-uk").unwrap();
    assert_eq!(one.url, "http://h/1?token=a");
    assert_eq!(one.backup_urls, ["http://h/1?token=b"]);
    assert_eq!(
        cat.get("one-uk-2").unwrap().backup_urls,
        ["http://h/1sd?token=b"]
    );
    assert_eq!(cat.get("radio").unwrap().name, "Radio 1");
    // The same entries again: every one matched, nothing changes.
    let before = cat.snapshot();
    let out = cat.import(again).await.unwrap();
    assert_eq!(
        (
            out.imported,
            out.updated,
            out.unchanged,
            out.merged_as_backup
        ),
        (0, 0, 3, 0)
    );
    assert_eq!(cat.snapshot(), before);
    // Same tvg-id, another name: another channel, never a replacement.
    let out = cat
        .import(vec![e(2, Some("One.uk"), "One +1", "http://h/1plus1")])
        .await
        .unwrap();
    assert_eq!((out.imported, out.merged_as_backup), (1, 0));
    assert_eq!(cat.get("one-uk").unwrap().url, "http://h/1?token=a");
    let (reopened, _) = Catalog::open(dir.path(), None).unwrap();
    assert_eq!(reopened.snapshot(), cat.snapshot());
}

#[tokio::test]
async fn an_import_assigns_its_provider_to_new_and_matched_streams() {
    let dir = tempfile::tempdir().unwrap();
    let (cat, _) = Catalog::open(dir.path(), None).unwrap();
    let e = |line, url: &str, provider: Option<&str>| ImportEntry {
        line,
        name: format!("S{line}"),
        url: url.into(),
        provider: provider.map(Into::into),
        ..Default::default()
    };
    let out = cat
        .import(vec![e(2, "http://h/1", None), e(4, "http://h/2", None)])
        .await
        .unwrap();
    assert_eq!(out.imported, 2);
    let out = cat
        .import(vec![
            e(2, "http://h/1", Some("acme")),
            e(4, "http://h/3", Some("acme")),
        ])
        .await
        .unwrap();
    assert_eq!((out.imported, out.updated), (1, 1));
    let provider_of = |url: &str| {
        cat.snapshot()
            .iter()
            .find(|s| s.url == url)
            .and_then(|s| s.provider.clone())
    };
    assert_eq!(provider_of("http://h/1").as_deref(), Some("acme"));
    assert_eq!(provider_of("http://h/2"), None, "not in this import");
    assert_eq!(provider_of("http://h/3").as_deref(), Some("acme"));
    // An import without a provider keeps the one a stream has.
    cat.import(vec![e(2, "http://h/1", None)]).await.unwrap();
    assert_eq!(provider_of("http://h/1").as_deref(), Some("acme"));
}

#[tokio::test]
async fn mirrors_merge_up_to_the_backup_limit_and_attributes_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (cat, _) = Catalog::open(dir.path(), None).unwrap();
    let mut entries = Vec::new();
    for i in 0..=MAX_BACKUP_URLS + 1 {
        let mut attributes = BTreeMap::new();
        attributes.insert("tvg-name".to_string(), "News_Int".to_string());
        attributes.insert(format!("x-mirror-{i}"), i.to_string());
        attributes.insert("bad key".to_string(), "dropped".to_string());
        entries.push(ImportEntry {
            line: 2 * i + 2,
            name: "News".into(),
            url: format!("http://mirror{i}.example/news.m3u8"),
            tvg_id: Some("News.int".into()),
            attributes,
            ..Default::default()
        });
    }
    let out = cat.import(entries).await.unwrap();
    assert_eq!(
        (out.imported, out.merged_as_backup, out.skipped),
        (1, MAX_BACKUP_URLS, 1),
        "{out:?}"
    );
    assert!(out.errors[0].message.contains("backup URLs"), "{out:?}");
    let s = cat.get("news-int").unwrap();
    assert_eq!(s.url, "http://mirror0.example/news.m3u8");
    assert_eq!(s.backup_urls.len(), MAX_BACKUP_URLS);
    assert_eq!(s.attributes["tvg-name"], "News_Int");
    assert_eq!(s.attributes["x-mirror-0"], "0");
    assert_eq!(s.attributes["x-mirror-3"], "3", "a mirror adds what is new");
    assert!(!s.attributes.contains_key("bad key"));
}

#[tokio::test]
async fn channel_numbers_are_assigned_kept_and_unique() {
    let dir = tempfile::tempdir().unwrap();
    let (cat, _) = Catalog::open(dir.path(), None).unwrap();
    let numbers: Vec<Option<String>> = cat.snapshot().iter().map(|s| s.number.clone()).collect();
    assert_eq!(numbers, ["1", "2", "3", "4"].map(|n| Some(n.to_string())));
    let input = |name: &str, number: Option<&str>| StreamInput {
        name: Some(name.into()),
        url: Some(format!("http://h/{name}")),
        number: number.map(Into::into),
        ..Default::default()
    };
    let a = cat.create(input("a", None)).await.unwrap();
    assert_eq!(a.number.as_deref(), Some("5"));
    let b = cat.create(input("b", Some("20.1"))).await.unwrap();
    assert_eq!(b.number.as_deref(), Some("20.1"));
    let err = cat.create(input("c", Some("5"))).await.unwrap_err();
    assert!(
        matches!(&err, CatalogError::NumberTaken(n, id) if n == "5" && id == "a"),
        "{err}"
    );
    let err = cat.create(input("c", Some("five"))).await.unwrap_err();
    assert!(matches!(err, CatalogError::Invalid(m) if m.contains("number")));
    let c = cat.create(input("c", None)).await.unwrap();
    assert_eq!(c.number.as_deref(), Some("21"));
    let err = cat.update("c", input("c", Some("1"))).await.unwrap_err();
    assert!(matches!(err, CatalogError::NumberTaken(..)));
    let c = cat.update("c", input("c", Some("30"))).await.unwrap();
    assert_eq!(c.number.as_deref(), Some("30"));
    // Edits without a number keep it.
    let c = cat
        .update(
            "c",
            StreamInput {
                enabled: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(c.number.as_deref(), Some("30"));

    // Import: tvg-chno when free, the next number otherwise, and a
    // re-import without numbers keeps them.
    let e = |line, name: &str, number: Option<&str>| ImportEntry {
        line,
        name: name.into(),
        url: format!("http://h/imp/{name}"),
        tvg_id: Some(format!("{name}.tv")),
        number: number.map(Into::into),
        ..Default::default()
    };
    let out = cat
        .import(vec![
            e(2, "x", Some("101")),
            e(4, "y", Some("101")),
            e(6, "z", None),
        ])
        .await
        .unwrap();
    assert_eq!(out.imported, 3, "{out:?}");
    let num = |id: &str| cat.get(id).unwrap().number.unwrap();
    assert_eq!(
        (num("x-tv"), num("y-tv"), num("z-tv")),
        ("101".into(), "102".into(), "103".into())
    );
    let out = cat
        .import(vec![e(2, "x", None), e(4, "y", None), e(6, "z", None)])
        .await
        .unwrap();
    assert_eq!(out.unchanged, 3, "{out:?}");
    let out = cat.import(vec![e(2, "z", Some("7"))]).await.unwrap();
    assert_eq!(out.updated, 1, "{out:?}");
    assert_eq!(num("z-tv"), "7");
    let (reopened, _) = Catalog::open(dir.path(), None).unwrap();
    assert_eq!(reopened.snapshot(), cat.snapshot());
}

#[test]
fn a_catalog_without_numbers_gets_them_at_load_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let old = r#"[
        {"id": "b", "name": "B", "url": "http://h/b", "createdAt": "t", "updatedAt": "t"},
        {"id": "a", "name": "A", "url": "http://h/a", "number": "9", "createdAt": "t", "updatedAt": "t"},
        {"id": "c", "name": "C", "url": "http://h/c", "number": "9", "createdAt": "t", "updatedAt": "t"}
    ]"#;
    std::fs::write(dir.path().join(CATALOG_FILE), old).unwrap();
    let (cat, opened) = Catalog::open(dir.path(), None).unwrap();
    assert_eq!(opened, Opened::Loaded(3));
    let numbers: Vec<String> = cat
        .snapshot()
        .iter()
        .map(|s| s.number.clone().unwrap())
        .collect();
    assert_eq!(
        numbers,
        ["10", "9", "11"],
        "kept where unique, assigned in order otherwise"
    );
    let on_disk: Vec<Stream> =
        serde_json::from_slice(&std::fs::read(dir.path().join(CATALOG_FILE)).unwrap()).unwrap();
    assert_eq!(on_disk, *cat.snapshot());
    let (again, _) = Catalog::open(dir.path(), None).unwrap();
    assert_eq!(again.snapshot(), cat.snapshot());
}

#[test]
fn redaction_masks_credentials_in_url_attributes_only() {
    let mut s = demo_streams().remove(0);
    s.attributes
        .insert("tvg-name".into(), "Bars://not a url".into());
    s.attributes.insert(
        "catchup-source".into(),
        "http://user:pw@cdn.example/x?token=abc".into(),
    );
    s.attributes.insert("tvg-language".into(), "English".into());
    let r = s.redacted();
    assert_eq!(r.attributes["tvg-language"], "English");
    let c = &r.attributes["catchup-source"];
    assert!(!c.contains("user:pw") && !c.contains("abc"), "{c}");
    assert!(
        c.starts_with("http://") && c.contains("cdn.example/x"),
        "{c}"
    );
}

#[test]
fn channel_number_syntax() {
    for good in ["1", "007", "101", "5.1", "999999.999"] {
        assert!(valid_number(good), "{good}");
    }
    for bad in [
        "", "a", "1.", ".1", "1.2.3", "-1", "1234567", "1.1234", " 1",
    ] {
        assert!(!valid_number(bad), "{bad}");
    }
    assert_eq!(next_number(["3", "10.2", "x"]), "11");
    assert_eq!(next_number([]), "1");
}

#[test]
fn corrupt_catalog_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(CATALOG_FILE), b"[{\"id\": trunc").unwrap();
    let (cat, opened) = Catalog::open(dir.path(), None).unwrap();
    let Opened::MovedCorrupt(aside, _) = opened else {
        panic!("{opened:?}")
    };
    assert_eq!(std::fs::read(&aside).unwrap(), b"[{\"id\": trunc");
    assert!(cat.is_empty());
}
