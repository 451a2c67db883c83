//! Claims: which live guest uses which object, and how, so that a private read-write object
//! is never handed to two guests at once (issue 11, class 4).
//!
//! A claim is made before any security driver changes anything, for every object of a plan
//! (disks, backing files, CD-ROMs, shares, device nodes…), by every model that changes
//! objects (DAC, the SELinux relabel engine). The check and the insert are one write
//! transaction, and redb runs one write transaction at a time: two starts racing for one
//! disk cannot both pass. Claims are keyed like originals, by `(dev, ino)`, with the birth
//! time telling a replaced file from the claimed one (a stale claim is dropped).
//!
//! Rules, between users of different guests:
//! - an [`ClaimUse::Exclusive`] user (plan sharing `Private`, access read-write) excludes
//!   every other guest's use of the object, whatever it is;
//! - [`ClaimUse::Shared`] (`<shareable/>`) and [`ClaimUse::Read`] (read-only content,
//!   `<readonly/>`, backing files, kernels) users coexist.
//!
//! The same rules hold between an object and a tree containing it (a filesystem share, TPM
//! state): an object whose directories above it (by identity) include another guest's
//! claimed tree, and a tree under whose path another guest's claimed object lies.
//!
//! Users are store owners (`<model>/<guest>`, as for originals); the guest is the part after
//! the first `/`. One guest's users under several models never conflict with each other.

use std::collections::BTreeMap;
use std::path::PathBuf;

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::object::{ObjectIdentity, ObjectKey};
use crate::store::{CLAIM_OWNERS, CLAIMS, Store, check_owner};

/// How a guest uses an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClaimUse {
    /// Read-only content: any number of guests may read it, none may hold it privately.
    Read,
    /// `<shareable/>`: several guests read and write it.
    Shared,
    /// Private read-write: this guest alone.
    Exclusive,
}

impl ClaimUse {
    /// How the use is named in errors.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimUse::Read => "read-only",
            ClaimUse::Shared => "shared read-write",
            ClaimUse::Exclusive => "private read-write",
        }
    }
}

/// One object a guest is about to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimItem {
    /// The opened object's (dev, ino).
    pub key: ObjectKey,
    /// Its identity (birth time), to tell a replaced file from the claimed one.
    pub identity: ObjectIdentity,
    /// The path it was reached by (for errors and humans).
    pub path: PathBuf,
    /// The use.
    pub usage: ClaimUse,
    /// Whether the whole tree below the object is used (a filesystem share, TPM state).
    pub recursive: bool,
    /// The directories above the object, as opened now (nearest first): an object inside
    /// another guest's claimed tree conflicts with that tree's use.
    pub ancestors: Vec<ObjectIdentity>,
}

/// The stored claim of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// The object's identity when first claimed.
    pub identity: ObjectIdentity,
    /// The path of its first claim, for humans.
    pub path: PathBuf,
    /// Users (`<model>/<guest>`) and their use.
    pub users: BTreeMap<String, ClaimUse>,
    /// Users that use the whole tree below the object.
    #[serde(default)]
    pub trees: std::collections::BTreeSet<String>,
}

/// The refusal of `want` (use of the object at `path`) against `other`'s use `used`, if the
/// two conflict; `how` says how the two objects relate.
fn conflict(
    path: &std::path::Path,
    want: ClaimUse,
    other: &str,
    used: ClaimUse,
    how: &str,
) -> Option<Error> {
    if want != ClaimUse::Exclusive && used != ClaimUse::Exclusive {
        return None;
    }
    let rule = if used == ClaimUse::Exclusive {
        format!(
            "guest {} holds {how} {}; no other guest may use it",
            guest_of(other),
            used.as_str()
        )
    } else {
        format!(
            "a {} object must not be in use by another guest, and guest {} uses {how} {}",
            want.as_str(),
            guest_of(other),
            used.as_str()
        )
    };
    Some(Error::Claimed {
        path: path.to_path_buf(),
        other: guest_of(other).to_string(),
        rule,
    })
}

/// Whether `inner` lies strictly below `outer` (component-wise).
fn below(inner: &std::path::Path, outer: &std::path::Path) -> bool {
    inner != outer && inner.starts_with(outer)
}

/// The guest of a store owner (`<model>/<guest>`, or the owner itself without a `/`).
fn guest_of(owner: &str) -> &str {
    owner.split_once('/').map_or(owner, |(_, g)| g)
}

fn decode(key: ObjectKey, bytes: &[u8]) -> Result<ClaimRecord> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        table: "claims",
        key: format!("{}:{}", key.dev, key.ino),
        reason: e.to_string(),
    })
}

impl Store {
    /// Claims every object of `items` for `owner`, or none: when another guest's use
    /// conflicts (see the module docs), nothing is written and [`Error::Claimed`] names the
    /// object, the other guest and the rule. Idempotent for the same owner (its use becomes
    /// the strongest asked). Visible to every later call at once; durable with the next
    /// durable commit.
    pub fn claim_objects(&self, owner: &str, items: &[ClaimItem]) -> Result<()> {
        check_owner(owner)?;
        let me = guest_of(owner);
        // An object named twice by one plan: its strongest use.
        let mut want: BTreeMap<ObjectKey, &ClaimItem> = BTreeMap::new();
        for it in items {
            want.entry(it.key)
                .and_modify(|cur| {
                    if it.usage > cur.usage {
                        *cur = it;
                    }
                })
                .or_insert(it);
        }
        // Not fsynced: visible at once to every start of this process (the only writer),
        // and made durable by the next durable commit (the drivers' originals, written
        // before any change). A claim lost in a crash is harmless: its guest is dead, and
        // the objects' records (durable before any change) drive the recovery.
        self.write_maybe_deferred(false, |txn| {
            let mut table = txn.open_table(CLAIMS)?;
            let mut index = txn.open_table(CLAIM_OWNERS)?;
            for (key, it) in want {
                let k = (key.dev, key.ino);
                let existing = match table.get(k)? {
                    Some(v) => Some(decode(key, v.value())?),
                    None => None,
                };
                let mut rec = match existing {
                    Some(r) if r.identity.same_object(&it.identity) => r,
                    stale => {
                        // A claim of an earlier object at this inode: its users are gone.
                        if let Some(r) = stale {
                            for o in r.users.keys() {
                                index.remove((o.as_str(), key.dev, key.ino))?;
                            }
                        }
                        ClaimRecord {
                            identity: it.identity,
                            path: it.path.clone(),
                            users: BTreeMap::new(),
                            trees: Default::default(),
                        }
                    }
                };
                for (other, &used) in &rec.users {
                    if guest_of(other) == me {
                        continue;
                    }
                    if let Some(e) = conflict(&it.path, it.usage, other, used, "it") {
                        return Err(e);
                    }
                }
                // Inside another guest's tree (by identity: the directories above it as
                // opened now, whatever the path's spelling).
                for a in &it.ancestors {
                    let akey = ObjectKey {
                        dev: a.dev,
                        ino: a.ino,
                    };
                    let Some(v) = table.get((a.dev, a.ino))? else {
                        continue;
                    };
                    let arec = decode(akey, v.value())?;
                    if !arec.identity.same_object(a) {
                        continue;
                    }
                    for other in &arec.trees {
                        let used = arec.users.get(other).copied().unwrap_or(ClaimUse::Read);
                        if guest_of(other) == me {
                            continue;
                        }
                        let how = format!("the tree {} containing it", arec.path.display());
                        if let Some(e) = conflict(&it.path, it.usage, other, used, &how) {
                            return Err(e);
                        }
                    }
                }
                // A tree containing objects other guests use (by the paths they were
                // claimed at: the planner's resolved paths).
                if it.recursive {
                    for row in table.iter()? {
                        let (k, v) = row?;
                        let (dev, ino) = k.value();
                        let inner = decode(ObjectKey { dev, ino }, v.value())?;
                        if !below(&inner.path, &it.path) {
                            continue;
                        }
                        for (other, &used) in &inner.users {
                            if guest_of(other) == me {
                                continue;
                            }
                            let how = format!("{} inside it", inner.path.display());
                            if let Some(e) = conflict(&it.path, it.usage, other, used, &how) {
                                return Err(e);
                            }
                        }
                    }
                }
                let u = rec.users.entry(owner.to_string()).or_insert(it.usage);
                if it.usage > *u {
                    *u = it.usage;
                }
                if it.recursive {
                    rec.trees.insert(owner.to_string());
                }
                let bytes = serde_json::to_vec(&rec).map_err(Error::Encode)?;
                table.insert(k, bytes.as_slice())?;
                index.insert((owner, key.dev, key.ino), ())?;
            }
            Ok(())
        })
    }

    /// Drops every claim of `owner`; returns how many there were. Not fsynced (durable with
    /// the next durable commit): a release lost in a crash leaves a dead guest's claims,
    /// which recovery drops.
    pub fn release_claims(&self, owner: &str) -> Result<usize> {
        self.write_maybe_deferred(false, |txn| {
            let mut table = txn.open_table(CLAIMS)?;
            let mut index = txn.open_table(CLAIM_OWNERS)?;
            let keys: Vec<(u64, u64)> = {
                let range = index.range((owner, 0u64, 0u64)..=(owner, u64::MAX, u64::MAX))?;
                let mut out = Vec::new();
                for row in range {
                    let (k, _) = row?;
                    let (_, dev, ino) = k.value();
                    out.push((dev, ino));
                }
                out
            };
            for &(dev, ino) in &keys {
                index.remove((owner, dev, ino))?;
                let key = ObjectKey { dev, ino };
                let rec = match table.get((dev, ino))? {
                    Some(v) => Some(decode(key, v.value())?),
                    None => None,
                };
                if let Some(mut rec) = rec {
                    rec.users.remove(owner);
                    rec.trees.remove(owner);
                    if rec.users.is_empty() {
                        table.remove((dev, ino))?;
                    } else {
                        let bytes = serde_json::to_vec(&rec).map_err(Error::Encode)?;
                        table.insert((dev, ino), bytes.as_slice())?;
                    }
                }
            }
            Ok(keys.len())
        })
    }

    /// Every claim, in key order.
    pub fn list_claims(&self) -> Result<Vec<(ObjectKey, ClaimRecord)>> {
        self.list_by_object(CLAIMS, decode)
    }

    /// The claim of one object, if any.
    pub fn get_claim(&self, key: ObjectKey) -> Result<Option<ClaimRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CLAIMS)?;
        Ok(match table.get((key.dev, key.ino))? {
            Some(v) => Some(decode(key, v.value())?),
            None => None,
        })
    }
}
