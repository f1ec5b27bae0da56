//! A partial run (`BENCH_FIGURES`, `BENCH_PROFILES`) rewrites only what it
//! measured in an existing BENCHMARKS.md: the sections of its figures
//! (in a table with a `profile` column, only the rows of its profiles),
//! the summary cells of its figures at its profiles, and the losses of
//! those; every other section, row, cell and loss keeps its text.

use std::collections::HashSet;

/// What the run measured.
pub struct Ran<'a> {
    pub figures: &'a [String],
    pub profiles: &'a [String],
    /// Every profile, in the order tables list them.
    pub order: &'a [String],
    /// The summary lines (and loss names) the run's figures produce.
    pub lines: &'a [String],
}

struct Section {
    heading: String,
    body: String,
}

/// The heading up to its first `(` or `,`: what identifies a section
/// across runs whose details (profile, source) differ.
fn key(heading: &str) -> &str {
    heading
        .trim_start_matches('#')
        .split(['(', ','])
        .next()
        .unwrap_or_default()
        .trim()
}

/// The text before the first `## ` heading, and the sections.
fn split(doc: &str) -> (String, Vec<Section>) {
    let mut pre = String::new();
    let mut sections: Vec<Section> = Vec::new();
    for line in doc.split_inclusive('\n') {
        if line.starts_with("## ") {
            sections.push(Section {
                heading: line.trim_end().to_string(),
                body: String::new(),
            });
        } else if let Some(s) = sections.last_mut() {
            s.body.push_str(line);
        } else {
            pre.push_str(line);
        }
    }
    (pre, sections)
}

fn cells(line: &str) -> Vec<String> {
    let t = line.trim().trim_start_matches('|').trim_end_matches('|');
    t.split('|').map(|c| c.trim().to_string()).collect()
}

fn line(cells: &[String]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

/// A body as runs of text and tables (header cells, rows' cells).
enum Part {
    Text(String),
    Table(Vec<String>, Vec<Vec<String>>),
}

fn parts(body: &str) -> Vec<Part> {
    let mut out: Vec<Part> = Vec::new();
    let mut lines = body.split_inclusive('\n').peekable();
    while let Some(l) = lines.next() {
        if l.starts_with('|') {
            let head = cells(l);
            let mut rows = Vec::new();
            // The separator line, then the rows.
            lines.next_if(|l| l.starts_with("|--") || l.starts_with("|-"));
            while let Some(r) = lines.next_if(|l| l.starts_with('|')) {
                rows.push(cells(r));
            }
            out.push(Part::Table(head, rows));
        } else if let Some(Part::Text(t)) = out.last_mut() {
            t.push_str(l);
        } else {
            out.push(Part::Text(l.to_string()));
        }
    }
    out
}

fn join(parts: &[Part]) -> String {
    let mut o = String::new();
    for p in parts {
        match p {
            Part::Text(t) => o.push_str(t),
            Part::Table(head, rows) => {
                o.push_str(&line(head));
                o.push_str(&format!("|{}\n", "---|".repeat(head.len())));
                for r in rows {
                    o.push_str(&line(r));
                }
            }
        }
    }
    o
}

fn rank(order: &[String], p: &str) -> usize {
    order.iter().position(|x| x == p).unwrap_or(order.len())
}

/// The rows of `new`, and those of `old` whose profile the run did not
/// measure, ordered by the columns before the profile column (as first
/// seen) and then by profile.
fn merge_rows(ran: &Ran, at: usize, old: &[Vec<String>], new: &[Vec<String>]) -> Vec<Vec<String>> {
    let mut rows: Vec<Vec<String>> = new.to_vec();
    rows.extend(
        old.iter()
            .filter(|r| r.get(at).is_some_and(|p| !ran.profiles.contains(p)))
            .cloned(),
    );
    let mut groups: Vec<&[String]> = Vec::new();
    for r in old.iter().chain(new) {
        if !groups.contains(&&r[..at.min(r.len())]) {
            groups.push(&r[..at.min(r.len())]);
        }
    }
    let group = |r: &Vec<String>| groups.iter().position(|g| *g == &r[..at.min(r.len())]);
    let mut keyed: Vec<_> = rows
        .into_iter()
        .map(|r| ((group(&r), rank(ran.order, &r[at.min(r.len() - 1)])), r))
        .collect();
    keyed.sort_by_key(|(k, _)| *k);
    keyed.into_iter().map(|(_, r)| r).collect()
}

/// A measured section: the new text, each table with a `profile` column
/// keeping the old rows of the profiles this run did not measure.
fn merge_section(ran: &Ran, old: &str, new: &str) -> String {
    let old_tables: Vec<(Vec<String>, Vec<Vec<String>>)> = parts(old)
        .into_iter()
        .filter_map(|p| match p {
            Part::Table(h, r) => Some((h, r)),
            Part::Text(_) => None,
        })
        .collect();
    let mut n = 0;
    let merged: Vec<Part> = parts(new)
        .into_iter()
        .map(|p| match p {
            Part::Table(head, rows) => {
                let old = old_tables.get(n);
                n += 1;
                match (head.iter().position(|h| h == "profile"), old) {
                    (Some(at), Some((old_head, old_rows))) if *old_head == head => {
                        let rows = merge_rows(ran, at, old_rows, &rows);
                        Part::Table(head, rows)
                    }
                    _ => Part::Table(head, rows),
                }
            }
            text => text,
        })
        .collect();
    join(&merged)
}

/// The summary: a column per profile of either run, a line per figure of
/// either run; a cell is the new one where this run measured that line at
/// that profile, the old one elsewhere.
fn merge_summary(ran: &Ran, old: &str, new: &str) -> String {
    let table = |body: &str| {
        parts(body).into_iter().find_map(|p| match p {
            Part::Table(h, r) => Some((h, r)),
            Part::Text(_) => None,
        })
    };
    let (Some((oh, orows)), Some((nh, nrows))) = (table(old), table(new)) else {
        return new.to_string();
    };
    let mut profiles: Vec<String> = oh[1..].iter().chain(&nh[1..]).cloned().collect();
    profiles.sort_by_key(|p| rank(ran.order, p));
    profiles.dedup();
    let mut lines: Vec<String> = orows.iter().map(|r| r[0].clone()).collect();
    for r in &nrows {
        if !lines.contains(&r[0]) {
            lines.push(r[0].clone());
        }
    }
    let cell = |head: &[String], rows: &[Vec<String>], l: &str, p: &str| {
        let col = head.iter().position(|h| h == p)?;
        rows.iter().find(|r| r[0] == l)?.get(col).cloned()
    };
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|l| {
            let mut row = vec![l.clone()];
            for p in &profiles {
                let fresh = ran.profiles.contains(p) && nrows.iter().any(|r| &r[0] == l);
                let v = if fresh {
                    cell(&nh, &nrows, l, p)
                } else {
                    cell(&oh, &orows, l, p)
                };
                row.push(v.unwrap_or_else(|| "n/a".into()));
            }
            row
        })
        .collect();
    let mut head = vec![nh[0].clone()];
    head.extend(profiles);
    format!("\n{}\n", join(&[Part::Table(head, rows)]))
}

/// `- **line**, profile: ...` -> (line, profile).
fn loss_key(l: &str) -> Option<(&str, &str)> {
    let rest = l.strip_prefix("- **")?;
    let (line, rest) = rest.split_once("**, ")?;
    let (profile, _) = rest.split_once(':')?;
    Some((line, profile))
}

/// The new losses, and the old ones of lines or profiles this run did not
/// measure.
fn merge_losses(ran: &Ran, old: &str, new: &str) -> String {
    let bullets = |body: &str| -> Vec<String> {
        body.lines()
            .filter(|l| loss_key(l).is_some())
            .map(String::from)
            .collect()
    };
    let mut all = bullets(new);
    for b in bullets(old) {
        let (l, p) = loss_key(&b).expect("filtered");
        let measured = ran.lines.iter().any(|x| x == l) && ran.profiles.iter().any(|x| x == p);
        if !measured {
            all.push(b);
        }
    }
    if all.is_empty() {
        return new.to_string();
    }
    format!("\n{}\n\n", all.join("\n"))
}

pub fn merge(old: &str, new: &str, ran: &Ran) -> String {
    let (_, old_sections) = split(old);
    let (pre, mut sections) = split(new);
    let new_keys: HashSet<String> = sections.iter().map(|s| key(&s.heading).into()).collect();
    for s in sections.iter_mut() {
        let Some(o) = old_sections
            .iter()
            .find(|o| key(&o.heading) == key(&s.heading))
        else {
            continue;
        };
        s.body = match key(&s.heading) {
            "Summary" => merge_summary(ran, &o.body, &s.body),
            "Where sluice loses" => merge_losses(ran, &o.body, &s.body),
            _ => merge_section(ran, &o.body, &s.body),
        };
    }
    // Sections this run did not write go back where they were: after the
    // nearest section before them in the old file.
    let mut at = sections
        .iter()
        .position(|s| key(&s.heading) == "Method")
        .unwrap_or(0);
    for o in old_sections {
        let k = key(&o.heading).to_string();
        if new_keys.contains(&k) {
            at = sections
                .iter()
                .position(|s| key(&s.heading) == k)
                .unwrap_or(at);
        } else {
            at = (at + 1).min(sections.len());
            sections.insert(at, o);
        }
    }
    let mut out = pre.trim_end().to_string();
    out.push_str(&format!(
        " This run measured only {} at {} (`BENCH_FIGURES`, `BENCH_PROFILES`): the other sections, rows and \
         summary cells are from the runs before.\n\n",
        ran.figures.join(", "),
        ran.profiles.join(", ")
    ));
    for s in sections {
        out.push_str(&s.heading);
        out.push('\n');
        out.push_str(&s.body);
    }
    out
}

/// The merge on a small pair of reports.
pub fn self_test() {
    let old = "# B\n\nWritten before.\n\n## Machine\n\nold machine\n\n## Summary\n\n\
        | figure (sluice ÷ ffmpeg) | low | medium | high |\n|---|---|---|---|\n\
        | CPU | 0.70x | 0.80x | 0.90x |\n| cap (old) | 2.00x | 1.50x | 5.00x |\n\n\
        ## Method\n\nold method\n\n## Start\n\n| source | profile | ms |\n|---|---|---|\n\
        | hls | low | 1 |\n| hls | medium | 2 |\n| hls | high | 3 |\n\
        | test | low | 4 |\n| test | medium | 5 |\n| test | high | 6 |\n\n\
        ## CPU per media second (one viewer)\n\n\
        | profile | sluice |\n|---|---|\n| low | 0.2 |\n| medium | 0.4 |\n| high | 0.9 |\n\n\
        ## Capacity (live HLS)\n\n| profile | n |\n|---|---|\n| low | 9 |\n| medium | 5 |\n| high | 2 |\n\n\
        ## Status\n\nold status\n\n\
        ## Where sluice loses\n\n- **CPU**, high: 1.10x. why\n- **cap (old)**, medium: 0.9x. why\n- **cap, distinct**, medium: 0.5x. why\n\n## Fixed\n\nold fixed\n";
    let new = "# B\n\nWritten now.\n\n## Machine\n\nnew machine\n\n## Summary\n\n\
        | figure (sluice ÷ ffmpeg) | medium |\n|---|---|\n| cap, distinct | 1.20x |\n| one: cap | 1.10x |\n\n\
        ## Method\n\nnew method\n\n## Start\n\n| source | profile | ms |\n|---|---|---|\n\
        | hls | medium | 20 |\n| test | medium | 50 |\n\n## Capacity, distinct channels (live HLS)\n\nnew text\n\n\
        | profile | n |\n|---|---|\n| medium | 6 |\n\n## Admission (auto)\n\n| profile | a |\n|---|---|\n| medium | 4 |\n\n\
        ## Where sluice loses\n\nNowhere in this run: every ratio favours sluice.\n\n## Fixed\n\nnew fixed\n";
    let order: Vec<String> = ["low", "medium", "high"].map(String::from).to_vec();
    let ran = Ran {
        figures: &["capacity".into(), "admission".into()],
        profiles: &["medium".into()],
        order: &order,
        lines: &["cap, distinct".into(), "one: cap".into()],
    };
    let m = merge(old, new, &ran);
    let heads: Vec<&str> = m.lines().filter(|l| l.starts_with("## ")).collect();
    assert_eq!(
        heads,
        [
            "## Machine",
            "## Summary",
            "## Method",
            "## Start",
            "## CPU per media second (one viewer)",
            "## Capacity, distinct channels (live HLS)",
            "## Status",
            "## Admission (auto)",
            "## Where sluice loses",
            "## Fixed",
        ],
        "{m}"
    );
    for want in [
        "Written now. This run measured only capacity, admission at medium",
        "new machine",
        "new method",
        "| hls | low | 1 |\n| hls | medium | 20 |\n| hls | high | 3 |\n\
         | test | low | 4 |\n| test | medium | 50 |\n| test | high | 6 |\n\n## CPU",
        "| CPU | 0.70x | 0.80x | 0.90x |",
        "| cap (old) | 2.00x | 1.50x | 5.00x |",
        "| cap, distinct | n/a | 1.20x | n/a |",
        "| one: cap | n/a | 1.10x | n/a |",
        "| low | 0.2 |\n| medium | 0.4 |\n| high | 0.9 |",
        "new text\n\n| profile | n |\n|---|---|\n| low | 9 |\n| medium | 6 |\n| high | 2 |",
        "old status",
        "| medium | 4 |",
        "- **CPU**, high: 1.10x. why\n- **cap (old)**, medium: 0.9x. why\n\n## Fixed",
        "new fixed",
    ] {
        assert!(m.contains(want), "merged report lacks {want:?}:\n{m}");
    }
    for gone in [
        "old machine",
        "**cap, distinct**",
        "| medium | 5 |",
        "Nowhere",
        "old fixed",
    ] {
        assert!(!m.contains(gone), "merged report keeps {gone:?}:\n{m}");
    }
}
