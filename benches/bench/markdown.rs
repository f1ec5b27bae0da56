//! The pieces of the report every figure's section uses: markdown tables
//! and the summary's verdicts.

use std::fmt::Write;

/// One summary line: a figure, its ratio per profile, lower-is-better.
pub struct Verdict {
    pub figure: String,
    pub profile: String,
    pub ratio: Option<f64>,
    pub lower_is_better: bool,
}

impl Verdict {
    pub fn sluice_loses(&self) -> bool {
        match self.ratio {
            Some(r) if self.lower_is_better => r > 1.0,
            Some(r) => r < 1.0,
            None => false,
        }
    }
}

pub fn table(out: &mut String, head: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out.push('\n');
}
