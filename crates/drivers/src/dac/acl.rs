//! The POSIX ACL codec: `system.posix_acl_access` as the kernel stores it
//! (`posix_acl_xattr_header` + entries), decoded, changed and encoded again. No crate does
//! this without libacl (C): the DAC driver's read grants are one entry per guest uid.

// POSIX ACL xattr format (`posix_acl_xattr_header` + entries), as the kernel defines it.
pub(super) const ACL_VERSION: u32 = 2;
pub(super) const ACL_USER_OBJ: u16 = 0x01;
pub(super) const ACL_USER: u16 = 0x02;
pub(super) const ACL_GROUP_OBJ: u16 = 0x04;
pub(super) const ACL_GROUP: u16 = 0x08;
pub(super) const ACL_MASK: u16 = 0x10;
pub(super) const ACL_OTHER: u16 = 0x20;
pub(super) const ACL_UNDEFINED_ID: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AclEntry {
    tag: u16,
    perm: u16,
    id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Acl {
    entries: Vec<AclEntry>,
}

impl Acl {
    pub(super) fn from_mode(mode: u32) -> Acl {
        let e = |tag, shift: u32| AclEntry {
            tag,
            perm: ((mode >> shift) & 7) as u16,
            id: ACL_UNDEFINED_ID,
        };
        Acl {
            entries: vec![e(ACL_USER_OBJ, 6), e(ACL_GROUP_OBJ, 3), e(ACL_OTHER, 0)],
        }
    }

    pub(super) fn parse(b: &[u8]) -> Option<Acl> {
        if b.len() < 4 || !(b.len() - 4).is_multiple_of(8) {
            return None;
        }
        if u32::from_le_bytes(b[..4].try_into().ok()?) != ACL_VERSION {
            return None;
        }
        let entries = b[4..]
            .chunks_exact(8)
            .map(|c| AclEntry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Some(Acl { entries })
    }

    pub(super) fn get(&self, tag: u16, id: u32) -> Option<u16> {
        self.entries
            .iter()
            .find(|e| e.tag == tag && (id == u32::MAX || e.id == id))
            .map(|e| e.perm)
    }

    pub(super) fn remove(&mut self, tag: u16, id: u32) {
        self.entries.retain(|e| !(e.tag == tag && e.id == id));
    }

    /// Whether there is a named user or group entry (which requires a mask).
    pub(super) fn has_named(&self) -> bool {
        self.entries
            .iter()
            .any(|e| matches!(e.tag, ACL_USER | ACL_GROUP))
    }

    pub(super) fn set(&mut self, tag: u16, id: u32, perm: u16) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.tag == tag && e.id == id) {
            e.perm = perm;
        } else {
            self.entries.push(AclEntry { tag, perm, id });
        }
    }

    /// Union of the group class (owning group, named users and groups): the least mask that
    /// lets every entry through.
    pub(super) fn group_class_union(&self) -> u16 {
        self.entries
            .iter()
            .filter(|e| matches!(e.tag, ACL_USER | ACL_GROUP_OBJ | ACL_GROUP))
            .fold(0, |a, e| a | e.perm)
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut es = self.entries.clone();
        // The kernel requires entries sorted by tag, then id.
        es.sort_by_key(|e| (e.tag, e.id));
        let mut out = ACL_VERSION.to_le_bytes().to_vec();
        for e in es {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_round_trip_sorted_with_mask() {
        let mut acl = Acl::from_mode(0o640);
        acl.set(ACL_GROUP, 993, 6);
        let mask = acl.group_class_union();
        acl.set(ACL_MASK, ACL_UNDEFINED_ID, mask);
        let bytes = acl.encode();
        let back = Acl::parse(&bytes).expect("parse");
        let tags: Vec<u16> = back.entries.iter().map(|e| e.tag).collect();
        assert_eq!(
            tags,
            vec![ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER]
        );
        assert_eq!(back.get(ACL_USER_OBJ, ACL_UNDEFINED_ID), Some(6));
        assert_eq!(back.get(ACL_GROUP_OBJ, ACL_UNDEFINED_ID), Some(4));
        assert_eq!(back.get(ACL_GROUP, 993), Some(6));
        assert_eq!(back.get(ACL_MASK, ACL_UNDEFINED_ID), Some(6));
        assert_eq!(back.get(ACL_OTHER, ACL_UNDEFINED_ID), Some(0));
        assert!(Acl::parse(&bytes[..bytes.len() - 1]).is_none());
        assert!(Acl::parse(&[1, 0, 0, 0]).is_none());
    }
}
