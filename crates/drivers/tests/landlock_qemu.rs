//! A real VMM under the DAC + Landlock stack: QEMU (TCG) starts with the default system
//! paths, opens its own disk, serves QMP in its runtime directory, and is refused another
//! guest's disk. Skipped (loudly) when QEMU is not installed.

mod dac_support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dac_support::*;
use svirt_drivers::landlock::{LandlockConfig, LandlockDriver, kernel_abi};
use svirt_drivers::{ExecContext, GuestSecurity, SecurityDriver};

const QEMU: &str = "/usr/bin/qemu-system-x86_64";

fn qmp(sock: &Path, cmds: &[&str]) -> std::io::Result<Vec<String>> {
    let s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s;
    let mut out = Vec::new();
    let mut line = String::new();
    r.read_line(&mut line)?; // greeting
    for c in ["{\"execute\":\"qmp_capabilities\"}"].iter().chain(cmds) {
        writeln!(w, "{c}")?;
        loop {
            line.clear();
            r.read_line(&mut line)?;
            if line.is_empty() || !line.contains("\"event\"") {
                break;
            }
        }
        out.push(line.trim().to_string());
    }
    Ok(out)
}

#[test]
fn landlock_qemu_runs_confined() {
    if !Path::new(QEMU).exists() {
        svirt_testkit::skip(
            "qemu",
            format!("{QEMU} is not installed (apt-get install qemu-system-x86)"),
        );
        return;
    }
    if skip_unless_root() {
        return;
    }
    if kernel_abi() < 6 {
        svirt_testkit::skip(
            "landlock-abi-6",
            format!("kernel Landlock ABI {} < 6", kernel_abi()),
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    traversable(dir.path());
    let acc = accounts(dir.path(), "root:x:0:0::/root:/bin/sh\n", "root:x:0:\n");
    let dac = dac_driver(&dir.path().join("state"), &acc, 620_000, 620_050, None);
    let ll = LandlockDriver::new(LandlockConfig::default());
    let disk_a = dir.path().join("a.img");
    // Another guest's disk, readable by everyone: only Landlock keeps QEMU out.
    let disk_b = dir.path().join("b.img");
    for d in [&disk_a, &disk_b] {
        std::fs::write(d, vec![0u8; 1 << 20]).expect("disk");
        chmod(d, 0o644);
    }
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).expect("run");
    let p = plan("qemu-a", vec![disk(&disk_a)]);
    let mut g = GuestSecurity {
        name: "qemu-a".into(),
        level: None,
        ids: None,
    };
    dac.reserve(&p, &mut g).expect("reserve");
    ll.reserve(&p, &mut g).expect("reserve");
    dac.set_all(&p, &g).expect("set_all");
    let (uid, gid) = g.ids.expect("ids");
    std::os::unix::fs::chown(&run_dir, Some(uid), Some(gid)).expect("chown run");
    // b.img is 0644: DAC alone lets any uid read it; Landlock refuses it.
    let confined = run_qemu(&dac, &ll, &p, &g, &run_dir, &disk_a, &disk_b, true);
    assert!(
        confined[4].contains("Permission denied"),
        "another guest's disk must be refused: {}",
        confined[4]
    );
    let control = run_qemu(&dac, &ll, &p, &g, &run_dir, &disk_a, &disk_b, false);
    assert!(
        control[4].contains("\"return\""),
        "without Landlock: {}",
        control[4]
    );
    assert!(dac.restore_all(&p, &g).is_empty());
}

#[allow(clippy::too_many_arguments)]
fn run_qemu(
    dac: &svirt_drivers::dac::DacDriver,
    ll: &LandlockDriver,
    p: &svirt_domain::Plan,
    g: &GuestSecurity,
    run_dir: &Path,
    disk_a: &Path,
    disk_b: &Path,
    with_landlock: bool,
) -> Vec<String> {
    let ctx = ExecContext {
        emulator: QEMU.into(),
        runtime_dir: run_dir.to_path_buf(),
        devices: Vec::new(),
        tcp_ports: Vec::new(),
        inherited: vec![],
        procfs: None,
    };
    let mut hooks = dac.child_hooks(p, g, &ctx).expect("dac hooks");
    if with_landlock {
        hooks.extend(ll.child_hooks(p, g, &ctx).expect("landlock hooks"));
    }
    let sock = run_dir.join("qmp.sock");
    let _ = std::fs::remove_file(&sock);
    let mut cmd = Command::new(QEMU);
    cmd.args([
        "-accel",
        "tcg",
        "-machine",
        "pc",
        "-m",
        "64",
        "-nodefaults",
        "-display",
        "none",
        "-S",
    ])
    .arg("-drive")
    .arg(format!("file={},format=raw,if=virtio", disk_a.display()))
    .arg("-qmp")
    .arg(format!("unix:{},server=on,wait=off", sock.display()))
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    // SAFETY: the hooks only make system calls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for h in hooks.iter_mut() {
                h()?;
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn qemu");
    let start = Instant::now();
    while !sock.exists() && start.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(st)) = child.try_wait() {
            let mut err = String::new();
            let _ =
                std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err);
            panic!("QEMU exited under the stack ({st}): {err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let startup = start.elapsed();
    let r = qmp(
        &sock,
        &[
            "{\"execute\":\"query-status\"}",
            "{\"execute\":\"cont\"}",
            "{\"execute\":\"query-status\"}",
            &format!(
                "{{\"execute\":\"blockdev-add\",\"arguments\":{{\"driver\":\"file\",\"node-name\":\"other\",\"read-only\":true,\"filename\":\"{}\"}}}}",
                disk_b.display()
            ),
            "{\"execute\":\"quit\"}",
        ],
    );
    let st = child.wait().expect("wait");
    let replies = r.expect("QMP");
    eprintln!(
        "QEMU (landlock: {with_landlock}): up in {startup:?}; replies {replies:#?}; exit {st}"
    );
    assert!(
        replies[1].contains("prelaunch"),
        "query-status: {}",
        replies[1]
    );
    assert!(
        replies[3].contains("\"running\""),
        "query-status after cont: {}",
        replies[3]
    );
    replies
}
