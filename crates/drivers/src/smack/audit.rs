//! SMACK's audit records (`lsm=SMACK fn=… action=denied subject="…" object="…"
//! requested=…`), read back so that `svirt denials` attributes them to guests by their
//! labels, as it does SELinux's AVCs.

use std::collections::BTreeMap;

use crate::audit_fields::fields;

/// One SMACK audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmackRecord {
    /// `denied` or `granted`.
    pub action: String,
    /// The kernel function that checked (`smack_inode_permission`, `smack_task_kill`, …).
    pub function: String,
    /// The subject's label.
    pub subject: String,
    /// The object's label.
    pub object: String,
    /// The access asked for (`r`, `w`, `rw`, …); `labels_differ` where SMACK compares
    /// labels alone.
    pub requested: String,
    /// Every field as read (decoded): `pid`, `comm`, `name`, `path`, `dev`, `ino`, …
    pub fields: BTreeMap<String, String>,
}

/// Whether `line` holds a SMACK record.
pub fn is_smack_line(line: &str) -> bool {
    line.contains("lsm=SMACK")
}

/// The SMACK record in `line`, or `None` if it has none.
pub fn parse(line: &str) -> Option<SmackRecord> {
    let start = line.find("lsm=SMACK")?;
    let f = fields(&line[start..]);
    let requested = match f.get("requested") {
        Some(r) => r.clone(),
        None if line[start..].contains(" labels_differ") => "labels_differ".into(),
        None => String::new(),
    };
    Some(SmackRecord {
        action: f.get("action")?.clone(),
        function: f.get("fn").cloned().unwrap_or_default(),
        subject: f.get("subject")?.clone(),
        object: f.get("object")?.clone(),
        requested,
        fields: f,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_file_denial_names_both_labels_and_the_access() {
        let line = r#"[  12.345678] audit: type=1400 audit(1700000000.123:45): lsm=SMACK fn=smack_inode_permission action=denied subject="svirt-c3-c4" object="svirt-c1-c2" requested=r pid=812 comm="qemu-system-x86" name="A.img" dev="tmpfs" ino=17"#;
        let r = parse(line).unwrap();
        assert_eq!(r.action, "denied");
        assert_eq!(r.function, "smack_inode_permission");
        assert_eq!(
            (r.subject.as_str(), r.object.as_str()),
            ("svirt-c3-c4", "svirt-c1-c2")
        );
        assert_eq!(r.requested, "r");
        assert_eq!(r.fields["name"], "A.img");
        assert_eq!(r.fields["pid"], "812");
    }

    #[test]
    fn labels_differ_and_hex_names() {
        let line = r#"audit: type=1400 audit(1.2:3): lsm=SMACK fn=smack_task_kill action=denied subject="svirt-c1-c2" object="svirt-c3-c4" labels_differ pid=9 comm="qemu" opid=10 ocomm="qemu""#;
        let r = parse(line).unwrap();
        assert_eq!(r.requested, "labels_differ");
        assert_eq!(r.fields["opid"], "10");
        // "a b.img" has a space: logged as hex.
        let line = r#"lsm=SMACK fn=smack_inode_permission action=denied subject="svirt-c1-c2" object="_" requested=w pid=9 comm="qemu" name=6120622E696D67"#;
        assert_eq!(parse(line).unwrap().fields["name"], "a b.img");
        assert!(parse(r#"apparmor="DENIED" operation="open""#).is_none());
        assert!(!is_smack_line("avc: denied { read }"));
    }
}
