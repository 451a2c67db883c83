//! Attack suite, class 5: svirtd never follows a path the guest can change. The guest's
//! runtime directory is its own (owned by its uid, its QEMU's working directory); whatever
//! a compromised QEMU puts there — a symlink to another guest's monitor socket, a socket it
//! binds itself, a directory, symlinks named like the manager's files — must never be
//! reached by the manager's monitor, stop or log code. Real QEMU under TCG, DAC + Landlock;
//! the attacker acts as the guest's uid (`setpriv`) from inside its runtime directory, as
//! its QEMU would (the directory is its working directory).
//!
//! Each attack has a control: the attacker's own monitor commands still reach its own
//! QEMU, and the victim's still reach the victim.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Env, alive, require_env};
use serde_json::json;
use svirt_manager::{GuestInfo, GuestState, Manager, StartOptions};

/// Runs `script` with `sh -c` as the guest (its uid and gid, no supplementary groups), with
/// the guest's runtime directory as working directory, as its QEMU runs. Panics if it fails.
fn as_guest(info: &GuestInfo, script: &str) {
    let (uid, gid) = (info.uid.unwrap(), info.gid.unwrap());
    let out = Command::new("setpriv")
        .current_dir(&info.runtime_dir)
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .args(["sh", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "as guest uid {uid}: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn name_of(m: &Manager, guest: &str) -> String {
    let r = m
        .qemu_monitor_command(guest, json!({"execute": "query-name"}))
        .unwrap_or_else(|e| panic!("query-name on {guest}: {e}"));
    r["return"]["name"].as_str().unwrap_or_default().to_string()
}

/// Two paused guests under DAC + Landlock: the attacker `a` and the victim `v`.
fn two_guests(env: &Env) -> (Manager, GuestInfo, GuestInfo) {
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let paused = StartOptions { paused: true };
    let a = m.start(&env.xml("a", &[]), paused).unwrap();
    let v = m.start(&env.xml("v", &[]), paused).unwrap();
    // Controls: each monitor reaches its own QEMU before any attack.
    assert_eq!(name_of(&m, "a"), "a");
    assert_eq!(name_of(&m, "v"), "v");
    (m, a, v)
}

/// The victim is untouched: same QEMU alive, state unchanged, its monitor its own.
fn assert_victim_untouched(m: &Manager, v: &GuestInfo, what: &str) {
    assert!(alive(v.pid.unwrap()), "{what}: the victim's QEMU died");
    let now = m.info("v").unwrap();
    assert_eq!(now.pid, v.pid, "{what}: the victim's pid changed");
    assert_eq!(
        now.state,
        GuestState::Paused,
        "{what}: the victim's state changed"
    );
    assert_eq!(name_of(m, "v"), "v", "{what}: the victim's monitor");
}

/// The attacker replaces `qmp.sock` in its runtime directory by a symlink to the victim's
/// monitor socket. Its own `query-name` must answer `a`, its `quit` must end itself and
/// not the victim (before the fix: `v`, and the victim died).
#[test]
fn attack_runtime_qmp_symlink_to_victim() {
    require_env!();
    let env = Env::new("atk-qmpln");
    let (m, a, v) = two_guests(&env);
    as_guest(
        &a,
        &format!("rm -f qmp.sock; ln -s {} qmp.sock", v.qmp_socket.display()),
    );
    assert_eq!(
        name_of(&m, "a"),
        "a",
        "the attacker's monitor reached another QEMU"
    );
    // `quit` through the attacker's monitor ends the attacker (control), never the victim.
    let _ = m.qemu_monitor_command("a", json!({"execute": "quit"}));
    let exit = m.wait("a", Duration::from_secs(10)).unwrap();
    assert!(exit.is_some(), "the attacker's own quit did not end it");
    assert_victim_untouched(&m, &v, "quit through a symlinked qmp.sock");
    m.destroy("v").unwrap();
    drop(m);
    env.assert_store_clean("qmp symlink");
}

/// The attacker removes `qmp.sock` and binds a socket of its own there (a fake monitor
/// that answers everything). No monitor command, shutdown or destroy of the attacker may
/// connect to it (before the fix every one did and took its forged answers).
#[test]
fn attack_runtime_qmp_socket_rebound_by_guest() {
    require_env!();
    let env = Env::new("atk-qmpfake");
    let (m, a, v) = two_guests(&env);
    as_guest(&a, "rm -f qmp.sock");
    // Bound by the test and handed to the guest's uid: the same socket a compromised QEMU
    // would bind itself (it cannot otherwise be told apart by the manager).
    let path = a.runtime_dir.join("qmp.sock");
    let fake = UnixListener::bind(&path).unwrap();
    std::os::unix::fs::lchown(&path, a.uid, a.gid).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for conn in fake.incoming() {
            let Ok(mut c) = conn else { break };
            h.fetch_add(1, Ordering::SeqCst);
            let _ = c.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n");
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                let _ = c.write_all(
                    b"{\"return\": {\"name\": \"forged\", \"running\": false, \"status\": \"paused\"}}\r\n",
                );
                line.clear();
            }
        }
    });
    assert_eq!(name_of(&m, "a"), "a", "the attacker's monitor was forged");
    m.shutdown_timeout("a", Duration::from_millis(300)).unwrap();
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the manager connected to a socket the guest bound"
    );
    assert_victim_untouched(&m, &v, "a guest-bound qmp.sock");
    m.destroy("v").unwrap();
    drop(m);
    env.assert_store_clean("qmp fake socket");
}

/// The attacker replaces `qmp.sock` by a directory (and then by a symlink to a root-only
/// file): its monitor still works (before the fix: "connect …: Connection refused"), a
/// shutdown ends it through ACPI/kill, and nothing outside its directory changes.
#[test]
fn attack_runtime_qmp_replaced_by_directory() {
    require_env!();
    let env = Env::new("atk-qmpdir");
    let (m, a, v) = two_guests(&env);
    as_guest(&a, "rm -f qmp.sock; mkdir qmp.sock");
    assert_eq!(name_of(&m, "a"), "a");
    as_guest(&a, "rmdir qmp.sock; ln -s /etc/shadow qmp.sock");
    assert_eq!(name_of(&m, "a"), "a");
    m.destroy("a").unwrap();
    assert_victim_untouched(&m, &v, "qmp.sock replaced");
    m.destroy("v").unwrap();
    drop(m);
    env.assert_store_clean("qmp dir");
}

/// A compromised QEMU that dies during its start after replacing its log (`qemu.log` in its
/// working directory) by a symlink to a root-only file: the start's error quotes the
/// tail of QEMU's log, which must be what QEMU wrote, never the file the link names
/// (before the fix the error carried the secret). The control: a QEMU that fails the
/// same way without the link still has its own output quoted.
#[test]
fn attack_runtime_log_symlink_to_host_file() {
    require_env!();
    let env = Env::new("atk-log");
    // The fake QEMU runs as the guest's uid: it must be able to reach its script.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = env.path("secret");
    std::fs::write(&secret, "TOPSECRET-host-key-material\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The fake QEMU is a static program: the jail shows QEMU's binary and the library
    // directories, not a shell.
    let script = env.path("evil-qemu");
    let src = env.path("evil-qemu.c");
    std::fs::write(
        &src,
        format!(
            "#include <unistd.h>\n#include <stdlib.h>\nint main(void) {{\n\
             static const char m[] = \"own-qemu-output\\n\";\n\
             write(2, m, sizeof m - 1);\n\
             unlink(\"qemu.log\");\n\
             symlink(\"{}\", \"qemu.log\");\n\
             usleep(500000);\n\
             return 1;\n}}\n",
            secret.display()
        ),
    )
    .unwrap();
    let cc = std::process::Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(&script)
        .arg(&src)
        .output()
        .expect("cc (Debian gcc, libc6-dev) builds the fake QEMU");
    assert!(
        cc.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let mut cfg = env.config("dac");
    cfg.qemu_binary = Some(script.clone());
    let (m, _) = Manager::open(cfg).unwrap();
    let err = m
        .start(&env.xml("a", &[]), StartOptions { paused: true })
        .expect_err("the fake QEMU exits");
    let msg = err.to_string();
    assert!(
        !msg.contains("TOPSECRET"),
        "the start error quoted a host file through the guest's symlink: {msg}"
    );
    assert!(
        msg.contains("own-qemu-output"),
        "control: QEMU's own output is quoted: {msg}"
    );
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        "TOPSECRET-host-key-material\n"
    );
    let md = std::fs::metadata(&secret).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o7777), (0, 0o600));
    drop(m);
    env.assert_store_clean("log symlink");
}

/// Symlinks named like everything the manager writes (`qmp.sock`, `qemu.log`, `pid`,
/// `a.pid`), a subdirectory holding links to the victim's runtime directory and to a
/// root-only directory, and a hard link to a root-owned file: after the
/// attacker's monitor use, shutdown and destroy, every target is intact (content, owner,
/// mode), the victim runs, and the manager's own files are untouched. (Before the fix the
/// monitor connected through the planted `qmp.sock` link; the removal of the runtime
/// directory was already fd-relative, std's `remove_dir_all`, and stays so.)
#[test]
fn attack_runtime_planted_links() {
    require_env!();
    let env = Env::new("atk-plant");
    let (m, a, v) = two_guests(&env);
    let keep = env.path("keep");
    std::fs::create_dir(&keep).unwrap();
    for f in ["x", "y"] {
        std::fs::write(keep.join(f), f).unwrap();
    }
    let secret = env.path("secret");
    std::fs::write(&secret, "s").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let before = snapshot(&[keep.clone(), secret.clone(), v.runtime_dir.clone()]);
    as_guest(
        &a,
        &format!(
            "for n in qmp.sock qemu.log pid a.pid; do rm -rf $n; ln -s {s} $n; done; \
             mkdir sub; ln -s {k} sub/keep; ln -s {vr} sub/victim; ln -s {k} keepdir",
            s = secret.display(),
            k = keep.display(),
            vr = v.runtime_dir.display()
        ),
    );
    assert_eq!(name_of(&m, "a"), "a");
    m.shutdown_timeout("a", Duration::from_millis(300)).unwrap();
    assert!(
        !a.runtime_dir.exists(),
        "the attacker's runtime dir was left"
    );
    assert_eq!(
        snapshot(&[keep.clone(), secret.clone(), v.runtime_dir.clone()]),
        before,
        "a file outside the attacker's runtime dir changed"
    );
    assert_victim_untouched(&m, &v, "planted links");
    m.destroy("v").unwrap();
    drop(m);
    env.assert_store_clean("planted links");
}

/// (path, uid, gid, mode, content for files) of `roots` and everything below them.
fn snapshot(roots: &[PathBuf]) -> Vec<(PathBuf, u32, u32, u32, Vec<u8>)> {
    fn walk(p: &Path, out: &mut Vec<(PathBuf, u32, u32, u32, Vec<u8>)>) {
        let Ok(md) = std::fs::symlink_metadata(p) else {
            return;
        };
        let data = if md.is_file() {
            std::fs::read(p).unwrap_or_default()
        } else {
            Vec::new()
        };
        out.push((p.to_path_buf(), md.uid(), md.gid(), md.mode(), data));
        if md.is_dir() {
            let mut names: Vec<PathBuf> = std::fs::read_dir(p)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .collect();
            names.sort();
            for n in names {
                walk(&n, out);
            }
        }
    }
    let mut out = Vec::new();
    for r in roots {
        walk(r, &mut out);
    }
    out
}
