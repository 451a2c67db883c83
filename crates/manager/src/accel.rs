//! Choosing the accelerator: KVM only when a real QEMU run with it succeeds cleanly.
//!
//! `/dev/kvm` can exist and `KVM_CREATE_VM` succeed while guests still fail (nested KVM
//! without the CPUID features QEMU's default CPU wants, MSR errors). The probe runs QEMU
//! once with `-accel kvm` on a real machine type, stopped (`-S`), asks `query-kvm`, and
//! treats any "host doesn't support requested feature" warning as unreliable KVM.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The probe's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelProbe {
    /// `kvm` or `tcg`.
    pub accel: &'static str,
    /// Why.
    pub reason: String,
}

fn tcg(reason: String) -> AccelProbe {
    AccelProbe {
        accel: "tcg",
        reason,
    }
}

/// Probes KVM with `qemu` (see the module documentation). `dev_kvm` is normally `/dev/kvm`.
pub fn probe_kvm(qemu: &Path, dev_kvm: &Path) -> AccelProbe {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_kvm)
    {
        return tcg(format!("{} not usable ({e}): using TCG", dev_kvm.display()));
    }
    let child = Command::new(qemu)
        .args([
            "-accel",
            "kvm",
            "-machine",
            "pc",
            "-m",
            "16",
            "-nodefaults",
            "-display",
            "none",
            "-no-user-config",
            "-S",
            "-qmp",
            "stdio",
        ])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return tcg(format!(
                "cannot run {} to probe KVM ({e}): using TCG",
                qemu.display()
            ));
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(
            b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-kvm\"}\n{\"execute\":\"quit\"}\n",
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let Some(status) = status else {
        return tcg("QEMU with -accel kvm hung for 10 s: KVM unreliable, using TCG".into());
    };
    let first_err = err.lines().next().unwrap_or("").trim().to_string();
    if !status.success() {
        return tcg(format!(
            "QEMU with -accel kvm failed ({status}: {first_err}): using TCG"
        ));
    }
    if !out.contains("\"enabled\": true") {
        return tcg("query-kvm did not report KVM enabled: using TCG".into());
    }
    if let Some(w) = err
        .lines()
        .find(|l| l.contains("host doesn't support requested feature") || l.contains("MSR"))
    {
        return tcg(format!(
            "KVM starts but lacks CPU features QEMU expects ({}): unreliable, using TCG",
            w.trim()
        ));
    }
    AccelProbe {
        accel: "kvm",
        reason: "a probe VM started under KVM cleanly".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_device_means_tcg_and_real_probe_reports_a_reason() {
        let p = probe_kvm(
            Path::new("/nonexistent-qemu"),
            Path::new("/nonexistent/kvm"),
        );
        assert_eq!(p.accel, "tcg");
        assert!(p.reason.contains("/nonexistent/kvm"));
        let Some(qemu) = std::env::var("PATH").ok().and_then(|p| {
            p.split(':')
                .map(|d| Path::new(d).join("qemu-system-x86_64"))
                .find(|q| q.is_file())
        }) else {
            svirt_testkit::skip("qemu", "qemu-system-x86_64 not installed");
            return;
        };
        let p = probe_kvm(&qemu, Path::new("/dev/kvm"));
        eprintln!("KVM probe on this host: {} ({})", p.accel, p.reason);
        assert!(!p.reason.is_empty());
    }
}
