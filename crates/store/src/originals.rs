//! Records of an object's security state before svirt changed it, reference counted by guest.
//!
//! The reference keeps this in `trusted.*` xattrs on the file itself, which containers cannot
//! write and which go stale after a crash. Here it is one transactional record per inode,
//! written (durably) BEFORE the first change, released when the last guest using the object
//! stops.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::object::{ObjectIdentity, ObjectKey};
use crate::store::{ORIGINAL_OWNERS, ORIGINALS, Store, check_owner};

/// An object's security state before svirt changed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Original {
    /// The path it was reached by, for humans (restoration goes by the fd, never this path).
    #[serde(with = "path_bytes")]
    pub path: PathBuf,
    /// The `security.selinux` xattr bytes as read (None: the object had none).
    pub selinux_label: Option<Vec<u8>>,
    /// The `security.SMACK64` xattr bytes as read (None: the object had none, or nobody
    /// read it: a record made before SMACK joined, or by a model that does not read it).
    /// Absent from records written before svirt had SMACK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smack_label: Option<Vec<u8>>,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Mode bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// The object's identity, to detect that the inode was replaced.
    pub identity: ObjectIdentity,
    /// Per security model (`selinux`, `dac`, …) flags the drivers define, e.g. which
    /// attributes that model changed and must restore. Merged (bitwise or) when guests join.
    pub model_flags: BTreeMap<String, u32>,
}

/// The stored record: the original and the guests currently using the object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginalRecord {
    /// The original state (from the first guest that recorded it).
    pub original: Original,
    /// The guests using the object; the reference count is their number.
    pub owners: BTreeSet<String>,
}

/// What [`Store::record_original_if_absent`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// No record existed: `value` is now the original and `owner` its only user.
    Recorded,
    /// Another guest recorded the object first: `owner` was added; `original` is the stored
    /// (true) original, which is what must eventually be restored.
    Joined {
        /// The stored original (with merged model flags).
        original: Original,
        /// Number of owners now.
        owners: usize,
    },
    /// `owner` already held this record (e.g. a start retried after a crash); nothing changed.
    AlreadyOwner {
        /// The stored original.
        original: Original,
    },
    /// The record described an earlier object at the same (dev, ino) (deleted and replaced):
    /// it was replaced by `value` with `owner` as its only user.
    ReplacedStale {
        /// The discarded record.
        stale: OriginalRecord,
    },
}

fn encode(rec: &OriginalRecord) -> Result<Vec<u8>> {
    serde_json::to_vec(rec).map_err(Error::Encode)
}

fn decode(key: ObjectKey, bytes: &[u8]) -> Result<OriginalRecord> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        table: "originals",
        key: format!("{}:{}", key.dev, key.ino),
        reason: e.to_string(),
    })
}

type OriginalsTable<'t> = redb::Table<'t, (u64, u64), &'static [u8]>;
type OwnersTable<'t> = redb::Table<'t, (&'static str, u64, u64), ()>;

/// One object's record-if-absent inside an open write transaction.
fn record_one(
    table: &mut OriginalsTable<'_>,
    index: &mut OwnersTable<'_>,
    key: ObjectKey,
    value: &Original,
    owner: &str,
) -> Result<RecordOutcome> {
    let k = (key.dev, key.ino);
    let existing = match table.get(k)? {
        Some(v) => Some(decode(key, v.value())?),
        None => None,
    };
    let fresh = || OriginalRecord {
        original: value.clone(),
        owners: BTreeSet::from([owner.to_string()]),
    };
    let (record, outcome) = match existing {
        None => (fresh(), RecordOutcome::Recorded),
        Some(old) if !old.original.identity.same_object(&value.identity) => {
            for o in &old.owners {
                index.remove((o.as_str(), key.dev, key.ino))?;
            }
            (fresh(), RecordOutcome::ReplacedStale { stale: old })
        }
        Some(mut rec) => {
            let mut changed = false;
            let model = owner.split_once('/').map_or("", |(m, _)| m);
            let first_of_model = !model.is_empty()
                && !rec.owners.contains(owner)
                && !rec
                    .owners
                    .iter()
                    .any(|o| o.split_once('/').map(|(m, _)| m) == Some(model));
            if first_of_model {
                // Users of other models kept the record while this model had none: this
                // model's part must describe the object as this user finds it (an admin may
                // have changed it since, or the model's earlier users restored it), and its
                // flags start from this user's, not or-ed into a departed user's.
                match model {
                    "selinux" => rec.original.selinux_label = value.selinux_label.clone(),
                    "smack" => rec.original.smack_label = value.smack_label.clone(),
                    "dac" => {
                        rec.original.uid = value.uid;
                        rec.original.gid = value.gid;
                        rec.original.mode = value.mode;
                    }
                    _ => {}
                }
                let prefix = format!("{model}.");
                rec.original
                    .model_flags
                    .retain(|k, _| k != model && !k.starts_with(&prefix));
                changed = true;
            }
            for (model, flags) in &value.model_flags {
                let f = rec.original.model_flags.entry(model.clone()).or_insert(0);
                changed |= *f | flags != *f;
                *f |= flags;
            }
            if rec.owners.contains(owner) && !changed {
                return Ok(RecordOutcome::AlreadyOwner {
                    original: rec.original,
                });
            }
            let outcome = if rec.owners.insert(owner.to_string()) {
                RecordOutcome::Joined {
                    original: rec.original.clone(),
                    owners: rec.owners.len(),
                }
            } else {
                RecordOutcome::AlreadyOwner {
                    original: rec.original.clone(),
                }
            };
            (rec, outcome)
        }
    };
    table.insert(k, encode(&record)?.as_slice())?;
    index.insert((owner, key.dev, key.ino), ())?;
    Ok(outcome)
}

impl Store {
    /// Records `value` as the original state of `key` unless a record exists, and adds `owner`
    /// to its users. Committed durably before returning, so a crash after the caller's first
    /// change still finds the original.
    pub fn record_original_if_absent(
        &self,
        key: ObjectKey,
        value: &Original,
        owner: &str,
    ) -> Result<RecordOutcome> {
        check_owner(owner)?;
        self.write(|txn| {
            let mut table = txn.open_table(ORIGINALS)?;
            let mut index = txn.open_table(ORIGINAL_OWNERS)?;
            record_one(&mut table, &mut index, key, value, owner)
        })
    }

    /// [`Self::record_original_if_absent`] for many objects in ONE transaction, committed
    /// durably once before returning: all are recorded, or (on error) none. The outcomes
    /// are in the order of `items`. A key may appear more than once; later entries see the
    /// earlier ones (their model flags are merged, the first value stays the original).
    ///
    /// This is what a driver changing N objects calls before its first change: one fsync
    /// instead of N, and the rule "the original is durable before the object changes" holds
    /// for every object of the batch.
    pub fn record_originals_if_absent_many(
        &self,
        items: &[(ObjectKey, Original)],
        owner: &str,
    ) -> Result<Vec<RecordOutcome>> {
        check_owner(owner)?;
        if items.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|txn| {
            let mut table = txn.open_table(ORIGINALS)?;
            let mut index = txn.open_table(ORIGINAL_OWNERS)?;
            items
                .iter()
                .map(|(key, value)| record_one(&mut table, &mut index, *key, value, owner))
                .collect()
        })
    }

    /// Removes `owner` from the object's users. Returns the original when that was the last
    /// user (the record is then deleted and the caller restores it); None when other users
    /// remain, or when there is no record or `owner` was not a user (already released).
    pub fn release_original(&self, key: ObjectKey, owner: &str) -> Result<Option<Original>> {
        self.release_original_clearing(key, owner, &[])
    }

    /// [`Self::release_original`] that, when other users remain, also removes the
    /// `model_flags` entries named in `clear` from the record, in the same transaction. For a
    /// model whose last user of the object is `owner`: its flags describe changes that are
    /// undone now, and left in place they would be or-ed into the flags of that model's next
    /// user of the record.
    pub fn release_original_clearing(
        &self,
        key: ObjectKey,
        owner: &str,
        clear: &[&str],
    ) -> Result<Option<Original>> {
        self.write(|txn| {
            let mut table = txn.open_table(ORIGINALS)?;
            let mut index = txn.open_table(ORIGINAL_OWNERS)?;
            let k = (key.dev, key.ino);
            let mut rec = match table.get(k)? {
                Some(v) => decode(key, v.value())?,
                None => return Ok(None),
            };
            if !rec.owners.remove(owner) {
                return Ok(None);
            }
            index.remove((owner, key.dev, key.ino))?;
            if rec.owners.is_empty() {
                table.remove(k)?;
                Ok(Some(rec.original))
            } else {
                for m in clear {
                    rec.original.model_flags.remove(*m);
                }
                table.insert(k, encode(&rec)?.as_slice())?;
                Ok(None)
            }
        })
    }

    /// Sets one model's flags on an existing record (bitwise or with `flags`); false if absent.
    pub fn add_original_model_flags(
        &self,
        key: ObjectKey,
        model: &str,
        flags: u32,
    ) -> Result<bool> {
        self.write(|txn| {
            let mut table = txn.open_table(ORIGINALS)?;
            let k = (key.dev, key.ino);
            let mut rec = match table.get(k)? {
                Some(v) => decode(key, v.value())?,
                None => return Ok(false),
            };
            *rec.original
                .model_flags
                .entry(model.to_string())
                .or_insert(0) |= flags;
            table.insert(k, encode(&rec)?.as_slice())?;
            Ok(true)
        })
    }

    /// The record of one object.
    pub fn get_original(&self, key: ObjectKey) -> Result<Option<OriginalRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ORIGINALS)?;
        let row = table.get((key.dev, key.ino))?;
        row.map(|v| decode(key, v.value())).transpose()
    }

    /// Every record (for crash recovery: what was changed and must be restored).
    pub fn list_originals(&self) -> Result<Vec<(ObjectKey, OriginalRecord)>> {
        self.list_by_object(ORIGINALS, decode)
    }

    /// Every row of a table keyed by object (originals, claims), decoded, in key order.
    pub(crate) fn list_by_object<T>(
        &self,
        def: redb::TableDefinition<'_, (u64, u64), &[u8]>,
        decode: fn(ObjectKey, &[u8]) -> Result<T>,
    ) -> Result<Vec<(ObjectKey, T)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(def)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let (dev, ino) = k.value();
            let key = ObjectKey { dev, ino };
            out.push((key, decode(key, v.value())?));
        }
        Ok(out)
    }

    /// The records `owner` is a user of (what to release when that guest stops).
    pub fn originals_for_owner(&self, owner: &str) -> Result<Vec<(ObjectKey, OriginalRecord)>> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(ORIGINAL_OWNERS)?;
        let table = txn.open_table(ORIGINALS)?;
        let mut out = Vec::new();
        for row in index.range((owner, 0u64, 0u64)..)? {
            let (k, _) = row?;
            let (o, dev, ino) = k.value();
            if o != owner {
                break;
            }
            let key = ObjectKey { dev, ino };
            let rec = match table.get((dev, ino))? {
                Some(v) => decode(key, v.value())?,
                None => {
                    return Err(Error::Corrupt {
                        table: "original_owners",
                        key: format!("{owner}:{dev}:{ino}"),
                        reason: "index entry without a record".into(),
                    });
                }
            };
            out.push((key, rec));
        }
        Ok(out)
    }
}

/// Paths are bytes on Linux; JSON strings must be UTF-8, so store the bytes.
mod path_bytes {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &std::path::Path, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(p.as_os_str().as_bytes())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        let bytes = Vec::<u8>::deserialize(d)?;
        Ok(PathBuf::from(OsString::from_vec(bytes)))
    }
}

#[cfg(test)]
mod join_tests {
    use super::*;

    fn orig(uid: u32, mode: u32, label: &str, flags: &[(&str, u32)]) -> Original {
        Original {
            path: PathBuf::from("/srv/disk.img"),
            selinux_label: Some(label.as_bytes().to_vec()),
            smack_label: None,
            uid,
            gid: uid,
            mode,
            identity: ObjectIdentity {
                dev: 1,
                ino: 2,
                btime: None,
                generation: None,
                ctime: None,
            },
            model_flags: flags.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    /// A model's first user after its earlier users left (while another model kept the
    /// record) records the object as it finds it; a second user of a model joins as is.
    #[test]
    fn first_user_of_a_model_records_its_part_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let k = ObjectKey { dev: 1, ino: 2 };
        store
            .record_original_if_absent(k, &orig(0, 0o644, "a_t", &[("dac", 3)]), "dac/a")
            .unwrap();
        store
            .record_original_if_absent(k, &orig(0, 0o644, "a_t", &[("selinux", 1)]), "selinux/s")
            .unwrap();
        store.release_original_clearing(k, "dac/a", &[]).unwrap();
        // An admin changed owner and mode meanwhile; guest c (DAC) finds 1000 0600.
        store
            .record_original_if_absent(
                k,
                &orig(1000, 0o600, "b_t", &[("dac", 1), ("dac.acl_gid", 7)]),
                "dac/c",
            )
            .unwrap();
        let r = store.get_original(k).unwrap().unwrap();
        assert_eq!((r.original.uid, r.original.mode), (1000, 0o600));
        assert_eq!(
            r.original.model_flags.get("dac"),
            Some(&1),
            "not or-ed into 3"
        );
        assert_eq!(r.original.model_flags.get("dac.acl_gid"), Some(&7));
        assert_eq!(
            r.original.selinux_label.as_deref(),
            Some(&b"a_t"[..]),
            "the other model's part is kept"
        );
        // A second DAC user joins as the record is.
        store
            .record_original_if_absent(k, &orig(5, 0o777, "c_t", &[("dac", 1)]), "dac/d")
            .unwrap();
        let r = store.get_original(k).unwrap().unwrap();
        assert_eq!((r.original.uid, r.original.mode), (1000, 0o600));
    }

    /// A model's flags go with its last user when others remain; other flags and users stay.
    #[test]
    fn release_clearing_removes_the_named_flags_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = ObjectKey { dev: 1, ino: 9 };
        let ident = ObjectIdentity {
            dev: 1,
            ino: 9,
            btime: None,
            generation: None,
            ctime: None,
        };
        let orig = |flags: &[(&str, u32)]| Original {
            path: PathBuf::from("/dev/kvm"),
            selinux_label: None,
            smack_label: None,
            uid: 0,
            gid: 0,
            mode: 0o600,
            identity: ident,
            model_flags: flags.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        };
        store
            .record_original_if_absent(key, &orig(&[("dac", 6), ("dac.acl_gid", 993)]), "dac/a")
            .unwrap();
        store
            .record_original_if_absent(key, &orig(&[("selinux", 1)]), "selinux/b")
            .unwrap();
        assert_eq!(
            store
                .release_original_clearing(key, "dac/a", &["dac", "dac.acl_gid"])
                .unwrap(),
            None
        );
        let rec = store.get_original(key).unwrap().unwrap();
        assert_eq!(
            rec.original.model_flags,
            orig(&[("selinux", 1)]).model_flags
        );
        assert_eq!(rec.owners, BTreeSet::from(["selinux/b".to_string()]));
        // The last user: the record goes, with what it held.
        let last = store
            .release_original_clearing(key, "selinux/b", &["selinux"])
            .unwrap();
        assert_eq!(last.map(|o| o.model_flags.len()), Some(1));
        assert_eq!(store.get_original(key).unwrap(), None);
    }
}
