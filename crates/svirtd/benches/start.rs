//! Start latency: from `svirt start --paused` until QMP answers, against (a) launching the
//! same QEMU command line directly and (b) `virsh create --paused` of the same domain XML,
//! interleaved in the same run, for 1 and 8 disks.
//!
//! Run through `scripts/bench-start`, which installs and starts libvirt (by hand, no systemd)
//! and cleans it up. Run alone (`cargo bench -p svirtd --bench start`) it measures svirt and
//! direct QEMU, and libvirt only when `SVIRT_BENCH_VIRSH` names a libvirt URI.
//! `SVIRT_BENCH_ITERS` sets the number of timed runs per case (default 10);
//! `SVIRT_BENCH_DRIVERS` the daemon's `--drivers` (default: auto).

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::Value;
use svirt_manager::qmp::Qmp;

fn xml(name: &str, dir: &Path, disks: usize) -> String {
    let mut devs = String::new();
    for i in 0..disks {
        let img = dir.join(format!("{name}-{i}.qcow2"));
        common::qcow2(&img);
        let dev = format!("vd{}", (b'a' + i as u8) as char);
        let _ = write!(
            devs,
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/>\
             <target dev='{dev}' bus='virtio'/></disk>",
            img.display()
        );
    }
    let serial = dir.join(format!("{name}.serial.log"));
    std::fs::write(&serial, b"").expect("serial log");
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
         <emulator>/usr/bin/qemu-system-x86_64</emulator>{devs}\
         <serial type='file'><source path='{}'/><target port='0'/></serial></devices></domain>\n",
        serial.display()
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Stats {
    samples: Vec<f64>,
}

impl Stats {
    fn median(&self) -> f64 {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        if n == 0 {
            return f64::NAN;
        }
        if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        }
    }
    fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::INFINITY, f64::min)
    }
    fn max(&self) -> f64 {
        self.samples
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// `svirt start --paused`: returns once svirtd's QMP handshake with the new QEMU is done.
fn svirt_once(d: &Daemon, xml: &Path, name: &str) -> (Duration, Value) {
    let t0 = Instant::now();
    let out = d.svirt(&["start", "--paused", "--json", xml.to_str().expect("utf8")]);
    let dt = t0.elapsed();
    assert!(
        out.status.success(),
        "svirt start: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let info: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let out = d.svirt(&["destroy", name]);
    assert!(
        out.status.success(),
        "svirt destroy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dt, info)
}

/// The same QEMU command line, launched directly (no labels, no cgroup, no confinement).
/// Like svirtd, the QMP listener is bound before the launch and handed to QEMU as an fd, so
/// the connection is immediate and the greeting arrives as soon as QEMU is ready (no
/// connect polling on either side). Timed until QMP answers `query-status`.
fn direct_once(argv: &[String], qmp: &Path) -> Duration {
    use std::os::fd::AsRawFd;
    let t0 = Instant::now();
    let _ = std::fs::remove_file(qmp);
    let listener = std::os::unix::net::UnixListener::bind(qmp).expect("bind QMP socket");
    let fd = listener.as_raw_fd();
    // SAFETY: clearing FD_CLOEXEC on a socket this function owns, so QEMU inherits it.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    let argv: Vec<String> = argv
        .iter()
        .map(|a| {
            if a.starts_with("socket,id=charmonitor,fd=") {
                format!("socket,id=charmonitor,fd={fd},server=on,wait=off")
            } else {
                a.clone()
            }
        })
        .collect();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn qemu");
    drop(listener);
    let stream = std::os::unix::net::UnixStream::connect(qmp).expect("connect QMP");
    let mut q = Qmp::from_stream(stream, Duration::from_secs(30)).expect("QMP");
    let status = q.execute("query-status", None).expect("query-status");
    let dt = t0.elapsed();
    assert_eq!(status["status"], "prelaunch", "{status}");
    let _ = child.kill();
    let _ = child.wait();
    dt
}

/// `virsh create --paused`: returns once libvirt has started QEMU and talked QMP to it.
fn virsh_once(uri: &str, xml: &Path, name: &str) -> Duration {
    let t0 = Instant::now();
    let out = Command::new("virsh")
        .args(["-q", "-c", uri, "create", "--paused"])
        .arg(xml)
        .output()
        .expect("virsh");
    let dt = t0.elapsed();
    assert!(
        out.status.success(),
        "virsh create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("virsh")
        .args(["-q", "-c", uri, "destroy", name])
        .output()
        .expect("virsh");
    assert!(
        out.status.success(),
        "virsh destroy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dt
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test` of benches passes nothing useful.
    if let Some(why) = common::skip_reason() {
        eprintln!("SKIP start benchmark: {why}");
        return;
    }
    let iters: usize = std::env::var("SVIRT_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let virsh = std::env::var("SVIRT_BENCH_VIRSH")
        .ok()
        .filter(|s| !s.is_empty());
    if virsh.is_none() {
        eprintln!(
            "NOTE: SVIRT_BENCH_VIRSH not set: libvirt not measured (scripts/bench-start sets it up)"
        );
    }
    // `SVIRT_BENCH_DRIVERS` (e.g. `none`, `dac`) measures another stack: an A/B of what
    // confinement costs on top of svirt's own path.
    let drivers = std::env::var("SVIRT_BENCH_DRIVERS").unwrap_or_default();
    // `SVIRT_BENCH_BREAKDOWN=1`: svirtd logs its start steps (a few lines per start), and
    // the report splits svirt's time at QEMU's exec: svirtd's own steps before it, QEMU's
    // start-up until QMP answers (to compare with the direct launch), and the rest (the
    // CLI process, HTTP, the reply).
    let breakdown = std::env::var("SVIRT_BENCH_BREAKDOWN").is_ok_and(|v| v == "1");
    let env: &[(&str, &str)] = if breakdown {
        &[("SVIRTD_LOG", "info,svirt_manager::fault=trace")]
    } else {
        &[]
    };
    let d = if drivers.is_empty() {
        Daemon::start_with_env(&[], env)
    } else {
        Daemon::start_with_env(&["--drivers", &drivers], env)
    };
    let host = d.json_host();
    println!(
        "svirtd: stack {} ({}); accel {}",
        host["stack"]
            .as_array()
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("+"))
            .unwrap_or_default(),
        host["why"].as_str().unwrap_or(""),
        host["accel"].as_str().unwrap_or("")
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{iters} timed runs per case after one warm-up, interleaved; milliseconds; load average {}\n",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut report = String::new();
    let _ = writeln!(
        report,
        "disks  method                     median     min     max"
    );
    let mut verdicts = Vec::new();
    let mut log_seen = 0;
    for disks in [1usize, 8] {
        let name = format!("bench{disks}");
        let xml_path: PathBuf = d.path(&format!("{name}.xml"));
        std::fs::write(&xml_path, xml(&name, d.dir.path(), disks)).expect("xml");
        let qmp = d.path(&format!("{name}-direct.qmp"));
        // Warm-up (page cache, libvirt's capability cache), and the command line to replay.
        let (_, info) = svirt_once(&d, &xml_path, &name);
        let argv: Vec<String> = info["command_line"]
            .as_array()
            .expect("command_line")
            .iter()
            .filter_map(|a| a.as_str().map(String::from))
            .collect();
        direct_once(&argv, &qmp);
        if let Some(uri) = &virsh {
            virsh_once(uri, &xml_path, &name);
        }
        let (mut s, mut q, mut v) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..iters {
            s.push(ms(svirt_once(&d, &xml_path, &name).0));
            q.push(ms(direct_once(&argv, &qmp)));
            if let Some(uri) = &virsh {
                v.push(ms(virsh_once(uri, &xml_path, &name)));
            }
        }
        let (s, q, v) = (
            Stats { samples: s },
            Stats { samples: q },
            Stats { samples: v },
        );
        for (label, st) in [
            ("svirt start --paused", &s),
            ("direct qemu", &q),
            ("virsh create --paused", &v),
        ] {
            if st.samples.is_empty() {
                continue;
            }
            let _ = writeln!(
                report,
                "{disks:>5}  {label:<24} {:>8.1} {:>7.1} {:>7.1}",
                st.median(),
                st.min(),
                st.max()
            );
        }
        if breakdown {
            let log = d.log();
            print_breakdown(disks, &log[log_seen.min(log.len())..], q.median());
            log_seen = log.len();
        }
        let ratio = s.median() / q.median();
        // Issue 11: with the jail on, within 1.15x of a direct QEMU launch.
        verdicts.push(format!(
            "{disks} disk(s): svirt/direct = {ratio:.2} (target <= 1.15, jail on: {}); fastest runs {:.2}",
            if ratio <= 1.15 { "met" } else { "MISSED" },
            s.min() / q.min()
        ));
        if !v.samples.is_empty() {
            let r = s.median() / v.median();
            verdicts.push(format!(
                "{disks} disk(s): svirt/libvirt = {r:.3} = 1/{:.1} (target <= 1/5: {})",
                1.0 / r,
                if r <= 0.2 { "met" } else { "MISSED" }
            ));
        }
    }
    print!("{report}\n{}\n", verdicts.join("\n"));
}

/// Seconds since midnight of a log line's RFC 3339 UTC timestamp (`…T10:40:31.101520Z`).
fn log_time(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?.split('T').nth(1)?;
    let t = t.strip_suffix('Z')?;
    let mut f = t.split(':');
    let h: f64 = f.next()?.parse().ok()?;
    let m: f64 = f.next()?.parse().ok()?;
    let s: f64 = f.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Medians of svirtd's steps per start, from its fault-step trace: each step from the plan
/// to the exec, and exec to QMP answering.
fn print_breakdown(disks: usize, log: &str, direct: f64) {
    let mut steps: Vec<(String, Vec<f64>)> = Vec::new();
    let mut fork_to_qmp = Vec::new();
    let mut prev: Option<(String, f64)> = None;
    let mut fork = None;
    for line in log.lines().filter(|l| l.contains("step step=")) {
        let Some(t) = log_time(line) else { continue };
        let Some(name) = line
            .split("step=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        else {
            continue;
        };
        if name == "after-plan" {
            prev = Some((name.to_string(), t));
            fork = None;
            continue;
        }
        if name == "after-qmp" {
            if let Some(f) = fork.take() {
                fork_to_qmp.push((t - f) * 1000.0);
            }
            prev = None;
            continue;
        }
        let Some((p, pt)) = prev.take() else { continue };
        let key = format!("{p}..{name}");
        match steps.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push((t - pt) * 1000.0),
            None => steps.push((key, vec![(t - pt) * 1000.0])),
        }
        if name == "after-fork" {
            fork = Some(t);
        } else {
            prev = Some((name.to_string(), t));
        }
    }
    let med = |v: &[f64]| {
        Stats {
            samples: v.to_vec(),
        }
        .median()
    };
    let parts: Vec<String> = steps
        .iter()
        .map(|(k, v)| format!("{k} {:.2}", med(v)))
        .collect();
    println!(
        "{disks} disk(s), svirtd (medians of {} starts, ms): {}; exec..QMP answered {:.1} (direct qemu: {direct:.1} from spawn)",
        fork_to_qmp.len(),
        parts.join(", "),
        med(&fork_to_qmp),
    );
}
