//! UEFI firmware for `<os firmware='efi'>`, as libvirt fills it in: the code and the
//! variable-store template come from the host's firmware descriptors
//! (`/usr/share/qemu/firmware/*.json`, Debian's `ovmf` package), and each guest gets its
//! own variable store, copied from the template into svirt's NVRAM directory the first time
//! and kept across starts (the guest's boot entries live there).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;
use svirt_domain::{Domain, Loader, LoaderType, Nvram};

use crate::error::{ManagerError, Result};

/// Where firmware descriptors live, below the host root.
const DESCRIPTORS: &str = "usr/share/qemu/firmware";

/// The UEFI code and variable-store template a descriptor maps to flash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UefiFirmware {
    /// The code (read-only flash).
    pub code: PathBuf,
    /// The pristine variable store each guest's is copied from.
    pub vars_template: PathBuf,
    /// The descriptor it came from.
    pub descriptor: PathBuf,
}

/// The first descriptor (in file-name order, as QEMU's specification orders them) for
/// UEFI on x86_64 mapped to flash, without Secure Boot (which needs SMM) or enrolled keys.
pub fn find_uefi(root: &Path) -> Result<UefiFirmware> {
    let dir = root.join(DESCRIPTORS);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| ManagerError::io("read firmware descriptors in", &dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let has = |key: &str, want: &str| {
            v[key]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(want)))
        };
        let x86 = v["targets"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["architecture"].as_str() == Some("x86_64"))
        });
        if !has("interface-types", "uefi")
            || !x86
            || v["mapping"]["device"].as_str() != Some("flash")
            || has("features", "secure-boot")
            || has("features", "enrolled-keys")
            || has("features", "requires-smm")
        {
            continue;
        }
        let (Some(code), Some(vars)) = (
            v["mapping"]["executable"]["filename"].as_str(),
            v["mapping"]["nvram-template"]["filename"].as_str(),
        ) else {
            continue;
        };
        return Ok(UefiFirmware {
            code: PathBuf::from(code),
            vars_template: PathBuf::from(vars),
            descriptor: f,
        });
    }
    Err(ManagerError::Domain(format!(
        "firmware='efi': no UEFI firmware for x86_64 without Secure Boot is described in {} \
         (apt-get install ovmf)",
        dir.display()
    )))
}

/// Fills in what `<os firmware='efi'>` leaves out (the code as read-only pflash, a
/// variable store `<nvram_dir>/<name>_VARS.fd` from the template) and makes a missing
/// variable store from its template. Returns the file it created, if any (a failed start
/// removes it again). A missing store elsewhere than `nvram_dir` is refused: svirt writes
/// no file into a directory it does not own.
pub fn fill_in(domain: &mut Domain, root: &Path, nvram_dir: &Path) -> Result<Option<PathBuf>> {
    if domain.os.firmware_efi && (domain.os.loader.is_none() || domain.os.nvram.is_none()) {
        let fw = find_uefi(root)?;
        if domain.os.loader.is_none() {
            domain.os.loader = Some(Loader {
                path: fw.code.clone(),
                readonly: true,
                loader_type: Some(LoaderType::Pflash),
            });
        }
        if domain.os.nvram.is_none() {
            domain.os.nvram = Some(Nvram {
                path: nvram_dir.join(format!("{}_VARS.fd", domain.name)),
                template: Some(fw.vars_template.clone()),
            });
        }
    }
    let Some(Nvram {
        path,
        template: Some(template),
    }) = &domain.os.nvram
    else {
        return Ok(None);
    };
    if std::fs::symlink_metadata(path).is_ok() {
        return Ok(None);
    }
    if path.parent() != Some(nvram_dir) {
        return Err(ManagerError::Domain(format!(
            "nvram {}: does not exist, and svirt copies a template only into its own NVRAM \
             directory {} (create the store, or leave out <nvram> to get one there)",
            path.display(),
            nvram_dir.display()
        )));
    }
    copy_template(template, path, nvram_dir)?;
    Ok(Some(path.clone()))
}

/// Copies `template` to the new file `dest` in `dir` (root's, 0711: a guest's uid may
/// reach its own store by name, but list nothing; the store itself 0600 until a driver
/// hands it to the guest). Never through a link; never over an existing file.
fn copy_template(template: &Path, dest: &Path, dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir)
        .map_err(|e| ManagerError::io("create", dir, e))?;
    let bytes = std::fs::read(template).map_err(|e| ManagerError::io("read", template, e))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dest)
        .map_err(|e| ManagerError::io("create", dest, e))?;
    let written = f.write_all(&bytes).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(dest);
        return Err(ManagerError::io("write", dest, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn root_with(descriptors: &[(&str, &str)]) -> tempfile::TempDir {
        let r = tempfile::tempdir().unwrap();
        let d = r.path().join(DESCRIPTORS);
        std::fs::create_dir_all(&d).unwrap();
        for (name, text) in descriptors {
            std::fs::write(d.join(name), text).unwrap();
        }
        r
    }

    fn descriptor(code: &str, features: &str) -> String {
        format!(
            r#"{{"interface-types":["uefi"],"mapping":{{"device":"flash","executable":{{"filename":"{code}"}},"nvram-template":{{"filename":"{code}.vars"}}}},"targets":[{{"architecture":"x86_64","machines":["pc-q35-*"]}}],"features":[{features}]}}"#
        )
    }

    /// The first descriptor in name order that fits, skipping Secure Boot and SMM ones
    /// and broken files; none fitting is an error naming the directory.
    #[test]
    fn descriptors_are_chosen_in_order_without_secure_boot() {
        let r = root_with(&[
            ("10-broken.json", "{not json"),
            (
                "20-secure.json",
                &descriptor("/s", r#""secure-boot","requires-smm""#),
            ),
            ("30-plain.json", &descriptor("/p", r#""acpi-s3""#)),
            ("40-other.json", &descriptor("/o", "")),
        ]);
        let fw = find_uefi(r.path()).unwrap();
        assert_eq!(fw.code, Path::new("/p"));
        assert_eq!(fw.vars_template, Path::new("/p.vars"));
        let none = root_with(&[("20-secure.json", &descriptor("/s", r#""secure-boot""#))]);
        let e = find_uefi(none.path()).unwrap_err().to_string();
        assert!(e.contains("ovmf"), "{e}");
    }

    /// On this host: Debian's descriptors name files that exist.
    #[test]
    fn this_hosts_ovmf_is_found() {
        let fw = find_uefi(Path::new("/")).unwrap();
        assert!(fw.code.is_file(), "{fw:?}");
        assert!(fw.vars_template.is_file(), "{fw:?}");
    }
}
