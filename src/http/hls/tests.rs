use super::master::level_idc;
use super::*;

#[test]
fn file_names_parse() {
    assert_eq!(num_between("seg-42.m4s", "seg-", ".m4s"), Some(42));
    assert_eq!(num_between("seg-x.m4s", "seg-", ".m4s"), None);
    assert_eq!(part_name("part-7.3.m4s"), Some((7, 3)));
    assert_eq!(part_name("part-7.m4s"), None);
    assert_eq!(level_idc("3.1"), 31);
    assert_eq!(level_idc("4"), 40);
}

#[test]
fn sid_comes_from_query_then_cookie() {
    let mut q = HashMap::new();
    assert_eq!(client_sid(&q, Some("a=1; sluice_hls=abc")), "abc");
    q.insert("sid".to_string(), "xyz".to_string());
    assert_eq!(client_sid(&q, Some("sluice_hls=abc")), "xyz");
    q.insert("sid".to_string(), "bad sid!".to_string());
    assert_eq!(client_sid(&q, None).len(), 32);
}
