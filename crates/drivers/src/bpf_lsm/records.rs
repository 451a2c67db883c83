//! What each guest labeled in the BPF maps: one file per guest under
//! `<state>/bpf-lsm/`, written durably before the maps change (intent first), removed once
//! its labels are gone. A restore and the open's recovery go by these files alone, never
//! by what the maps happen to hold.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use svirt_bpf::InodeKey;

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
    dir: PathBuf,
}

fn hex(name: &str) -> String {
    name.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

impl Records {
    pub(crate) fn new(dir: PathBuf) -> Records {
        Records { dir }
    }

    fn path(&self, guest: &str) -> PathBuf {
        self.dir.join(format!("{}.json", hex(guest)))
    }

    fn read(&self, path: &Path) -> io::Result<Record> {
        let text = fs::read(path)?;
        serde_json::from_slice(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }

    /// The objects recorded for `guest` (none when it has no record).
    pub(crate) fn keys(&self, guest: &str) -> io::Result<Vec<InodeKey>> {
        match self.read(&self.path(guest)) {
            Ok(r) => Ok(r
                .objects
                .iter()
                .map(|[dev, ino]| InodeKey {
                    dev: *dev,
                    ino: *ino,
                })
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Adds `keys` to `guest`'s record, durably (a new file, synced, renamed over the old,
    /// the directory synced), before the caller labels them.
    pub(crate) fn add(&self, guest: &str, keys: &[InodeKey]) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
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
        let path = self.path(guest);
        let tmp = path.with_extension("tmp");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(&rec).map_err(io::Error::other)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(&self.dir)?.sync_all()
    }

    /// Removes `guest`'s record.
    pub(crate) fn remove(&self, guest: &str) -> io::Result<()> {
        match fs::remove_file(self.path(guest)) {
            Ok(()) => fs::File::open(&self.dir)?.sync_all(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every guest with a record.
    pub(crate) fn guests(&self) -> io::Result<Vec<String>> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for ent in rd {
            let name = ent?.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let Some(g) = unhex(stem) {
                out.push(g);
            }
        }
        out.sort();
        Ok(out)
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
