//! The `key=value` fields of a kernel audit record (AppArmor's, SMACK's), read back for
//! `svirt denials`. The kernel writes a value quoted when it is printable and hex-encoded
//! (unquoted) when it is not (`audit_log_untrustedstring`: a path with a space, a quote or
//! a control character). A log a guest may have influenced (file names it chose) is parsed,
//! never trusted.

use std::collections::BTreeMap;

/// `key=value` fields: quoted values as they are, unquoted hex decoded when it is the
/// kernel's encoding of an untrusted string, other unquoted values as they are.
pub(crate) fn fields(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start();
        let Some(eq) = rest.find('=') else {
            break;
        };
        let key = &rest[..eq];
        if key.is_empty() || key.contains(char::is_whitespace) {
            // Not a field (free text): skip a word.
            match rest.find(char::is_whitespace) {
                Some(i) => {
                    rest = &rest[i..];
                    continue;
                }
                None => break,
            }
        }
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (q[..end].to_string(), &q[end + 1..]),
                None => (q.to_string(), ""),
            }
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            let raw = &after[..end];
            let v = if untrusted_string_field(key) {
                decode_hex(raw).unwrap_or_else(|| raw.to_string())
            } else {
                raw.to_string()
            };
            (v, &after[end..])
        };
        out.entry(key.to_string()).or_insert(value);
        rest = next;
    }
    out
}

/// Fields the kernel logs with `audit_log_untrustedstring` (hex when not printable).
fn untrusted_string_field(key: &str) -> bool {
    matches!(
        key,
        "name"
            | "profile"
            | "peer"
            | "target"
            | "comm"
            | "info"
            | "peer_addr"
            | "addr"
            | "subject"
            | "object"
    )
}

/// Upper-case hex of an even length, decoded, if it is valid UTF-8 (lossy otherwise).
fn decode_hex(s: &str) -> Option<String> {
    if s.is_empty() || !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect();
    Some(String::from_utf8_lossy(&bytes?).into_owned())
}
