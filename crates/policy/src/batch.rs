//! `svirt explain --batch`: one request per line in, one verdict per line out.

use std::io::{self, BufRead, Write};

use svirt_labels::Context;

use crate::decide::{Decision, decide};
use crate::error::PolicyError;
use crate::model::Booleans;

/// One parsed batch line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRequest {
    /// Source context.
    pub scontext: Context,
    /// Target context.
    pub tcontext: Context,
    /// Object class.
    pub class: String,
    /// Requested permissions.
    pub perms: Vec<String>,
    /// Boolean settings (defaults plus the line's overrides).
    pub booleans: Booleans,
}

impl BatchRequest {
    /// Decides the request.
    pub fn decide(&self) -> Decision {
        decide(
            &self.scontext,
            &self.tcontext,
            &self.class,
            &self.perms,
            &self.booleans,
        )
    }
}

fn context(text: &str) -> Result<Context, PolicyError> {
    Context::parse(text).map_err(|e| PolicyError::BadContext {
        text: text.to_owned(),
        message: e.to_string(),
    })
}

/// Parses `SCONTEXT<TAB>TCONTEXT<TAB>CLASS<TAB>PERM[,PERM…][<TAB>bool=on,…]`.
pub fn parse_batch_line(line: &str) -> Result<BatchRequest, PolicyError> {
    let line = line.trim_end_matches(['\n', '\r']);
    let fields: Vec<&str> = line.split('\t').collect();
    if !(4..=5).contains(&fields.len()) {
        return Err(PolicyError::BadBatchLine(format!(
            "{} tab-separated fields, expected 4 or 5: {line:?}",
            fields.len()
        )));
    }
    let perms: Vec<String> = fields[3]
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    if perms.is_empty() {
        return Err(PolicyError::BadBatchLine(format!(
            "no permission: {line:?}"
        )));
    }
    let class = fields[2].trim();
    if class.is_empty() {
        return Err(PolicyError::BadBatchLine(format!("no class: {line:?}")));
    }
    Ok(BatchRequest {
        scontext: context(fields[0].trim())?,
        tcontext: context(fields[1].trim())?,
        class: class.to_owned(),
        perms,
        booleans: Booleans::parse_list(fields.get(4).copied().unwrap_or(""))?,
    })
}

/// The answer line for one batch line (without the newline): `allow`, `deny<TAB>REASON`,
/// `unknown<TAB>WHAT` (outside the model: no guess) or `error<TAB>MESSAGE` (bad line).
pub fn answer_line(line: &str) -> String {
    match parse_batch_line(line) {
        Err(e) => format!("error\t{e}"),
        Ok(req) => match req.decide() {
            Decision::Allow => "allow".to_owned(),
            d @ Decision::Deny(_) => format!("deny\t{}", d.reason_line()),
            d @ Decision::UnknownToModel { .. } => format!("unknown\t{}", d.reason_line()),
        },
    }
}

/// Counts of what a batch run answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchSummary {
    /// Lines answered `allow`.
    pub allowed: usize,
    /// Lines answered `deny`.
    pub denied: usize,
    /// Lines answered `unknown`.
    pub unknown: usize,
    /// Lines answered `error`.
    pub errors: usize,
}

/// Reads batch lines from `reader` and writes one answer line per request to `writer`.
/// Empty lines and lines starting with `#` are skipped (no answer). I/O errors end the
/// run; bad lines are answered with `error<TAB>…` and the run goes on.
pub fn run_batch<R: BufRead, W: Write>(reader: R, mut writer: W) -> io::Result<BatchSummary> {
    let mut sum = BatchSummary::default();
    for line in reader.lines() {
        let line = line?;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let ans = answer_line(&line);
        match ans.split('\t').next() {
            Some("allow") => sum.allowed += 1,
            Some("deny") => sum.denied += 1,
            Some("unknown") => sum.unknown += 1,
            _ => sum.errors += 1,
        }
        writeln!(writer, "{ans}")?;
    }
    writer.flush()?;
    Ok(sum)
}
