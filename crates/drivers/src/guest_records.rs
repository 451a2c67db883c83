//! Per-guest record files of a driver that keeps its records beside the ledger
//! (`<state>/<model>/<hex of the guest's name>.json`): written durably (a new file, synced,
//! renamed over the old, the directory synced) before the caller changes the host, removed
//! once what they describe is undone. A restore and the open's recovery go by these files.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// One driver's record directory.
#[derive(Debug, Clone)]
pub(crate) struct GuestRecords {
    dir: PathBuf,
}

/// Any guest name as a safe file name.
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

impl GuestRecords {
    pub(crate) fn new(dir: PathBuf) -> GuestRecords {
        GuestRecords { dir }
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, guest: &str) -> PathBuf {
        self.dir.join(format!("{}.json", hex(guest)))
    }

    /// `guest`'s record, `None` when it has none.
    pub(crate) fn read<T: DeserializeOwned>(&self, guest: &str) -> io::Result<Option<T>> {
        let path = self.path(guest);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&text).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }

    /// Writes `guest`'s record durably.
    pub(crate) fn write<T: Serialize>(&self, guest: &str, rec: &T) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let path = self.path(guest);
        let tmp = path.with_extension("tmp");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(rec).map_err(io::Error::other)?)?;
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

    /// Every guest with a record, sorted.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_per_guest_files_under_any_name() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let r = GuestRecords::new(tmp.path().join("m"));
        assert_eq!(r.read::<Vec<u32>>("x").expect("read"), None);
        r.write("a/../b x.pid", &vec![1u32, 2]).expect("write");
        r.write("other", &vec![3u32]).expect("write");
        assert_eq!(
            r.read::<Vec<u32>>("a/../b x.pid").expect("read"),
            Some(vec![1, 2])
        );
        assert_eq!(r.guests().expect("guests"), vec!["a/../b x.pid", "other"]);
        r.remove("a/../b x.pid").expect("remove");
        r.remove("a/../b x.pid").expect("remove twice");
        assert_eq!(r.guests().expect("guests"), vec!["other"]);
        std::fs::write(r.dir().join("6f.json"), b"not json").expect("write");
        assert!(
            r.read::<Vec<u32>>("o").is_err(),
            "a damaged record is an error"
        );
    }
}
