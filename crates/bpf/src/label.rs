//! Labels in the programs' own layout (`bpf/mcs.h`): what svirtd writes into the maps.

use std::os::fd::AsFd;

use svirt_labels::{CategorySet, Level};

use crate::BpfError;

/// 64-bit words of a category bitmap: c0..c1023, as in the MCS policy.
pub const CAT_WORDS: usize = 16;

/// A category set as the programs hold it (`struct svirt_level`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Cats(pub [u64; CAT_WORDS]);

impl Cats {
    /// The categories of an MCS level (its sensitivity is `s0` under MCS and is not
    /// carried: the decision is dominance of categories).
    pub fn of(level: &Level) -> Cats {
        Cats::of_set(&level.categories)
    }

    /// The bitmap of a category set.
    pub fn of_set(set: &CategorySet) -> Cats {
        let mut words = [0u64; CAT_WORDS];
        for c in set.iter() {
            let c = usize::from(c);
            if c < CAT_WORDS * 64 {
                words[c / 64] |= 1u64 << (c % 64);
            }
        }
        Cats(words)
    }

    /// The category set back (for reports).
    pub fn to_set(&self) -> CategorySet {
        let mut set = CategorySet::new();
        for (w, word) in self.0.iter().enumerate() {
            for b in 0..64 {
                if word & (1u64 << b) != 0 {
                    // w < 16 and b < 64: the category fits u16.
                    set.insert((w * 64 + b) as u16);
                }
            }
        }
        set
    }

    /// Whether `self` dominates `other` (contains every category of it): `mcs.h`'s
    /// `svirt_dominates`, for user space.
    pub fn dominates(&self, other: &Cats) -> bool {
        self.0.iter().zip(other.0.iter()).all(|(s, o)| o & !s == 0)
    }

    /// The id of this category set (`mcs.h`): [`ID_S0`] for none, an injective code for
    /// one or two categories, [`ID_BITMAP`] for more. A function of the set alone, so a
    /// subject's and an object's agree without any table (the pinned maps outlive svirtd:
    /// a counter would have to outlive it too); equal ids other than [`ID_BITMAP`] mean
    /// equal sets, which lets the programs skip the bitmaps' dominance loop.
    pub fn id(&self) -> u32 {
        let mut found = [0u32; 2];
        let mut n = 0;
        for (w, word) in self.0.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                if n == 2 {
                    return ID_BITMAP;
                }
                // w < 16, trailing_zeros < 64: the category is below 1024.
                found[n] = (w * 64) as u32 + bits.trailing_zeros();
                n += 1;
                bits &= bits - 1;
            }
        }
        match n {
            0 => ID_S0,
            1 => 1 + found[0],
            _ => 1025 + found[0] * 1024 + found[1],
        }
    }

    /// The level `s0[:cats]` these categories stand for.
    pub fn to_level(&self) -> Level {
        Level {
            sensitivity: 0,
            categories: self.to_set(),
        }
    }
}

/// The id of no category (`s0`): dominated by every level.
pub const ID_S0: u32 = 0;
/// The id of a set of more than two categories: the programs compare the bitmaps.
pub const ID_BITMAP: u32 = 0x00ff_ffff;

/// What an object's kind permits (`SVIRT_MAY_*`): the type-enforcement half of the
/// decision, as a mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Allow(pub u32);

impl Allow {
    /// Read (open for reading, read a directory).
    pub const READ: Allow = Allow(1);
    /// Write (open for writing or appending; connect to a socket bound there).
    pub const WRITE: Allow = Allow(2);
    /// Execute (exec, map executable).
    pub const EXEC: Allow = Allow(4);
    /// A guest's own image, a share, a device it is given: `svirt_image_t`.
    pub const READ_WRITE: Allow = Allow(1 | 2);
    /// Read-only content (`virt_content_t`), firmware, the loader's cache.
    pub const READ_ONLY: Allow = Allow(1);
    /// Libraries and the emulator (`lib_t`, `qemu_exec_t`).
    pub const READ_EXEC: Allow = Allow(1 | 4);

    /// Whether every access of `want` is in `self`.
    pub fn covers(self, want: Allow) -> bool {
        want.0 & !self.0 == 0
    }

    /// The access in words (`read,write`), as `svirt denials` prints it.
    pub fn words(self) -> String {
        let mut v = Vec::new();
        for (bit, w) in [(1, "read"), (2, "write"), (4, "execute")] {
            if self.0 & bit != 0 {
                v.push(w);
            }
        }
        if v.is_empty() {
            "none".into()
        } else {
            v.join(",")
        }
    }
}

/// The label of a guest's tasks (`struct svirt_subject`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubjectLabel {
    /// The guest's categories.
    pub cats: Cats,
    /// Their id ([`Cats::id`]); [`SubjectLabel::new`] sets it.
    pub id: u32,
    /// Zero.
    pub pad: u32,
}

impl SubjectLabel {
    /// A subject at `cats`.
    pub fn new(cats: Cats) -> SubjectLabel {
        SubjectLabel {
            cats,
            id: cats.id(),
            pad: 0,
        }
    }
}

/// Inodes whose labels a guest's task caches (`SVIRT_CACHE_SLOTS`).
pub const TASK_CACHE_SLOTS: usize = 32;

/// The size of a task's value in the task-label map (`struct svirt_task`): its label,
/// then the programs' cache of labels (three u64 per slot), which user space writes as
/// zeros (empty).
pub const TASK_VALUE_SIZE: usize = std::mem::size_of::<SubjectLabel>() + TASK_CACHE_SLOTS * 24;

/// The task-label map's value for `label`: the label, then an empty cache.
pub(crate) fn task_value(label: &SubjectLabel) -> Vec<u8> {
    let mut v = vec![0u8; TASK_VALUE_SIZE];
    v[..std::mem::size_of::<SubjectLabel>()].copy_from_slice(bytes_of(label));
    v
}

/// `svirt_object.flags`: the label covers everything beneath this directory.
pub const OBJ_TREE: u32 = 1;

/// The label of one host object (`struct svirt_object`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ObjectLabel {
    /// The object's categories (none: `s0`, shared by every guest).
    pub cats: Cats,
    /// What its kind permits.
    pub allow: u32,
    /// `OBJ_TREE` or 0.
    pub flags: u32,
    /// The id of `cats` ([`Cats::id`]); [`ObjectLabel::new`] sets it.
    pub id: u32,
    /// Zero.
    pub pad: u32,
}

impl ObjectLabel {
    /// An object at `cats` permitting `allow`; a tree when `tree`.
    pub fn new(cats: Cats, allow: Allow, tree: bool) -> ObjectLabel {
        ObjectLabel {
            cats,
            allow: allow.0,
            flags: if tree { OBJ_TREE } else { 0 },
            id: cats.id(),
            pad: 0,
        }
    }

    /// Whether the label covers what lies beneath.
    pub fn is_tree(&self) -> bool {
        self.flags & OBJ_TREE != 0
    }

    /// `mcs.h`'s `svirt_may`, for user space (reports, tests).
    pub fn permits(&self, subject: &Cats, want: Allow) -> bool {
        Allow(self.allow).covers(want) && subject.dominates(&self.cats)
    }
}

/// An inode's identity as the programs see it (`struct svirt_inode_key`): the kernel's
/// `dev_t` of its superblock and its inode number.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct InodeKey {
    /// `MKDEV(major, minor)` as the kernel encodes it (`major << 20 | minor`).
    pub dev: u64,
    /// The inode number.
    pub ino: u64,
}

impl InodeKey {
    /// The identity of an open object (`fstat`): identity, never a path.
    pub fn of(fd: impl AsFd) -> Result<InodeKey, BpfError> {
        let st = rustix::fs::fstat(fd.as_fd()).map_err(|e| BpfError::Io {
            what: "fstat a labeled object".into(),
            source: e.into(),
        })?;
        Ok(InodeKey::from_stat(st.st_dev, st.st_ino))
    }

    /// From `st_dev` (user space's encoding) and `st_ino`.
    pub fn from_stat(st_dev: u64, st_ino: u64) -> InodeKey {
        let major = u64::from(libc::major(st_dev));
        let minor = u64::from(libc::minor(st_dev));
        InodeKey {
            dev: (major << 20) | minor,
            ino: st_ino,
        }
    }
}

/// The bytes of a `#[repr(C)]` value without padding, as a map key or value.
pub(crate) fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is one of this module's repr(C) structs made of u32/u64 fields with no
    // padding (checked by the size assertions below); reading its bytes is defined.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// A value back from a map's bytes; `None` when the size is not the type's.
pub(crate) fn from_bytes<T: Copy + Default>(b: &[u8]) -> Option<T> {
    if b.len() != std::mem::size_of::<T>() {
        return None;
    }
    let mut v = T::default();
    // SAFETY: same size, and every bit pattern is a valid value of these u32/u64 structs.
    unsafe {
        std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), b.len());
    }
    Some(v)
}

// The layouts `bpf/mcs.h` declares; a mismatch would make every lookup miss.
const _: () = assert!(std::mem::size_of::<Cats>() == 128);
const _: () = assert!(std::mem::size_of::<SubjectLabel>() == 136);
const _: () = assert!(TASK_VALUE_SIZE == 904);
const _: () = assert!(std::mem::size_of::<ObjectLabel>() == 144);
const _: () = assert!(std::mem::size_of::<InodeKey>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_round_trip_and_dominate_like_levels() {
        let a = Level::parse("s0:c41,c264").expect("level");
        let b = Level::parse("s0:c41").expect("level");
        let c = Level::parse("s0:c3,c1023").expect("level");
        let (ca, cb, cc) = (Cats::of(&a), Cats::of(&b), Cats::of(&c));
        assert_eq!(ca.to_level(), a);
        assert_eq!(cc.to_level(), c);
        assert!(ca.dominates(&cb) && !cb.dominates(&ca));
        assert!(!ca.dominates(&cc) && !cc.dominates(&ca));
        assert!(ca.dominates(&Cats::default()));
    }

    #[test]
    fn ids_are_injective_on_small_sets_and_agree_with_the_bitmap() {
        let id = |l: &str| Cats::of(&Level::parse(l).expect("level")).id();
        assert_eq!(id("s0"), ID_S0);
        assert_eq!(id("s0:c0"), 1);
        assert_eq!(id("s0:c1023"), 1024);
        assert_eq!(id("s0:c0,c1"), 1025 + 1);
        assert_eq!(id("s0:c1022,c1023"), 1025 + 1022 * 1024 + 1023);
        assert!(id("s0:c1022,c1023") < ID_BITMAP);
        assert_eq!(id("s0:c1,c2,c3"), ID_BITMAP);
        // Every set of at most two categories among a few dozen has its own id.
        let mut seen = std::collections::HashMap::new();
        let cs: Vec<u16> = (0..20)
            .chain(1000..1024)
            .chain([63, 64, 127, 128])
            .collect();
        let mut sets = vec![CategorySet::new()];
        for &a in &cs {
            for &b in &cs {
                let mut s = CategorySet::new();
                s.insert(a);
                s.insert(b);
                sets.push(s);
            }
        }
        for s in sets {
            let c = Cats::of_set(&s);
            if let Some(other) = seen.insert(c.id(), c) {
                assert_eq!(other, c, "two sets share id {}", c.id());
            }
        }
    }

    #[test]
    fn kernel_dev_encoding() {
        // 8:1 (sda1) and 259:3 (nvme0n1p3), user space's encoding -> MKDEV.
        assert_eq!(
            InodeKey::from_stat(libc::makedev(8, 1), 5).dev,
            (8 << 20) | 1
        );
        assert_eq!(
            InodeKey::from_stat(libc::makedev(259, 3), 5).dev,
            (259 << 20) | 3
        );
        assert_eq!(
            InodeKey::from_stat(libc::makedev(0, 300), 5).dev,
            300,
            "anonymous devices (tmpfs) have minors above 255"
        );
    }

    #[test]
    fn the_mask_is_type_enforcement() {
        let o = ObjectLabel::new(Cats::default(), Allow::READ_ONLY, false);
        assert!(o.permits(&Cats::default(), Allow::READ));
        assert!(!o.permits(&Cats::default(), Allow::WRITE));
        assert!(!o.permits(&Cats::default(), Allow::READ_WRITE));
    }
}
