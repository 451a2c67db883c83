//! The AppArmor driver: each guest's VMM runs under its own profile, generated from the
//! plan ([`super::profile`]), loaded before the VMM's exec and removed when the guest is
//! gone.
//!
//! AppArmor changes no object: nothing is labeled or recorded in the ledger. What the
//! driver keeps is the profile itself, as a file in `<state>/apparmor/` (its header names
//! the guest), so that the open's recovery can remove the profiles of guests that are gone
//! after a crash, and never one whose VMM still runs.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use svirt_domain::{Model, Plan};

use super::profile::{self, HEADER, Perms};
use crate::vmm_needs::VmmNeeds;
use crate::{
    ChildHook, DriverError, ExecContext, GuestSecurity, HookPhase, ProbeReport, RecoveryNote,
    SecurityDriver,
};

const MODEL: Model = Model::Apparmor;

/// The guest line of a profile file: `# svirt-guest: NAME`.
const GUEST_PREFIX: &str = "# svirt-guest: ";

/// Configuration of the AppArmor driver.
#[derive(Debug, Clone)]
pub struct ApparmorConfig {
    /// The host's root: `/proc` and `/sys` are read below it.
    pub root: PathBuf,
    /// Where profiles are kept while loaded (`<state>/apparmor`, root's, 0700).
    pub profile_dir: PathBuf,
    /// `apparmor_parser`.
    pub parser: PathBuf,
    /// What every VMM needs from the host.
    pub needs: VmmNeeds,
}

/// The AppArmor driver.
#[derive(Debug, Clone)]
pub struct ApparmorDriver {
    config: ApparmorConfig,
}

fn other(message: String) -> DriverError {
    DriverError::Other {
        model: MODEL,
        message,
    }
}

fn obj_err(op: &'static str, path: &Path, source: io::Error) -> DriverError {
    DriverError::Object {
        model: MODEL,
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether AppArmor is enabled on the host under `root`, and why (not).
pub fn enabled(root: &Path) -> (bool, String) {
    let param = root.join("sys/module/apparmor/parameters/enabled");
    match std::fs::read_to_string(&param) {
        Ok(v) if v.trim() == "Y" => {
            let fs = root.join("sys/kernel/security/apparmor");
            if fs.is_dir() {
                (true, format!("AppArmor enabled ({} is Y)", param.display()))
            } else {
                (
                    false,
                    format!(
                        "AppArmor enabled but {} is missing (securityfs not mounted?)",
                        fs.display()
                    ),
                )
            }
        }
        Ok(v) => (
            false,
            format!("AppArmor not enabled ({} is {})", param.display(), v.trim()),
        ),
        Err(_) => (
            false,
            format!("AppArmor not enabled (no {})", param.display()),
        ),
    }
}

/// `apparmor_parser` on `PATH`, else in `/usr/sbin` or `/sbin`.
pub fn find_parser() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("apparmor_parser"))
        .find(|p| p.is_file())
}

impl ApparmorDriver {
    /// A driver with this configuration.
    pub fn new(config: ApparmorConfig) -> Self {
        ApparmorDriver { config }
    }

    fn at(&self, abs: &str) -> PathBuf {
        self.config.root.join(abs.trim_start_matches('/'))
    }

    /// The profile file of `plan`'s guest.
    fn profile_file(&self, plan: &Plan) -> PathBuf {
        self.config.profile_dir.join(profile::profile_name(plan))
    }

    /// Runs `apparmor_parser` with `args` on `file`; its message on failure.
    fn parser(&self, args: &[&str], file: &Path) -> Result<(), String> {
        let out = Command::new(&self.config.parser)
            .args(args)
            .arg(file)
            .output()
            .map_err(|e| format!("{}: {e}", self.config.parser.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            let msg = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "{} {} {}: {}",
                self.config.parser.display(),
                args.join(" "),
                file.display(),
                msg.trim()
            ))
        }
    }

    /// Writes the profile file (0600, replacing an earlier one whole) and loads it.
    fn load(&self, file: &Path, text: &str) -> Result<(), DriverError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.config.profile_dir)
            .map_err(|e| obj_err("create", &self.config.profile_dir, e))?;
        let tmp = file.with_extension("new");
        {
            use std::io::Write;
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)
                .map_err(|e| obj_err("create", &tmp, e))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| obj_err("write", &tmp, e))?;
        }
        std::fs::rename(&tmp, file).map_err(|e| obj_err("rename", file, e))?;
        self.parser(&["--replace", "--skip-cache"], file)
            .map_err(|m| other(format!("loading profile: {m}")))
    }

    /// Removes the profile in `file` from the kernel (a profile that is not loaded is not
    /// an error) and deletes the file.
    fn unload(&self, file: &Path) -> Result<(), DriverError> {
        if !file.exists() {
            return Ok(());
        }
        if let Err(m) = self.parser(&["--remove"], file) {
            // Not loaded (a start that failed before the load, or a reboot): nothing to do.
            if !m.contains("doesn't exist") && !m.contains("does not exist") {
                return Err(other(format!("removing profile: {m}")));
            }
        }
        std::fs::remove_file(file).map_err(|e| obj_err("remove", file, e))
    }

    /// The profile files kept, with the guest each names.
    pub fn kept_profiles(&self) -> Vec<(PathBuf, Option<String>)> {
        let Ok(rd) = std::fs::read_dir(&self.config.profile_dir) else {
            return Vec::new();
        };
        let mut out: Vec<(PathBuf, Option<String>)> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("svirt-") && !n.ends_with(".new"))
            })
            .map(|p| {
                let guest = std::fs::read_to_string(&p).ok().and_then(|t| {
                    let mut lines = t.lines();
                    (lines.next() == Some(HEADER))
                        .then(|| lines.next())
                        .flatten()
                        .and_then(|l| l.strip_prefix(GUEST_PREFIX))
                        .map(str::to_string)
                });
                (p, guest)
            })
            .collect();
        out.sort();
        out
    }
}

impl SecurityDriver for ApparmorDriver {
    fn model(&self) -> Model {
        MODEL
    }

    fn probe(&self) -> ProbeReport {
        let (on, why) = enabled(&self.config.root);
        let parser_ok = Command::new(&self.config.parser)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        let (usable, reason) = match (on, parser_ok) {
            (true, true) => (true, why),
            (true, false) => (
                false,
                format!(
                    "{why}, but {} does not run (apt-get install apparmor)",
                    self.config.parser.display()
                ),
            ),
            (false, _) => (false, why),
        };
        ProbeReport {
            model: MODEL,
            usable,
            reason,
        }
    }

    fn reserve(&self, _plan: &Plan, _guest: &mut GuestSecurity) -> Result<(), DriverError> {
        // The guest's identity under AppArmor is its profile, named by its uuid.
        Ok(())
    }

    fn release(&self, _guest: &GuestSecurity) -> Result<(), DriverError> {
        Ok(())
    }

    fn set_all(&self, _plan: &Plan, _guest: &GuestSecurity) -> Result<(), DriverError> {
        // AppArmor labels no object: the profile (loaded with the exec context, in
        // `child_hooks`) is the whole of it.
        Ok(())
    }

    fn restore_all(&self, plan: &Plan, _guest: &GuestSecurity) -> Vec<DriverError> {
        self.unload(&self.profile_file(plan))
            .err()
            .into_iter()
            .collect()
    }

    fn child_hooks(
        &self,
        plan: &Plan,
        _guest: &GuestSecurity,
        exec: &ExecContext,
    ) -> Result<Vec<ChildHook>, DriverError> {
        let inherited: Vec<(PathBuf, Perms)> = exec
            .inherited
            .iter()
            .map(|p| (p.clone(), Perms::Append))
            .collect();
        let profile = profile::generate(plan, exec, &inherited, &self.config.needs)
            .map_err(|e| other(e.to_string()))?;
        self.load(&self.profile_file(plan), &profile.text)?;
        let word = format!("exec {}", profile.name);
        Ok(vec![exec_attr_hook(
            &self.at("/proc/thread-self/attr/apparmor/exec"),
            &self.at("/proc/thread-self/attr/exec"),
            &word,
        )?])
    }

    fn process_label(&self, pid: i32) -> Result<Option<String>, DriverError> {
        for p in [
            self.at(&format!("/proc/{pid}/attr/apparmor/current")),
            self.at(&format!("/proc/{pid}/attr/current")),
        ] {
            match std::fs::read(&p) {
                Ok(b) => {
                    let t = String::from_utf8_lossy(&b);
                    let t = t.trim_matches(|c: char| c == '\0' || c.is_whitespace());
                    return Ok((!t.is_empty()).then(|| t.to_string()));
                }
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::EINVAL) =>
                {
                    continue;
                }
                Err(source) => {
                    return Err(DriverError::Object {
                        model: MODEL,
                        op: "read process label",
                        path: p,
                        source,
                    });
                }
            }
        }
        Ok(None)
    }

    /// The exec attribute is written through `/proc`, which the jail does not show.
    fn hook_phase(&self) -> HookPhase {
        HookPhase::BeforeJail
    }

    /// Profiles of guests `running` says are not running: removed from the kernel and
    /// deleted. A profile whose file names no guest is left alone (not ours to judge).
    fn recover(&self, running: &dyn Fn(&str) -> bool) -> Vec<RecoveryNote> {
        let mut notes = Vec::new();
        for (file, guest) in self.kept_profiles() {
            let Some(guest) = guest else {
                continue;
            };
            if running(&guest) {
                continue;
            }
            let r = self.unload(&file);
            notes.push(RecoveryNote {
                guest: Some(guest),
                what: match &r {
                    Ok(()) => format!("removed AppArmor profile {}", file.display()),
                    Err(e) => format!("removing AppArmor profile {}: {e}", file.display()),
                },
                failed: r.is_err(),
            });
        }
        notes
    }
}

/// A child hook writing `word` (`exec svirt-<uuid>`) to the AppArmor exec attribute:
/// `primary` (`/proc/thread-self/attr/apparmor/exec`, kernels from 5.8), else `fallback`
/// (`/proc/thread-self/attr/exec`, the shared one) when the first does not exist.
/// Everything is allocated here, before the fork; the hook only makes system calls.
fn exec_attr_hook(primary: &Path, fallback: &Path, word: &str) -> Result<ChildHook, DriverError> {
    crate::proc_attr::write_hook(&[primary, fallback], word.as_bytes().to_vec()).map_err(other)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::process::CommandExt;

    fn fake_root(enabled: &str, securityfs: bool) -> tempfile::TempDir {
        let r = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(r.path().join("sys/module/apparmor/parameters")).unwrap();
        std::fs::write(
            r.path().join("sys/module/apparmor/parameters/enabled"),
            enabled,
        )
        .unwrap();
        if securityfs {
            std::fs::create_dir_all(r.path().join("sys/kernel/security/apparmor")).unwrap();
        }
        r
    }

    #[test]
    fn enabled_needs_the_parameter_and_securityfs() {
        assert!(enabled(fake_root("Y\n", true).path()).0);
        let (on, why) = enabled(fake_root("Y\n", false).path());
        assert!(!on && why.contains("securityfs"), "{why}");
        let (on, why) = enabled(fake_root("N\n", true).path());
        assert!(!on && why.contains("is N"), "{why}");
        let (on, why) = enabled(tempfile::tempdir().unwrap().path());
        assert!(!on && why.contains("no "), "{why}");
    }

    /// The hook writes `exec <profile>` to the AppArmor attribute in a real child, and
    /// falls back to the shared attribute when the AppArmor one does not exist.
    #[test]
    fn exec_hook_writes_the_profile_word_with_fallback() {
        let r = tempfile::tempdir().unwrap();
        let dir = r.path().join("attr");
        std::fs::create_dir_all(dir.join("apparmor")).unwrap();
        let (primary, fallback) = (dir.join("apparmor/exec"), dir.join("exec"));
        for (with_primary, written) in [(true, &primary), (false, &fallback)] {
            let _ = std::fs::remove_file(&primary);
            std::fs::write(&fallback, b"").unwrap();
            if with_primary {
                std::fs::write(&primary, b"").unwrap();
            }
            let hook = exec_attr_hook(&primary, &fallback, "exec svirt-ab-12").unwrap();
            let mut cmd = std::process::Command::new("/bin/true");
            // SAFETY: the hook only makes system calls on data prepared before the fork.
            unsafe {
                cmd.pre_exec(hook);
            }
            assert!(cmd.status().unwrap().success());
            assert_eq!(std::fs::read(written).unwrap(), b"exec svirt-ab-12");
        }
        // Control: neither attribute exists: the child fails (the guest must not start
        // unconfined).
        let _ = std::fs::remove_file(&primary);
        std::fs::remove_file(&fallback).unwrap();
        let hook = exec_attr_hook(&primary, &fallback, "exec svirt-x").unwrap();
        let mut cmd = std::process::Command::new("/bin/true");
        // SAFETY: as above.
        unsafe {
            cmd.pre_exec(hook);
        }
        assert!(cmd.status().is_err(), "a child without the attribute ran");
    }

    /// Kept profiles name their guests; recovery picks only the profile of a guest that
    /// is gone (not a running guest's, not a file it cannot attribute) and runs the real
    /// `apparmor_parser` to remove it. This kernel has no AppArmor: the removal fails, so
    /// the file is kept for the next open and the note says why (the lab's AppArmor
    /// scenario proves the removal on a kernel that has it).
    #[test]
    fn recovery_picks_only_profiles_of_guests_that_are_gone() {
        let Some(parser) = find_parser() else {
            svirt_testkit::skip(
                "apparmor_parser",
                "apparmor_parser missing (apt-get install apparmor)",
            );
            return;
        };
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("apparmor");
        std::fs::create_dir_all(&dir).unwrap();
        for (file, guest) in [("svirt-aa", "alive"), ("svirt-bb", "gone")] {
            let text = format!("{HEADER}\n{GUEST_PREFIX}{guest}\nprofile {file} {{}}\n");
            std::fs::write(dir.join(file), text).unwrap();
        }
        std::fs::write(dir.join("svirt-cc"), "profile hand-written {}\n").unwrap();
        let d = ApparmorDriver::new(ApparmorConfig {
            root: "/".into(),
            profile_dir: dir.clone(),
            parser,
            needs: VmmNeeds::default(),
        });
        let kept = d.kept_profiles();
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[0].1.as_deref(), Some("alive"));
        assert_eq!(kept[1].1.as_deref(), Some("gone"));
        assert_eq!(kept[2].1, None);
        let notes = d.recover(&|g| g == "alive");
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0].guest.as_deref(), Some("gone"));
        if enabled(Path::new("/")).0 {
            assert!(!notes[0].failed, "{notes:?}");
            assert!(
                !dir.join("svirt-bb").exists(),
                "a gone guest's profile kept"
            );
        } else {
            assert!(
                notes[0].failed,
                "removal cannot work without AppArmor: {notes:?}"
            );
            assert!(notes[0].what.contains("svirt-bb"), "{notes:?}");
            assert!(dir.join("svirt-bb").exists(), "kept for the next open");
        }
        assert!(
            dir.join("svirt-aa").exists(),
            "a running guest's profile removed"
        );
        assert!(
            dir.join("svirt-cc").exists(),
            "an unattributed file removed"
        );
    }
}
