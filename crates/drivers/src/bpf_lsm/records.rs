//! What each guest labeled in the BPF maps: one file per guest under
//! `<state>/bpf-lsm/`, written durably before the maps change (intent first), removed once
//! its labels are gone. A restore and the open's recovery go by these files alone, never
//! by what the maps happen to hold.

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use svirt_bpf::InodeKey;

use crate::guest_records::GuestRecords;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// The guest's name (the file name is its hex encoding: any name is a safe file name).
    guest: String,
    /// Every object labeled for it, as `[dev, ino]` (the kernel's dev encoding).
    objects: Vec<[u64; 2]>,
}

/// The record directory.
#[derive(Debug, Clone)]
pub(crate) struct Records {
    files: GuestRecords,
}

impl Records {
    pub(crate) fn new(dir: PathBuf) -> Records {
        Records {
            files: GuestRecords::new(dir),
        }
    }

    /// The objects recorded for `guest` (none when it has no record).
    pub(crate) fn keys(&self, guest: &str) -> io::Result<Vec<InodeKey>> {
        Ok(self
            .files
            .read::<Record>(guest)?
            .map(|r| {
                r.objects
                    .iter()
                    .map(|[dev, ino]| InodeKey {
                        dev: *dev,
                        ino: *ino,
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Adds `keys` to `guest`'s record, durably, before the caller labels them.
    pub(crate) fn add(&self, guest: &str, keys: &[InodeKey]) -> io::Result<()> {
        let mut all: BTreeSet<[u64; 2]> = self
            .keys(guest)?
            .into_iter()
            .map(|k| [k.dev, k.ino])
            .collect();
        all.extend(keys.iter().map(|k| [k.dev, k.ino]));
        let rec = Record {
            guest: guest.to_string(),
            objects: all.into_iter().collect(),
        };
        self.files.write(guest, &rec)
    }

    /// Removes `guest`'s record.
    pub(crate) fn remove(&self, guest: &str) -> io::Result<()> {
        self.files.remove(guest)
    }

    /// Every guest with a record.
    pub(crate) fn guests(&self) -> io::Result<Vec<String>> {
        self.files.guests()
    }

    /// The objects every guest but `guest` recorded.
    pub(crate) fn held_by_others(&self, guest: &str) -> io::Result<BTreeSet<InodeKey>> {
        let mut held = BTreeSet::new();
        for g in self.guests()? {
            if g != guest {
                held.extend(self.keys(&g)?);
            }
        }
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_per_guest_durable_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = Records::new(tmp.path().join("bpf-lsm"));
        let k = |i| InodeKey { dev: 45, ino: i };
        r.add("a/../b x.pid", &[k(1), k(2)]).expect("add");
        r.add("a/../b x.pid", &[k(2), k(3)]).expect("add more");
        r.add("other", &[k(3)]).expect("add");
        assert_eq!(
            r.keys("a/../b x.pid").expect("keys"),
            vec![k(1), k(2), k(3)]
        );
        assert_eq!(r.guests().expect("guests"), vec!["a/../b x.pid", "other"]);
        assert_eq!(
            r.held_by_others("a/../b x.pid").expect("held"),
            BTreeSet::from([k(3)])
        );
        r.remove("a/../b x.pid").expect("remove");
        assert!(r.keys("a/../b x.pid").expect("keys").is_empty());
        assert_eq!(r.guests().expect("guests"), vec!["other"]);
    }
}
