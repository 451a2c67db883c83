//! Which object a record is about: its key and identity, and the in-process locks on
//! objects that make "read the record, decide, change the object, update the record" one
//! step per object. No table here; the tables that use these are in `originals.rs` and
//! `claims.rs`.

use serde::{Deserialize, Serialize};

/// Which object: the (device, inode) pair as `fstat` reports it on the opened fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

/// A timestamp as `statx` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds.
    pub nsec: u32,
}

/// What identifies one object beyond (dev, ino), which the kernel reuses after a delete.
///
/// `ctime` is kept for humans only: svirt's own chown/setxattr change it, so it cannot tell a
/// replaced file from one svirt relabeled. `btime` (statx birth time) and the inode
/// generation (`FS_IOC_GETVERSION`) do not change, and are compared when both sides have them.
/// When neither is available (some filesystems) a replacement cannot be detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectIdentity {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// Birth time, when the filesystem reports it.
    pub btime: Option<Timestamp>,
    /// Inode generation, when the filesystem reports it.
    pub generation: Option<u64>,
    /// Change time at recording, informative only.
    pub ctime: Option<Timestamp>,
}

impl ObjectIdentity {
    /// Whether `self` and `other` describe the same object (not a later one at the same inode).
    pub fn same_object(&self, other: &ObjectIdentity) -> bool {
        fn agree<T: PartialEq>(a: Option<T>, b: Option<T>) -> bool {
            match (a, b) {
                (Some(x), Some(y)) => x == y,
                _ => true,
            }
        }
        self.dev == other.dev
            && self.ino == other.ino
            && agree(self.btime, other.btime)
            && agree(self.generation, other.generation)
    }
}

/// The objects locked now (by [`crate::Store::lock_object`] and
/// [`crate::Store::lock_objects`]), and the condition variable their waiters sleep on.
#[derive(Default)]
pub(crate) struct KeyLocks {
    held: std::sync::Mutex<std::collections::HashSet<ObjectKey>>,
    freed: std::sync::Condvar,
}

/// Exclusive in-process hold on one object's record: released when dropped.
#[must_use = "the object is unlocked as soon as the guard is dropped"]
pub struct ObjectLock<'a> {
    locks: &'a KeyLocks,
    key: ObjectKey,
}

impl Drop for ObjectLock<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|p| p.into_inner());
        held.remove(&self.key);
        drop(held);
        self.locks.freed.notify_all();
    }
}

/// Exclusive in-process hold on several objects' records, taken together by
/// [`crate::Store::lock_objects`]: released when dropped.
#[must_use = "the objects are unlocked as soon as the guard is dropped"]
pub struct ObjectLocks<'a> {
    locks: &'a KeyLocks,
    keys: Vec<ObjectKey>,
}

impl Drop for ObjectLocks<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            held.remove(k);
        }
        drop(held);
        self.locks.freed.notify_all();
    }
}

impl KeyLocks {
    /// Waits until none of `keys` is held, then holds them all.
    pub(crate) fn lock_many(&self, keys: impl IntoIterator<Item = ObjectKey>) -> ObjectLocks<'_> {
        let mut keys: Vec<ObjectKey> = keys.into_iter().collect();
        keys.sort_unstable();
        keys.dedup();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while keys.iter().any(|k| held.contains(k)) {
            held = self.freed.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        held.extend(keys.iter().copied());
        ObjectLocks { locks: self, keys }
    }

    /// Waits until `key` is not held, then holds it.
    pub(crate) fn lock(&self, key: ObjectKey) -> ObjectLock<'_> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while held.contains(&key) {
            held = self.freed.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        held.insert(key);
        ObjectLock { locks: self, key }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Holders of one key never overlap; other keys are not blocked.
    #[test]
    fn object_lock_is_exclusive_per_key() {
        let locks = Arc::new(KeyLocks::default());
        let k = ObjectKey { dev: 1, ino: 2 };
        let inside = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                let (locks, inside, max) = (&locks, inside.clone(), max.clone());
                s.spawn(move || {
                    for _ in 0..200 {
                        let _g = locks.lock(k);
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(n, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(
            max.load(Ordering::SeqCst),
            1,
            "two holders of one key at once"
        );
        // Another key is free while one is held.
        let _a = locks.lock(k);
        let _b = locks.lock(ObjectKey { dev: 1, ino: 3 });
    }
    /// A set is taken whole: none of its keys is held while one of them is held elsewhere,
    /// and overlapping sets taken in opposite orders do not deadlock.
    #[test]
    fn object_locks_take_a_set_at_once() {
        use std::sync::atomic::AtomicBool;
        let locks = KeyLocks::default();
        let key = |ino| ObjectKey { dev: 1, ino };
        let got = AtomicBool::new(false);
        let first = locks.lock(key(1));
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let _g = locks.lock_many([key(2), key(1), key(2)]);
                got.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(std::time::Duration::from_millis(100));
            assert!(!got.load(Ordering::SeqCst), "key 1 is held");
            // The waiter holds nothing meanwhile: key 2 (and any other) is free.
            drop(locks.lock_many([key(2), key(3)]));
            drop(first);
            waiter.join().unwrap();
        });
        assert!(got.load(Ordering::SeqCst));
        // Opposite orders of overlapping sets, many times.
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let locks = &locks;
                s.spawn(move || {
                    for _ in 0..200 {
                        let mut ks = vec![key(10), key(11), key(12)];
                        if t % 2 == 1 {
                            ks.reverse();
                        }
                        let _g = locks.lock_many(ks);
                        std::thread::yield_now();
                    }
                });
            }
            for _ in 0..200 {
                let _g = locks.lock(key(11));
            }
        });
        assert!(locks.held.lock().unwrap().is_empty());
    }
}
