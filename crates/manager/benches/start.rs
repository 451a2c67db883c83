//! Time from "start this guest, paused" to QMP answering: svirt (`Manager::start`, the
//! full confined path: plan, reservations, labels, cgroup, child hooks) against launching
//! the very same QEMU command line directly, for 1 and 8 disks.
//!
//! Columns are entries of `columns()`; a further one (libvirt's `virsh create --paused`)
//! plugs in as one more `Column` with the same signature.
//!
//! Run: `cargo bench -p svirt-manager --bench start` (root; QEMU installed).
//! Env: `SVIRT_BENCH_ITERS` (default 15), `SVIRT_BENCH_DRIVERS` (default `auto`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use svirt_manager::{AccelChoice, Config, Manager, StartOptions};

/// One benchmark case.
struct Case {
    disks: usize,
    xml: String,
    name: String,
}

/// A column: measures one start of `case` and cleans up after itself.
type Column<'a> = (
    &'static str,
    Box<dyn FnMut(&Case) -> Result<Duration, String> + 'a>,
);

fn qemu_img(path: &Path) {
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg("64M")
        .status()
        .expect("qemu-img");
    assert!(st.success());
}

fn case(dir: &Path, disks: usize) -> Case {
    let name = format!("bench{disks}");
    let mut d = String::new();
    for i in 0..disks {
        let p = dir.join(format!("{name}-{i}.qcow2"));
        qemu_img(&p);
        d.push_str(&format!(
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vd{}' bus='virtio'/></disk>\n",
            p.display(),
            (b'a' + i as u8) as char
        ));
    }
    let serial = dir.join(format!("{name}.serial.log"));
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>{d}\
         <serial type='file'><source path='{}'/><target port='0'/></serial></devices></domain>",
        serial.display()
    );
    Case { disks, xml, name }
}

/// Launches `argv` (whose QMP chardev uses fd `listener`) and waits for QMP to answer
/// `qmp_capabilities`, as the manager does; then quits QEMU.
fn direct(argv: &[String], sock: &Path) -> Result<Duration, String> {
    let _ = std::fs::remove_file(sock);
    let t0 = Instant::now();
    let listener = UnixListener::bind(sock).map_err(|e| e.to_string())?;
    let fd = listener.as_raw_fd();
    // The argv names the fd number the manager used; put our listener there.
    let want: i32 = argv
        .iter()
        .find_map(|a| {
            a.split("fd=")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .and_then(|n| n.parse().ok())
        })
        .ok_or("no fd= in argv")?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: dup2/fcntl between fork and exec on fds prepared before.
    unsafe {
        cmd.pre_exec(move || {
            if fd != want {
                if libc::dup2(fd, want) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    drop(listener);
    let s = UnixStream::connect(sock).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .map_err(|e| e.to_string())?;
    line.clear();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let dt = t0.elapsed();
    if !line.contains("return") {
        return Err(format!("unexpected reply {line}"));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(dt)
}

fn stats(v: &mut [Duration]) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(v[v.len() / 2]), ms(v[0]), ms(v[v.len() - 1]))
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: the start benchmark needs root (cgroups, per-guest uids)");
        return;
    }
    let iters: usize = std::env::var("SVIRT_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let drivers = std::env::var("SVIRT_BENCH_DRIVERS").unwrap_or_else(|_| "auto".into());
    let tmp = tempfile::Builder::new()
        .prefix("svirt-bench-")
        .tempdir()
        .expect("tempdir");
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut cfg = Config::new(tmp.path().join("state"), tmp.path().join("run"));
    cfg.cgroup_parent = format!("svirt-bench-{}", std::process::id());
    cfg.accel = AccelChoice::Tcg;
    cfg.drivers = drivers.parse().expect("SVIRT_BENCH_DRIVERS");
    let (m, report) = match Manager::open(cfg.clone()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("SKIP: cannot open the manager: {e}");
            return;
        }
    };
    println!(
        "svirt start benchmark: accel {} (fixed, for comparable numbers), stack {:?} ({}), {iters} iterations, paused start to QMP answering",
        report.accel, report.stack, report.why
    );
    let cases: Vec<Case> = [1, 8].iter().map(|&n| case(&images, n)).collect();
    let sock = tmp.path().join("direct.sock");
    let mut columns: Vec<Column<'_>> = vec![
        (
            "direct qemu",
            Box::new(|c: &Case| {
                let argv = m.command_line(&c.xml, true, 3).map_err(|e| e.to_string())?;
                direct(&argv, &sock)
            }),
        ),
        (
            "svirt start",
            Box::new(|c: &Case| {
                let t0 = Instant::now();
                m.start(&c.xml, StartOptions { paused: true })
                    .map_err(|e| e.to_string())?;
                let dt = t0.elapsed();
                m.destroy(&c.name).map_err(|e| e.to_string())?;
                Ok(dt)
            }),
        ),
        // A libvirt column (`virsh create --paused`) goes here.
    ];
    let names: Vec<&str> = columns.iter().map(|c| c.0).collect();
    print!("{:>6}", "disks");
    for n in &names {
        print!(" | {n:>26}");
    }
    println!(" | ratio svirt/direct");
    for c in &cases {
        let mut results: Vec<Vec<Duration>> = vec![Vec::new(); columns.len()];
        // Interleave columns so drift (caches, other load) hits all of them alike.
        for _ in 0..iters + 1 {
            for (i, (_, f)) in columns.iter_mut().enumerate() {
                match f(c) {
                    Ok(d) => results[i].push(d),
                    Err(e) => {
                        eprintln!("{}: {e}", names[i]);
                        std::process::exit(1);
                    }
                }
            }
        }
        print!("{:>6}", c.disks);
        let mut med = Vec::new();
        for r in results.iter_mut() {
            r.remove(0); // warm-up
            let (m, lo, hi) = stats(r);
            med.push(m);
            print!(" | {:>8.1} ms ({:>5.1}-{:>5.1})", m, lo, hi);
        }
        println!(" | {:.2}x", med[1] / med[0]);
    }
    drop(columns);
    drop(m);
    let layout = svirt_manager::cgroup::Layout::detect(Path::new("/sys/fs/cgroup"));
    svirt_manager::cgroup::remove_parent(&layout, &cfg.cgroup_parent);
    let _: PathBuf = tmp.path().to_path_buf();
}
