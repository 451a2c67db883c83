//! Kernel AVC records (`avc:  denied  { read } for … tclass=file permissive=0`), as printed
//! by dmesg/journal (`audit: type=1400 audit(…): avc: …`) and in audit.log
//! (`type=AVC msg=audit(…): avc: …`), with or without the `audit(…):` prefix.

use svirt_labels::Context;

use crate::decide::{Decision, decide};
use crate::error::PolicyError;
use crate::explain::{Explanation, explain};
use crate::model::Booleans;

/// One parsed AVC record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcRecord {
    /// `denied` (true) or `granted` (false, an auditallow record).
    pub denied: bool,
    /// The permissions in braces.
    pub perms: Vec<String>,
    /// `audit(SECONDS.MILLIS:SERIAL)`: the time stamp text, if present.
    pub timestamp: Option<String>,
    /// The serial number of the audit event, if present.
    pub serial: Option<u64>,
    /// `pid=`.
    pub pid: Option<u32>,
    /// `comm=` (hex-encoded values are decoded).
    pub comm: Option<String>,
    /// `name=`.
    pub name: Option<String>,
    /// `path=`.
    pub path: Option<String>,
    /// `dev=`.
    pub dev: Option<String>,
    /// `ino=`.
    pub ino: Option<u64>,
    /// `scontext=`.
    pub scontext: Context,
    /// `tcontext=`.
    pub tcontext: Context,
    /// `tclass=`.
    pub tclass: String,
    /// `permissive=` (absent in old kernels).
    pub permissive: Option<bool>,
    /// Every `key=value` after the braces, in order, values unquoted.
    pub fields: Vec<(String, String)>,
}

impl AvcRecord {
    /// The model's decision for the logged access.
    pub fn decide(&self, booleans: &Booleans) -> Decision {
        decide(
            &self.scontext,
            &self.tcontext,
            &self.tclass,
            &self.perms,
            booleans,
        )
    }

    /// The model's explanation for the logged access.
    pub fn explain(&self, booleans: &Booleans) -> Explanation {
        explain(
            &self.scontext,
            &self.tcontext,
            &self.tclass,
            &self.perms,
            booleans,
        )
    }

    /// A field's value by key.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Whether a line holds an AVC record at all (cheap pre-filter for log scanning).
pub fn is_avc_line(line: &str) -> bool {
    line.contains("avc:")
}

/// Splits `key=value key="quoted value"` pairs.
fn fields(mut s: &str) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start();
        if s.is_empty() {
            break;
        }
        let Some(eq) = s.find('=') else { break };
        let key = &s[..eq];
        if key.contains(char::is_whitespace) {
            // A bare word (e.g. a trailing annotation): skip it.
            let sp = s.find(char::is_whitespace).unwrap_or(s.len());
            s = &s[sp..];
            continue;
        }
        let rest = &s[eq + 1..];
        let (value, next) = if let Some(q) = rest.strip_prefix('"') {
            match q.find('"') {
                Some(end) => ((q[..end].to_owned(), true), &q[end + 1..]),
                None => ((q.to_owned(), true), ""),
            }
        } else {
            // audit.log may separate the enriched part with GS (0x1d).
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '\u{1d}')
                .unwrap_or(rest.len());
            ((rest[..end].to_owned(), false), &rest[end..])
        };
        out.push((key.to_owned(), value.0, value.1));
        s = next.trim_start_matches('\u{1d}');
    }
    out
}

/// The kernel quotes `comm`/`name`/`path` values, or hex-encodes them (unquoted) when they
/// contain spaces, quotes or control characters (`audit_log_untrustedstring`).
fn untrusted_value((v, quoted): (String, bool)) -> String {
    let hex =
        !quoted && v.len() % 2 == 0 && !v.is_empty() && v.bytes().all(|b| b.is_ascii_hexdigit());
    if hex {
        let bytes: Option<Vec<u8>> = (0..v.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&v[i..i + 2], 16).ok())
            .collect();
        if let Some(Ok(s)) = bytes.map(String::from_utf8) {
            return s;
        }
    }
    v.to_owned()
}

fn context_field(
    fields: &[(String, String, bool)],
    key: &str,
    line: &str,
) -> Result<Context, PolicyError> {
    let v = fields
        .iter()
        .find(|(k, _, _)| k == key)
        .map(|(_, v, _)| v.as_str())
        .ok_or_else(|| PolicyError::NotAvc(format!("no {key}= in {line:?}")))?;
    Context::parse(v).map_err(|e| PolicyError::BadContext {
        text: v.to_owned(),
        message: e.to_string(),
    })
}

/// Parses one AVC record out of a log line.
pub fn parse_avc(line: &str) -> Result<AvcRecord, PolicyError> {
    let line = line.trim();
    let at = line
        .find("avc:")
        .ok_or_else(|| PolicyError::NotAvc(line.to_owned()))?;
    let (timestamp, serial) = match line[..at].rfind("audit(") {
        Some(p) => {
            let inner = &line[p + 6..at];
            match inner.find(')') {
                Some(end) => {
                    let ts = &inner[..end];
                    let serial = ts.rsplit_once(':').and_then(|(_, s)| s.parse().ok());
                    (Some(ts.to_owned()), serial)
                }
                None => (None, None),
            }
        }
        None => (None, None),
    };
    let rest = line[at + 4..].trim_start();
    let (denied, rest) = if let Some(r) = rest.strip_prefix("denied") {
        (true, r)
    } else if let Some(r) = rest.strip_prefix("granted") {
        (false, r)
    } else {
        return Err(PolicyError::NotAvc(format!(
            "neither denied nor granted: {line:?}"
        )));
    };
    let rest = rest.trim_start();
    let inner = rest
        .strip_prefix('{')
        .and_then(|r| r.split_once('}'))
        .ok_or_else(|| PolicyError::NotAvc(format!("no {{ permissions }}: {line:?}")))?;
    let perms: Vec<String> = inner.0.split_whitespace().map(str::to_owned).collect();
    if perms.is_empty() {
        return Err(PolicyError::NotAvc(format!(
            "empty permission set: {line:?}"
        )));
    }
    let after = inner.1.trim_start();
    let after = after.strip_prefix("for").unwrap_or(after);
    let fields = fields(after);
    let raw = |k: &str| {
        fields
            .iter()
            .find(|(key, _, _)| key == k)
            .map(|(_, v, q)| (v.clone(), *q))
    };
    let get = |k: &str| raw(k).map(|(v, _)| v);
    let scontext = context_field(&fields, "scontext", line)?;
    let tcontext = context_field(&fields, "tcontext", line)?;
    let tclass =
        get("tclass").ok_or_else(|| PolicyError::NotAvc(format!("no tclass= in {line:?}")))?;
    Ok(AvcRecord {
        denied,
        perms,
        timestamp,
        serial,
        pid: get("pid").and_then(|v| v.parse().ok()),
        comm: raw("comm").map(untrusted_value),
        name: raw("name").map(untrusted_value),
        path: raw("path").map(untrusted_value),
        dev: get("dev"),
        ino: get("ino").and_then(|v| v.parse().ok()),
        scontext,
        tcontext,
        tclass,
        permissive: get("permissive").map(|v| v == "1"),
        fields: fields.into_iter().map(|(k, v, _)| (k, v)).collect(),
    })
}
