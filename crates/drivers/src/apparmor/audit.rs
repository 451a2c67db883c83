//! AppArmor's audit records (`apparmor="DENIED" … profile="svirt-<uuid>" …`), read back so
//! that `svirt denials` can attribute them to guests the way it does SELinux AVCs.
//!
//! The kernel writes each field as `key=value`, the value quoted when it is printable and
//! hex-encoded (unquoted) when it is not (a path with a space, a quote or a control
//! character: `audit_log_untrustedstring`). Everything here comes from a log a guest may
//! have influenced (file names it chose): it is parsed, never trusted.

use std::collections::BTreeMap;

use crate::audit_fields::fields;

/// One AppArmor audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppArmorRecord {
    /// `DENIED`, `ALLOWED`, `AUDIT`, `STATUS`, …
    pub outcome: String,
    /// The profile the subject ran under (`svirt-<uuid>` for a guest).
    pub profile: String,
    /// What was attempted (`open`, `signal`, `ptrace`, `connect`, `exec`, …).
    pub operation: String,
    /// The object's path, when the record has one (decoded).
    pub name: Option<String>,
    /// The other party of a signal or ptrace (its profile).
    pub peer: Option<String>,
    /// `denied_mask` (else `requested_mask`, else a capability's `capname`): what was
    /// refused.
    pub denied: Option<String>,
    /// Every field as read (decoded).
    pub fields: BTreeMap<String, String>,
}

impl AppArmorRecord {
    /// The uuid of the guest whose profile this is (`svirt-<uuid>`), if it is one.
    pub fn guest_uuid(&self) -> Option<&str> {
        uuid_of_profile(&self.profile)
    }

    /// The uuid of the other party's guest, for signals and ptrace between guests.
    pub fn peer_uuid(&self) -> Option<&str> {
        self.peer.as_deref().and_then(uuid_of_profile)
    }
}

/// The uuid in a guest profile's name (`svirt-<uuid>`, possibly followed by a hat or a
/// child profile `//…`), if the name is one.
pub fn uuid_of_profile(profile: &str) -> Option<&str> {
    let rest = profile.strip_prefix("svirt-")?;
    let uuid = rest.split("//").next()?;
    (!uuid.is_empty() && uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')).then_some(uuid)
}

/// Whether `line` holds an AppArmor record (`apparmor="…"`).
pub fn is_apparmor_line(line: &str) -> bool {
    line.contains("apparmor=")
}

/// The AppArmor record in `line`, or `None` if it has none (or no profile).
pub fn parse(line: &str) -> Option<AppArmorRecord> {
    let start = line.find("apparmor=")?;
    let fields = fields(&line[start..]);
    let outcome = fields.get("apparmor")?.clone();
    let profile = fields.get("profile")?.clone();
    Some(AppArmorRecord {
        outcome,
        profile,
        operation: fields.get("operation").cloned().unwrap_or_default(),
        name: fields.get("name").cloned(),
        peer: fields.get("peer").cloned(),
        // A capability record has no mask: its `capname` is what was refused.
        denied: fields
            .get("denied_mask")
            .or_else(|| fields.get("requested_mask"))
            .or_else(|| fields.get("capname"))
            .cloned(),
        fields,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_file_denial_names_the_guest_the_object_and_the_mask() {
        let line = r#"[ 1234.5] audit: type=1400 audit(1700000000.123:45): apparmor="DENIED" operation="open" class="file" profile="svirt-2f3c1d0e-5a8b-4c7d-9e0f-1a2b3c4d5e6f" name="/var/lib/svirt/b.img" pid=812 comm="qemu-system-x86" requested_mask="wr" denied_mask="wr" fsuid=0 ouid=0"#;
        let r = parse(line).unwrap();
        assert_eq!(r.outcome, "DENIED");
        assert_eq!(r.operation, "open");
        assert_eq!(r.guest_uuid(), Some("2f3c1d0e-5a8b-4c7d-9e0f-1a2b3c4d5e6f"));
        assert_eq!(r.name.as_deref(), Some("/var/lib/svirt/b.img"));
        assert_eq!(r.denied.as_deref(), Some("wr"));
        assert_eq!(r.fields["pid"], "812");
    }

    #[test]
    fn hex_encoded_names_are_decoded_and_peers_attributed() {
        // "/tmp/a b.img" has a space: the kernel logs it as hex, unquoted.
        let line = r#"audit: type=1400 audit(1.2:3): apparmor="DENIED" operation="open" profile="svirt-aa" name=2F746D702F6120622E696D67 pid=9 comm="qemu" requested_mask="r" denied_mask="r""#;
        let r = parse(line).unwrap();
        assert_eq!(r.name.as_deref(), Some("/tmp/a b.img"));
        let sig = r#"apparmor="DENIED" operation="signal" class="signal" profile="svirt-aa" pid=9 comm="qemu" requested_mask="send" denied_mask="send" signal=kill peer="svirt-bb""#;
        let r = parse(sig).unwrap();
        assert_eq!((r.guest_uuid(), r.peer_uuid()), (Some("aa"), Some("bb")));
        assert_eq!(r.fields["signal"], "kill");
    }

    #[test]
    fn a_capability_denial_names_the_capability() {
        let line = r#"audit: type=1400 audit(1.2:9): apparmor="DENIED" operation="capable" class="cap" profile="svirt-aa" pid=77 comm="qemu" capability=0  capname="chown""#;
        let r = parse(line).unwrap();
        assert_eq!(r.operation, "capable");
        assert_eq!(r.denied.as_deref(), Some("chown"));
    }

    #[test]
    fn other_profiles_and_other_lines_are_not_guests() {
        let line = r#"apparmor="DENIED" operation="open" profile="/usr/sbin/cupsd" name="/etc/shadow" pid=1 comm="cupsd" requested_mask="r" denied_mask="r""#;
        assert_eq!(parse(line).unwrap().guest_uuid(), None);
        assert_eq!(uuid_of_profile("svirt-"), None);
        assert_eq!(uuid_of_profile("svirt-x y"), None);
        assert_eq!(uuid_of_profile("svirt-ab12//null-1"), Some("ab12"));
        assert!(parse("avc: denied { read } for pid=1").is_none());
        assert!(!is_apparmor_line("avc: denied { read }"));
    }
}
