//! The probe run the way a manager runs QEMU: by a `qemu-system-*` name, with a listening
//! QMP socket inherited as an fd. A manager must be able to handshake, query it and stop it.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn answers_qmp_on_an_inherited_socket_and_quits() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = dir.path().join("qemu-system-x86_64");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_svirt-probe"), &qemu).unwrap();
    let sock = dir.path().join("monitor.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let lfd = listener.as_raw_fd();

    let mut cmd = Command::new(&qemu);
    cmd.args([
        "-name",
        "guest=t1,debug-threads=on",
        "-chardev",
        "socket,id=charmonitor,fd=5,server=on,wait=off",
        "-mon",
        "chardev=charmonitor,id=monitor,mode=control",
        "-S",
    ])
    // No attack plan: the probe is a quiet VMM.
    .env("SVIRT_PROBE_ATTACK", dir.path().join("absent.plan"))
    .env("SVIRT_PROBE_LINGER_SECS", "30")
    .stdin(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; lfd stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(lfd, 5) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(listener);

    let c = UnixStream::connect(&sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut w = c;
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("\"QMP\""), "greeting: {line}");
    for (msg, want) in [
        (r#"{"execute":"qmp_capabilities"}"#, r#"{"return":{}}"#),
        (
            r#"{"execute":"query-status","id":"a"}"#,
            r#""status":"paused""#,
        ),
        (r#"{"execute":"cont"}"#, r#"{"return":{}}"#),
        (r#"{"execute":"query-status"}"#, r#""status":"running""#),
        (r#"{"execute":"quit"}"#, r#"{"return":{}}"#),
    ] {
        writeln!(w, "{msg}").unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.contains(want), "{msg} -> {line}");
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "quit must exit 0, got {st}");
            break;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the probe did not exit after quit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn refuses_to_run_as_a_vmm_without_a_name() {
    let dir = tempfile::tempdir().unwrap();
    let qemu = dir.path().join("qemu-system-x86_64");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_svirt-probe"), &qemu).unwrap();
    let out = Command::new(&qemu).arg("-S").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-name"));
}
