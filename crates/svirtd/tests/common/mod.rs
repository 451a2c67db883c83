//! Shared harness of the end-to-end tests: a real svirtd on temporary directories, the
//! real `svirt` CLI, real QEMU (TCG), real files.
//!
//! Every daemon gets its own state/run directories, cgroup parent, uid range and category
//! range, so tests running in parallel never share anything. Dropping a [`Daemon`] destroys
//! its guests through the API, stops the daemon, kills (by pid) any QEMU it reported that
//! is still alive, and removes its cgroup parents.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Why a test cannot run here, or `None`.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: svirtd needs root to give guests their own uids".into());
    }
    for bin in ["qemu-system-x86_64", "qemu-img"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
            .unwrap_or(false);
        if !found {
            return Some(format!(
                "{bin} not installed (apt-get install qemu-system-x86 qemu-utils)"
            ));
        }
    }
    None
}

/// Returns early from a test with a loud SKIP line when the host cannot run it.
#[macro_export]
macro_rules! skip_unless_capable {
    () => {
        if let Some(why) = common::skip_reason() {
            svirt_testkit::skip("qemu-root", format!("{}: {why}", module_path!()));
            return;
        }
    };
}

/// The `svirt` binary, built (or found up to date) next to `svirtd`.
pub fn svirt_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("svirt", "svirt")).clone()
}

/// The `svirt-probe` binary (the lab's compromised processes), built (or found up to
/// date) next to `svirtd`.
pub fn probe_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("svirt-probe", "probe"))
        .clone()
}

/// The binary `name` of the workspace crate in `crates/<dir>`, next to `svirtd`.
fn workspace_bin(name: &str, dir: &str) -> PathBuf {
    let svirtd = PathBuf::from(env!("CARGO_BIN_EXE_svirtd"));
    let bin = svirtd.with_file_name(name);
    let release = svirtd.parent().is_some_and(|d| d.ends_with("release"));
    // `cargo test -p svirtd` does not build the others; make sure the one we run is
    // current. (`cargo test --workspace` has just built it: skip cargo when it is newer
    // than its sources, so a differently-unified feature set does not rebuild it.)
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(dir)
        .join("src");
    if newest_mtime(&src).is_some_and(|s| {
        fs::metadata(&bin)
            .and_then(|m| m.modified())
            .is_ok_and(|b| b >= s)
    }) {
        return bin;
    }
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "-p", name]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build -p {name} failed");
    bin
}

fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for e in fs::read_dir(dir).ok()?.flatten() {
        let t = if e.path().is_dir() {
            newest_mtime(&e.path())
        } else {
            e.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(t);
    }
    newest
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A running svirtd.
pub struct Daemon {
    /// Temporary root of everything this daemon uses.
    pub dir: tempfile::TempDir,
    /// `--state-dir`.
    pub state: PathBuf,
    /// `--run-dir`.
    pub run: PathBuf,
    /// The API socket.
    pub socket: PathBuf,
    /// `--cgroup-parent`.
    pub cgroup_parent: String,
    /// Extra arguments it was started with (kept for restarts).
    pub args: Vec<String>,
    child: Option<Child>,
    /// Every QEMU pid seen, killed by pid at drop if still alive.
    pub seen_pids: Vec<i32>,
}

/// A fresh slot for this daemon: its uid and category ranges overlap no other daemon's.
fn slot() -> u32 {
    NEXT.fetch_add(1, Ordering::SeqCst)
}

impl Daemon {
    /// The live processes this daemon started whose command name is `comm` (its
    /// children: virtiofsd, for one).
    pub fn children_named(&self, comm: &str) -> Vec<i32> {
        let Some(me) = self.child.as_ref().map(|c| c.id() as i32) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // `pid (comm) state ppid …`: comm may hold spaces and parentheses.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = &stat[open + 1..close];
            let mut rest = stat[close + 1..].split_whitespace();
            let state = rest.next().unwrap_or("");
            let ppid: i32 = rest.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            if name == comm && ppid == me && state != "Z" && state != "X" {
                out.push(pid);
            }
        }
        out
    }

    /// Starts svirtd with `extra` arguments on new temporary directories.
    pub fn start(extra: &[&str]) -> Daemon {
        Daemon::start_with_env(extra, &[])
    }

    /// [`Daemon::start`] with extra environment for the daemon.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let n = slot();
        let dir = tempfile::Builder::new()
            .prefix("svirt-e2e-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let first_uid = 1_500_000_000 + (std::process::id() % 1000) * 100_000 + n * 1000;
        let first_cat = (n % 60) * 16;
        let mut args: Vec<String> = vec![
            "--uid-range".into(),
            format!("{first_uid}-{}", first_uid + 999),
            "--category-range".into(),
            format!("c{first_cat}.c{}", first_cat + 15),
            "--shutdown-timeout".into(),
            "5".into(),
            // Per daemon, under its temporary root: nothing of a test lands in /var/lib.
            "--nvram-dir".into(),
            dir.path().join("nvram").to_string_lossy().into_owned(),
            "--tpm-state-dir".into(),
            dir.path().join("swtpm").to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut d = Daemon {
            state: dir.path().join("state"),
            run: dir.path().join("run"),
            socket: dir.path().join("run/svirtd.sock"),
            cgroup_parent: format!("svirt-e2e-{}-{n}", std::process::id()),
            dir,
            args,
            child: None,
            seen_pids: Vec::new(),
        };
        d.spawn(env);
        d
    }

    /// (Re)starts the daemon process on the same directories, with extra environment.
    pub fn spawn(&mut self, env: &[(&str, &str)]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("svirtd.log"))
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_svirtd"));
        cmd.arg("--state-dir")
            .arg(&self.state)
            .arg("--run-dir")
            .arg(&self.run)
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .args(&self.args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut child = cmd.spawn().expect("spawn svirtd");
        let deadline = Instant::now() + Duration::from_secs(30);
        // After a kill -9 the old socket file is still there: wait until the new daemon answers.
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("svirtd exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "svirtd did not listen within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("svirtd.log")).unwrap_or_default()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .map(|c| c.id() as i32)
            .expect("daemon running")
    }

    /// `kill -9` the daemon and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the daemon to exit by itself (e.g. an injected fault) and reaps it.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some(c) = self.child.as_mut() {
            if let Ok(Some(_)) = c.try_wait() {
                self.child = None;
                let _ = fs::remove_file(&self.socket);
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Runs the CLI against this daemon.
    /// The `--connect` argument that reaches this svirtd.
    pub fn socket_arg(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    pub fn svirt(&self, args: &[&str]) -> Output {
        Command::new(svirt_bin())
            .arg("--connect")
            .arg(format!("unix:{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run svirt")
    }

    /// Runs the CLI and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.svirt(args);
        assert!(
            out.status.success(),
            "svirt {args:?} failed ({}):\nstdout: {}\nstderr: {}\nsvirtd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI with `--json` output and parses it.
    pub fn json(&mut self, args: &[&str]) -> Value {
        let text = self.ok(args);
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("svirt {args:?}: not JSON ({e}): {text}"));
        self.note_pids(&v);
        v
    }

    fn note_pids(&mut self, v: &Value) {
        let items: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        for i in items {
            if let Some(p) = i.get("pid").and_then(Value::as_i64)
                && !self.seen_pids.contains(&(p as i32))
            {
                self.seen_pids.push(p as i32);
            }
        }
    }

    /// One raw API request (no CLI): status code and JSON body.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        use std::io::{Read, Write};
        let mut s =
            std::os::unix::net::UnixStream::connect(&self.socket).expect("connect to svirtd");
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: svirtd\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).expect("write request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read answer");
        let text = String::from_utf8_lossy(&raw);
        let (head, rest) = text.split_once("\r\n\r\n").expect("HTTP answer");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status");
        (status, serde_json::from_str(rest).unwrap_or(Value::Null))
    }

    /// `GET /v1/host`: what the daemon chose at startup.
    pub fn json_host(&self) -> Value {
        let (status, v) = self.api("GET", "/v1/host", None);
        assert_eq!(status, 200, "{v}");
        v
    }

    /// A path in the daemon's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let out = self.svirt(&["list", "--json"]);
            if let Ok(Value::Array(guests)) = serde_json::from_slice::<Value>(&out.stdout) {
                for g in guests {
                    if let Some(p) = g.get("pid").and_then(Value::as_i64) {
                        self.seen_pids.push(p as i32);
                    }
                    if let Some(name) = g.get("name").and_then(Value::as_str) {
                        let _ = self.svirt(&["destroy", name]);
                    }
                }
            }
            if let Some(mut c) = self.child.take() {
                // SAFETY: signalling our own child by pid.
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(10);
                while !matches!(c.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for &p in &self.seen_pids {
            if process_alive(p) && is_qemu(p) {
                // SAFETY: a QEMU this test's daemon started (checked by its command name).
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        // The parent (and any guest group a dead daemon left) in every hierarchy; rmdir
        // only succeeds on empty groups, so nothing in use is touched.
        let mut parents = vec![Path::new("/sys/fs/cgroup").join(&self.cgroup_parent)];
        if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
            parents.extend(rd.flatten().map(|h| h.path().join(&self.cgroup_parent)));
        }
        for parent in parents {
            if let Ok(rd) = fs::read_dir(&parent) {
                for g in rd.flatten().filter(|g| g.path().is_dir()) {
                    let _ = fs::remove_dir(g.path());
                }
            }
            let _ = fs::remove_dir(&parent);
        }
    }
}

/// Whether `pid` is a live (non-zombie) process.
pub fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

fn is_qemu(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("qemu"))
}

/// The real uid and gid of a process.
pub fn process_ids(pid: i32) -> Option<(u32, u32)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u32> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("Uid:")?, field("Gid:")?))
}

/// Owner, group, mode and SELinux label of a file: what a guest may change and svirt must restore.
pub fn file_state(path: &Path) -> String {
    let m = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    let mut label = vec![0u8; 256];
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: valid path, name and buffer.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"security.selinux".as_ptr(),
            label.as_mut_ptr().cast(),
            label.len(),
        )
    };
    let label = if n > 0 {
        String::from_utf8_lossy(&label[..n as usize])
            .trim_end_matches('\0')
            .to_string()
    } else {
        "-".into()
    };
    format!(
        "{} {}:{} {:o} {label}",
        path.display(),
        m.uid(),
        m.gid(),
        m.mode() & 0o7777
    )
}

/// A qcow2 image made with qemu-img.
pub fn qcow2(path: &Path) {
    let (dir, name) = (
        path.parent().expect("image in a directory"),
        path.file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 image name"),
    );
    svirt_testkit::qcow2(dir, name, None);
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
}

/// A raw image.
pub fn raw(path: &Path) {
    let f = fs::File::create(path).expect("create raw image");
    f.set_len(1 << 20).expect("size raw image");
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
}

/// Domain XML: one private disk (qcow2 or raw by extension), optionally a shared read-only
/// image, and a serial log.
pub fn domain_xml(name: &str, disk: &Path, shared_ro: Option<&Path>, serial: &Path) -> String {
    let fmt = if disk.extension().is_some_and(|e| e == "qcow2") {
        "qcow2"
    } else {
        "raw"
    };
    let shared = shared_ro
        .map(|p| {
            format!(
                "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{}'/>\
                 <target dev='vdb' bus='virtio'/><readonly/></disk>",
                p.display()
            )
        })
        .unwrap_or_default();
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='{fmt}'/><source file='{}'/>\
         <target dev='vda' bus='virtio'/></disk>{shared}\
         <serial type='file'><source path='{}'/><target port='0'/></serial>\
         </devices></domain>\n",
        disk.display(),
        serial.display()
    )
}

/// Creates a guest's files in the daemon's directory and writes its XML; returns the XML path.
pub fn make_guest(d: &Daemon, name: &str, qcow: bool, shared_ro: Option<&Path>) -> PathBuf {
    let disk = d.path(&format!("{name}.{}", if qcow { "qcow2" } else { "raw" }));
    if qcow {
        qcow2(&disk)
    } else {
        raw(&disk)
    }
    let serial = d.path(&format!("{name}.serial.log"));
    fs::write(&serial, b"").expect("serial log");
    fs::set_permissions(&serial, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let xml = d.path(&format!("{name}.xml"));
    fs::write(&xml, domain_xml(name, &disk, shared_ro, &serial)).expect("xml");
    xml
}

/// A QMP `blockdev-add` of a `file` node: makes QEMU itself open `path`.
pub fn blockdev_add(node: &str, path: &Path, read_only: bool) -> String {
    serde_json::json!({
        "execute": "blockdev-add",
        "arguments": {"driver": "file", "node-name": node, "filename": path, "read-only": read_only}
    })
    .to_string()
}

/// svirt's test guest (a real Linux: Debian's kernel and a busybox initramfs,
/// `scripts/guest-os`), built or taken from its cache: (vmlinuz, initrd.gz). The script
/// installs what it needs; a machine that cannot build it fails the test.
pub fn guest_os() -> (PathBuf, PathBuf) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/guest-os");
    let out = std::process::Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let (k, i) = (dir.join("vmlinuz"), dir.join("initrd.gz"));
    assert!(
        k.is_file() && i.is_file(),
        "{}: no vmlinuz or initrd.gz",
        dir.display()
    );
    (k, i)
}

/// Domain XML of a real Linux guest: the test guest's kernel and initrd (direct boot), one
/// raw disk, a 9p share of `share` (tag `share0`, which the guest mounts and reads
/// `hello.txt` from), a virtiofs share of `vfs` (tag `vfs0`, served by a virtiofsd of the
/// guest's; the guest reads its `hello.txt` and writes `from-NAME.txt`; its memory is
/// shared memfd memory, as vhost-user needs), an emulated TPM 2.0 (the guest's swtpm; the
/// guest says which TPM it sees), its serial console on the unix socket `console` (QEMU listens:
/// `svirt console`), everything the guest prints also logged to `log`.
pub fn linux_guest_xml(
    name: &str,
    (kernel, initrd): (&Path, &Path),
    disk: &Path,
    (share, vfs): (&Path, &Path),
    console: &Path,
    log: &Path,
) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>\
         <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{}</kernel><initrd>{}</initrd>\
         <cmdline>console=ttyS0 quiet svirt.name={name} svirt.share=share0 svirt.vfs=vfs0</cmdline></os><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{}'/>\
         <target dev='vda' bus='virtio'/></disk>\
         <filesystem type='mount' accessmode='passthrough'><source dir='{}'/><target dir='share0'/></filesystem>\
         <filesystem type='mount' accessmode='passthrough'><driver type='virtiofs'/><source dir='{}'/><target dir='vfs0'/></filesystem>\
         <serial type='unix'><source mode='bind' path='{}'/><log file='{}'/><target port='0'/></serial>\
         <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>\
         </devices></domain>\n",
        kernel.display(),
        initrd.display(),
        disk.display(),
        share.display(),
        vfs.display(),
        console.display(),
        log.display()
    )
}

/// Waits until `file` holds `line` (a whole line), up to `timeout`; false if it never does.
pub fn wait_for_line(file: &Path, line: &str, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(b) = fs::read(file)
            && String::from_utf8_lossy(&b)
                .lines()
                .any(|l| l.trim_end_matches('\r') == line)
        {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
