//! Class 6 of issue 11: a compromised VMM. Each test starts real guests (QEMU under TCG,
//! the DAC + Landlock stack of this host) and sends, through the manager's monitor
//! passthrough, what a compromised QEMU could do on its own through QMP; the effect is
//! checked on the host (a file created, a connection accepted, a port bound), never only
//! QMP's error text. Every attack has a control on the guest's own objects that must
//! succeed, so a jail that broke QEMU (or a suite that refuses everything) fails.
//!
//! Which layer stops what (the code before the jail was run against this file):
//! - a pathname unix socket outside the plan (`chardev-add` socket, `migrate unix:`) and
//!   a UDP port on the host (`netdev_add user,hostfwd=udp:…`, `chardev-add udp` with a
//!   local address) were reached before the jail: Landlock does not govern connecting to
//!   a pathname socket nor UDP. The mount namespace (the socket is not there) and the
//!   network namespace (the port is bound in the guest's own) stop them now;
//! - files outside the plan (`blockdev-add`, `chardev-add file`, `memory-backend-file`,
//!   `dump-guest-memory`), TCP (`hostfwd=tcp`, a tcp chardev), abstract sockets, `tap`
//!   and `bridge` and `migrate exec:` were already refused (Landlock's paths, ports and
//!   scopes; DAC; QEMU's `-sandbox spawn=deny`): kept as regression tests, the jail
//!   stops them a second time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Env, require_env};
use serde_json::{Value, json};
use svirt_manager::{GuestInfo, Manager, StartOptions};

/// Two guests (A attacks, B is the victim) on the DAC + Landlock stack, and a directory
/// outside every plan that DAC alone would let any uid use (0777), so only the
/// confinement under test can stop the attack.
struct Lab {
    env: Env,
    m: Manager,
    a: GuestInfo,
    a_disk: PathBuf,
    b_disk: PathBuf,
    outside: tempfile::TempDir,
}

fn lab(tag: &str, b: bool) -> Lab {
    lab_with(tag, b, "dac,landlock")
}

fn lab_with(tag: &str, b: bool, drivers: &str) -> Lab {
    let env = Env::new(tag);
    let (m, _) = Manager::open(env.config(drivers)).unwrap();
    let a_disk = env.qcow2("a.qcow2");
    let b_disk = env.qcow2("b.qcow2");
    let a = m
        .start(
            &env.xml("a", &[(a_disk.clone(), "qcow2", false)]),
            StartOptions { paused: true },
        )
        .unwrap();
    if b {
        m.start(
            &env.xml("b", &[(b_disk.clone(), "qcow2", false)]),
            StartOptions { paused: true },
        )
        .unwrap();
    }
    let outside = tempfile::Builder::new()
        .prefix("svirt-outside-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    Lab {
        env,
        m,
        a,
        a_disk,
        b_disk,
        outside,
    }
}

impl Lab {
    fn qmp(&self, cmd: Value) -> Value {
        self.m.qemu_monitor_command("a", cmd).unwrap()
    }

    fn ok(&self, cmd: Value) -> Value {
        let r = self.qmp(cmd.clone());
        assert!(r.get("return").is_some(), "control {cmd} failed: {r}");
        r
    }

    fn refused(&self, cmd: Value) -> Value {
        let r = self.qmp(cmd.clone());
        assert!(r.get("error").is_some(), "attack {cmd} was accepted: {r}");
        r
    }

    /// The reply, or None when the command ended QEMU (QEMU's seccomp filter kills it
    /// for a forbidden system call: the attacker loses its own VMM, nothing else).
    fn qmp_or_death(&self, cmd: Value) -> Option<Value> {
        self.m.qemu_monitor_command("a", cmd).ok()
    }

    /// Waits for the migration started by `migrate` to end; its final status.
    fn migration_end(&self) -> String {
        let mut status = String::new();
        common::poll_until(Duration::from_secs(5), || {
            let r = self.qmp(json!({"execute": "query-migrate"}));
            status = r["return"]["status"].as_str().unwrap_or("none").to_string();
            !matches!(
                status.as_str(),
                "setup" | "active" | "device" | "pre-switchover"
            )
        });
        status
    }

    fn out(&self, name: &str) -> PathBuf {
        self.outside.path().join(name)
    }

    fn runtime(&self, name: &str) -> PathBuf {
        self.a.runtime_dir.join(name)
    }

    fn pid(&self) -> i32 {
        self.a.pid.unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.m.destroy("a");
        let _ = self.m.destroy("b");
        let _ = &self.env;
    }
}

/// A unix socket listener any uid may connect to (0777, in a 0755 directory), and a
/// non-blocking check whether anyone connected.
fn world_listener(path: &Path) -> UnixListener {
    let l = UnixListener::bind(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

fn connected(l: &UnixListener) -> bool {
    // Give a connect QEMU made a moment to land in the backlog.
    common::poll_until(Duration::from_millis(300), || l.accept().is_ok())
}

/// A port free on the host now (UDP and TCP).
fn free_port() -> u16 {
    loop {
        let u = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let p = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("0.0.0.0", p)).is_ok() {
            return p;
        }
    }
}

/// Whether the host (this test's network namespace) can still bind UDP `port` on all
/// addresses: false when QEMU bound it here.
fn host_can_bind_udp(port: u16) -> bool {
    std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok()
}

fn host_can_bind_tcp(port: u16) -> bool {
    std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// Whether `/proc/<pid>/net/<proto>` (the sockets of that process's network namespace)
/// lists a socket bound to `port`.
fn bound_in_ns_of(pid: i32, proto: &str, port: u16) -> bool {
    let t = std::fs::read_to_string(format!("/proc/{pid}/net/{proto}")).unwrap();
    let hex = format!(":{port:04X} ");
    t.lines().skip(1).any(|l| {
        l.split_whitespace()
            .nth(1)
            .is_some_and(|local| format!("{local} ").contains(&hex))
    })
}

fn node_names(l: &Lab) -> Vec<String> {
    let r = l.ok(json!({"execute": "query-named-block-nodes"}));
    r["return"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["node-name"].as_str().map(String::from))
        .collect()
}

fn blockdev(node: &str, path: &Path) -> Value {
    json!({"execute": "blockdev-add", "arguments": {
        "driver": "file", "node-name": node, "filename": path.to_str().unwrap(),
        "read-only": true, "locking": "off"}})
}

#[test]
fn attack_qmp_blockdev_add_other_guest_disk_and_host_files() {
    require_env!();
    let l = lab("bdev", true);
    // Control: the guest's own disk (a second read-only node on it) opens.
    l.ok(blockdev("own", &l.a_disk));
    assert!(node_names(&l).contains(&"own".to_string()));
    // B's disk, a root-only host file, and a world-readable file outside the plan
    // (DAC allows that one: only the jail and Landlock stand in the way).
    let world = l.out("world-readable.img");
    std::fs::write(&world, b"host data").unwrap();
    std::fs::set_permissions(&world, std::fs::Permissions::from_mode(0o666)).unwrap();
    for (node, path) in [
        ("victim", l.b_disk.clone()),
        ("shadow", PathBuf::from("/etc/shadow")),
        ("world", world),
    ] {
        l.refused(blockdev(node, &path));
        assert!(
            !node_names(&l).contains(&node.to_string()),
            "{node}: {} became a block node of guest a",
            path.display()
        );
    }
}

#[test]
fn attack_qmp_chardev_file_outside_the_plan() {
    require_env!();
    let l = lab("chfile", false);
    let add = |id: &str, path: &Path| {
        json!({"execute": "chardev-add", "arguments": {"id": id,
            "backend": {"type": "file", "data": {"out": path.to_str().unwrap()}}}})
    };
    // Control: a file in the guest's runtime directory appears on the host.
    let own = l.runtime("control.log");
    l.ok(add("own", &own));
    assert!(own.exists(), "control chardev file not created on the host");
    // A new file in a world-writable directory, and an existing world-writable file.
    let new = l.out("new.log");
    l.refused(add("new", &new));
    assert!(!new.exists(), "{} was created by the VMM", new.display());
    let existing = l.out("existing.log");
    std::fs::write(&existing, b"").unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o666)).unwrap();
    l.refused(add("existing", &existing));
    assert_eq!(std::fs::metadata(&existing).unwrap().len(), 0);
}

#[test]
fn attack_qmp_chardev_unix_socket_outside_the_plan() {
    require_env!();
    let l = lab("chunix", false);
    let add = |id: &str, path: &Path| {
        json!({"execute": "chardev-add", "arguments": {"id": id,
            "backend": {"type": "socket", "data": {"server": false,
                "addr": {"type": "unix", "data": {"path": path.to_str().unwrap()}}}}}})
    };
    // Control: a world-connectable socket the host made in the guest's runtime
    // directory (the guest's own object) accepts the VMM's connection.
    let own = world_listener(&l.runtime("control.sock"));
    l.ok(add("own", &l.runtime("control.sock")));
    assert!(connected(&own), "control socket saw no connection");
    // A world-connectable socket of the host outside the plan (a 0777 socket in a 0755
    // directory: DAC lets any uid connect; Landlock does not govern it).
    let dir = l.out("svc");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let host = world_listener(&dir.join("api.sock"));
    l.refused(add("host", &dir.join("api.sock")));
    assert!(
        !connected(&host),
        "the VMM connected to a host socket outside its plan"
    );
    // The same socket as a migration target (`migrate` answers at once; the outcome is
    // in query-migrate).
    let _ = l.qmp(json!({"execute": "migrate", "arguments": {
        "uri": format!("unix:{}", dir.join("api.sock").display())}}));
    // The connect happens in QEMU's migration thread: wait for the outcome first.
    let status = l.migration_end();
    assert!(
        !connected(&host),
        "the VMM's migration connected to a host socket outside its plan"
    );
    assert_eq!(status, "failed");
}

#[test]
fn attack_qmp_chardev_abstract_and_tcp_sockets() {
    require_env!();
    let l = lab("chnet", false);
    // An abstract socket on the host: Landlock's scope (ABI 6) and the jail's network
    // namespace (abstract names are per network namespace) both keep it out of reach.
    use std::os::linux::net::SocketAddrExt;
    let name = format!("svirt-attack-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let abs = UnixListener::bind_addr(&addr).unwrap();
    abs.set_nonblocking(true).unwrap();
    l.refused(json!({"execute": "chardev-add", "arguments": {"id": "abs",
        "backend": {"type": "socket", "data": {"server": false,
            "addr": {"type": "abstract", "data": {"path": name}}}}}}));
    assert!(!connected(&abs), "the VMM reached a host abstract socket");
    // A TCP listener on the host's loopback.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let port = tcp.local_addr().unwrap().port();
    l.refused(json!({"execute": "chardev-add", "arguments": {"id": "tcp",
        "backend": {"type": "socket", "data": {"server": false,
            "addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": port.to_string()}}}}}}));
    assert!(
        !common::poll_until(Duration::from_millis(300), || tcp.accept().is_ok()),
        "the VMM connected to a host TCP port"
    );
    // Control: a socket chardev the VMM listens on in its own runtime directory works.
    l.ok(json!({"execute": "chardev-add", "arguments": {"id": "own",
        "backend": {"type": "socket", "data": {"server": true, "wait": false,
            "addr": {"type": "unix", "data": {"path": l.runtime("own.sock").to_str().unwrap()}}}}}}));
    assert!(std::os::unix::net::UnixStream::connect(l.runtime("own.sock")).is_ok());
}

#[test]
fn attack_qmp_netdev_user_hostfwd_udp_and_tcp() {
    require_env!();
    let l = lab("hostfwd", false);
    // Control: a UDP forward is accepted and bound — in the guest's own network
    // namespace (QEMU's /proc/PID/net/udp lists it), so the host keeps its port.
    let p = free_port();
    l.ok(
        json!({"execute": "netdev_add", "arguments": {"type": "user", "id": "u1",
        "hostfwd": [{"str": format!("udp::{p}-:7")}]}}),
    );
    assert!(
        bound_in_ns_of(l.pid(), "udp", p),
        "control: the forward is not bound anywhere QEMU sees"
    );
    // The attack is the same command, judged by where the port is: not on the host.
    assert!(
        host_can_bind_udp(p),
        "the VMM bound UDP port {p} in the host's network namespace"
    );
    // A UDP chardev with a local address: the same, through another backend.
    let p2 = free_port();
    let _ = l.qmp(json!({"execute": "chardev-add", "arguments": {"id": "udp",
        "backend": {"type": "udp", "data": {
            "remote": {"type": "inet", "data": {"host": "127.0.0.1", "port": "9"}},
            "local": {"type": "inet", "data": {"host": "0.0.0.0", "port": p2.to_string()}}}}}}));
    assert!(
        host_can_bind_udp(p2),
        "the VMM bound UDP port {p2} in the host's network namespace"
    );
    // TCP forwards: refused (Landlock's TCP rule), and not bound on the host either way.
    let p3 = free_port();
    let _ = l.qmp(
        json!({"execute": "netdev_add", "arguments": {"type": "user", "id": "u2",
        "hostfwd": [{"str": format!("tcp::{p3}-:22")}]}}),
    );
    assert!(
        host_can_bind_tcp(p3),
        "the VMM bound TCP port {p3} in the host's network namespace"
    );
}

#[test]
fn attack_qmp_netdev_tap_and_bridge() {
    require_env!();
    let l = lab("tap", false);
    // Control: a user-mode netdev (no host object at all) is accepted.
    l.ok(json!({"execute": "netdev_add", "arguments": {"type": "user", "id": "u1"}}));
    let ifname = format!("svt{}", std::process::id() % 100_000);
    let _ = l.qmp_or_death(json!({"execute": "netdev_add", "arguments": {"type": "tap",
        "id": "t1", "ifname": ifname}}));
    assert!(
        !Path::new("/sys/class/net").join(&ifname).exists(),
        "the VMM created host interface {ifname}"
    );
    // The bridge helper is a setuid program QEMU would spawn.
    let br = format!("svbr{}", std::process::id() % 100_000);
    let _ = l.qmp_or_death(
        json!({"execute": "netdev_add", "arguments": {"type": "bridge",
        "id": "b1", "br": br}}),
    );
    assert!(
        !Path::new("/sys/class/net").join(&br).exists(),
        "the VMM created host bridge {br}"
    );
    let host_ifaces = std::fs::read_dir("/sys/class/net").unwrap().count();
    let _ = l.qmp_or_death(json!({"execute": "netdev_add", "arguments": {"type": "tap",
        "id": "t2"}}));
    assert_eq!(
        std::fs::read_dir("/sys/class/net").unwrap().count(),
        host_ifaces,
        "the VMM created a host interface"
    );
}

#[test]
fn attack_qmp_memory_backend_file_outside_the_plan() {
    require_env!();
    let l = lab("membk", false);
    let add = |id: &str, path: &Path| {
        json!({"execute": "object-add", "arguments": {"qom-type": "memory-backend-file",
            "id": id, "mem-path": path.to_str().unwrap(), "size": 1_048_576, "share": true}})
    };
    let own = l.runtime("control.mem");
    l.ok(add("own", &own));
    assert!(own.exists(), "control memory file not created on the host");
    let out = l.out("guest.mem");
    l.refused(add("out", &out));
    assert!(!out.exists(), "{} was created by the VMM", out.display());
}

#[test]
fn attack_qmp_dump_guest_memory_outside_the_plan() {
    require_env!();
    let l = lab("dump", false);
    let dump = |path: &Path| {
        json!({"execute": "dump-guest-memory", "arguments": {"paging": false,
            "protocol": format!("file:{}", path.display())}})
    };
    let own = l.runtime("control.dump");
    l.ok(dump(&own));
    assert!(
        common::poll_until(Duration::from_secs(10), || std::fs::metadata(&own)
            .is_ok_and(|m| m.len() > 0)),
        "control dump not written on the host"
    );
    let out = l.out("guest.dump");
    l.refused(dump(&out));
    assert!(!out.exists(), "{} was created by the VMM", out.display());
}

#[test]
fn attack_qmp_screendump_and_migrate_file_and_exec() {
    require_env!();
    let l = lab("scr", false);
    // svirt gives QEMU no display (-nographic -nodefaults) and QEMU 7.2 knows no
    // `file:` migration: these fail before any file is opened, whatever the
    // confinement. Kept so that a later QEMU or a display cannot open them silently.
    let shot = l.out("screen.ppm");
    l.refused(json!({"execute": "screendump", "arguments": {"filename": shot.to_str().unwrap()}}));
    assert!(!shot.exists());
    let mig = l.out("migrate.bin");
    let _ = l.qmp(
        json!({"execute": "migrate", "arguments": {"uri": format!("file:{}", mig.display())}}),
    );
    assert!(!mig.exists(), "{} was created by the VMM", mig.display());
    // Control: a migration to a stream the guest owns (a socket in its runtime
    // directory) connects.
    let own = world_listener(&l.runtime("migrate.sock"));
    let _ = l.qmp(json!({"execute": "migrate", "arguments": {
        "uri": format!("unix:{}", l.runtime("migrate.sock").display())}}));
    assert!(connected(&own), "control migration did not connect");
    drop(own);
    let _ = l.migration_end();
    // exec: runs a shell: -sandbox spawn=deny refuses the fork (QEMU may die of it).
    let mark = l.out("exec-ran");
    let _ = l.qmp_or_death(json!({"execute": "migrate", "arguments": {
        "uri": format!("exec:touch {}", mark.display())}}));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!mark.exists(), "migrate exec: ran a command on the host");
}

#[test]
fn attack_qmp_files_outside_the_plan_with_the_jail_alone() {
    require_env!();
    // DAC without Landlock: only the guest's uid and the mount namespace stand between
    // the VMM and world-readable/-writable host files. Before the jail all of these
    // were reachable here.
    let l = lab_with("alone", false, "dac");
    l.ok(blockdev("own", &l.a_disk));
    let world = l.out("world-readable.img");
    std::fs::write(&world, b"host data").unwrap();
    std::fs::set_permissions(&world, std::fs::Permissions::from_mode(0o666)).unwrap();
    l.refused(blockdev("world", &world));
    let log = l.out("new.log");
    l.refused(json!({"execute": "chardev-add", "arguments": {"id": "f",
        "backend": {"type": "file", "data": {"out": log.to_str().unwrap()}}}}));
    assert!(!log.exists(), "{} was created by the VMM", log.display());
    let mem = l.out("guest.mem");
    l.refused(
        json!({"execute": "object-add", "arguments": {"qom-type": "memory-backend-file",
        "id": "m", "mem-path": mem.to_str().unwrap(), "size": 1_048_576, "share": true}}),
    );
    assert!(!mem.exists(), "{} was created by the VMM", mem.display());
    let dump = l.out("guest.dump");
    l.refused(
        json!({"execute": "dump-guest-memory", "arguments": {"paging": false,
        "protocol": format!("file:{}", dump.display())}}),
    );
    assert!(!dump.exists(), "{} was created by the VMM", dump.display());
    // Control: the same commands on the guest's own runtime directory.
    let own = l.runtime("control.log");
    l.ok(json!({"execute": "chardev-add", "arguments": {"id": "own",
        "backend": {"type": "file", "data": {"out": own.to_str().unwrap()}}}}));
    assert!(own.exists());
}

/// Mount points of `pid` as it sees them (`/proc/PID/mountinfo` field 5).
fn mount_points(pid: i32) -> Vec<PathBuf> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .collect()
}

/// Each VMM has namespaces of its own: made ahead of time in a pool, a network or IPC
/// namespace is handed to one VMM only, never shared by two guests (nor with the host).
#[test]
fn jail_namespaces_are_each_guests_own() {
    require_env!();
    let l = lab("own-ns", true);
    let b = l.m.info("b").unwrap().pid.unwrap();
    let ns = |pid: &str, ns: &str| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
    for kind in ["mnt", "net", "ipc"] {
        let (a, b, host) = (
            ns(&l.pid().to_string(), kind),
            ns(&b.to_string(), kind),
            ns("self", kind),
        );
        assert_ne!(a, b, "guests a and b share a {kind} namespace");
        assert_ne!(a, host, "guest a shares the host's {kind} namespace");
        assert_ne!(b, host, "guest b shares the host's {kind} namespace");
    }
    // A third guest gets yet another one (a spare is never handed out twice). All three
    // stay alive while compared: a freed namespace's number may be reused.
    let c_disk = l.env.qcow2("c.qcow2");
    let c =
        l.m.start(
            &l.env.xml("c", &[(c_disk, "qcow2", false)]),
            StartOptions { paused: true },
        )
        .unwrap();
    let c_net = ns(&c.pid.unwrap().to_string(), "net");
    assert_ne!(c_net, ns(&l.pid().to_string(), "net"));
    assert_ne!(c_net, ns(&b.to_string(), "net"));
    l.m.destroy("c").unwrap();
}

#[test]
fn jail_shows_only_the_plan_and_the_vmm_runtime() {
    require_env!();
    let l = lab("shows", false);
    let pid = l.pid();
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    // Own mount, network and IPC namespaces.
    for ns in ["mnt", "net", "ipc"] {
        assert_ne!(
            std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap(),
            std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap(),
            "QEMU shares the host's {ns} namespace"
        );
    }
    // Only loopback.
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap();
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(str::trim))
        .collect();
    assert_eq!(ifaces, ["lo"]);
    // Exactly these mounts: the new root, the plan's objects, the runtime dir, and the
    // system paths the VMM runs from.
    let mut want: Vec<PathBuf> = vec![PathBuf::from("/")];
    want.extend(l.a.resources.iter().map(|r| r.path.clone()));
    want.push(l.a.runtime_dir.clone());
    // What every VMM needs from the host (the jail shows what the path-based models
    // grant): the existing ones, except top-level symlinks (`/lib ->
    // usr/lib`), which the jail recreates as symlinks; and the emulator.
    let ll = svirt_drivers::vmm_needs::VmmNeeds::default();
    for p in ll
        .exec_paths
        .iter()
        .chain(&ll.read_paths)
        .chain(&ll.base_devices)
    {
        let top_link = p.parent() == Some(Path::new("/")) && p.is_symlink();
        if p.exists() && !top_link {
            want.push(p.clone());
        }
    }
    want.push(std::fs::canonicalize(common::which("qemu-system-x86_64").unwrap()).unwrap());
    let mut got = mount_points(pid);
    got.sort();
    want.sort();
    assert_eq!(got, want, "the jail shows more or less than the plan");
    // The guest's disk is the host's file (same inode) and is writable; the system is
    // read-only.
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let opts = |mp: &Path| -> String {
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(mp.to_str().unwrap()))
            .unwrap();
        line.split(' ').nth(5).unwrap().to_string()
    };
    assert!(opts(&l.a_disk).starts_with("rw,"), "{}", opts(&l.a_disk));
    assert!(opts(&l.a_disk).contains("nosuid") && opts(&l.a_disk).contains("noexec"));
    assert!(opts(Path::new("/usr/lib")).starts_with("ro,"));
    assert!(!opts(Path::new("/usr/lib")).contains("noexec"));
    assert!(opts(Path::new("/usr/share/qemu")).contains("noexec"));
    assert!(opts(Path::new("/")).starts_with("ro,"));
    // Nothing of the jail is mounted in the host's namespace.
    assert!(!host_mounts.contains("svirt-jail"));
    drop(l);
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains("svirt-jail")
    );
}

#[test]
fn jail_tcp_chardev_is_reachable_from_the_host_and_udp_is_refused() {
    require_env!();
    let env = Env::new("tcpchr");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let port = free_port();
    let xml = env.xml("t", &[]).replace(
        "<serial ",
        &format!(
            "<serial type='tcp'><source mode='bind' host='127.0.0.1' service='{port}'/><target port='1'/></serial>\n<serial "
        ),
    );
    let info = m.start(&xml, StartOptions { paused: false }).unwrap();
    // The listener lives in the host's namespace (opened by the manager, passed as an
    // fd): the host connects to it, and QEMU holds it.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut b = [0u8; 1];
    // Either the guest's serial output or a timeout; never a refused or reset connection.
    match s.read(&mut b) {
        Ok(n) => assert!(n <= 1),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
    assert!(
        info.command_line
            .iter()
            .any(|a| a.starts_with("socket,id=charserial") && a.contains(",fd="))
    );
    m.destroy("t").unwrap();
    // A client chardev: the manager connects in the host's namespace; the host's
    // listener sees the connection QEMU holds.
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cport = host.local_addr().unwrap().port();
    let xml = env.xml("c", &[]).replace(
        "<serial ",
        &format!(
            "<serial type='tcp'><source mode='connect' host='127.0.0.1' service='{cport}'/><target port='1'/></serial>\n<serial "
        ),
    );
    m.start(&xml, StartOptions { paused: true }).unwrap();
    let (mut conn, _) = host.accept().unwrap();
    // QEMU holds the connection (the manager dropped its copy): no EOF while it runs.
    conn.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let e = conn.read(&mut b).map(|n| n.to_string());
    assert!(
        e.as_ref().is_err_and(|e| matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
        "the tcp client chardev's connection is not held by QEMU: {e:?}"
    );
    m.destroy("c").unwrap();
    // After QEMU is gone the connection ends.
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(matches!(conn.read(&mut b), Ok(0) | Err(_)));
    // UDP: QEMU 7.2 takes no fd for it; refused before anything changes.
    let xml = env.xml("u", &[]).replace(
        "<serial ",
        "<serial type='udp'><source mode='connect' host='127.0.0.1' service='9'/><target port='1'/></serial>\n<serial ",
    );
    let e = m.start(&xml, StartOptions { paused: true }).unwrap_err();
    assert!(e.to_string().contains("udp"), "{e}");
    env.assert_guest_dirs_gone("u", "refused udp chardev");
}

#[test]
fn jail_refuses_a_writable_object_beneath_a_read_only_one() {
    require_env!();
    let env = Env::new("nested");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let share = env.path("images/share");
    std::fs::create_dir(&share).unwrap();
    let inner = share.join("inner.img");
    std::fs::File::create(&inner)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let before = common::owner_mode(&inner);
    let xml = env.xml("n", &[(inner.clone(), "raw", false)]).replace(
        "<serial ",
        &format!(
            "<filesystem type='mount' accessmode='passthrough'><source dir='{}'/><target dir='share'/><readonly/></filesystem>\n<serial ",
            share.display()
        ),
    );
    // The jail mounts nothing inside another object: a writable disk inside a read-only
    // share is refused, naming both, and the start leaves the disk as it was.
    let e = m.start(&xml, StartOptions { paused: true }).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(inner.to_str().unwrap()) && msg.contains(share.to_str().unwrap()),
        "{msg}"
    );
    assert_eq!(common::owner_mode(&inner), before);
    env.assert_guest_dirs_gone("n", "refused nested object");
    // Control: the same disk beside the share (not beneath it) starts.
    let beside = env.raw("beside.img");
    let xml = env.xml("n", &[(beside, "raw", false)]).replace(
        "<serial ",
        &format!(
            "<filesystem type='mount' accessmode='passthrough'><source dir='{}'/><target dir='share'/><readonly/></filesystem>\n<serial ",
            share.display()
        ),
    );
    m.start(&xml, StartOptions { paused: true }).unwrap();
    m.destroy("n").unwrap();
}

#[test]
fn jail_shows_the_plans_unix_socket_and_the_vmm_connects() {
    require_env!();
    let env = Env::new("plansock");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let path = env.path("images/agent.sock");
    let l = UnixListener::bind(&path).unwrap();
    let xml = env.xml("s", &[]).replace(
        "<serial ",
        &format!(
            "<channel type='unix'><source mode='connect' path='{}'/><target type='virtio' name='org.svirt.test.0'/></channel>\n<serial ",
            path.display()
        ),
    );
    let info = m.start(&xml, StartOptions { paused: true }).unwrap();
    // The socket is a plan resource: bound into the jail at its own path, and QEMU's
    // connection reaches the host's listener.
    l.set_nonblocking(true).unwrap();
    assert!(
        common::poll_until(Duration::from_secs(2), || l.accept().is_ok()),
        "the plan's unix socket chardev did not connect"
    );
    assert!(
        mount_points(info.pid.unwrap()).contains(&path),
        "the socket is not shown in the jail"
    );
    m.destroy("s").unwrap();
}

#[test]
fn jail_refuses_a_pty_chardev_naming_it() {
    require_env!();
    let env = Env::new("pty");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let serial = env.path("images/p.serial.log");
    let xml = env.xml("p", &[]).replace(
        "<serial type='file'>",
        "<serial type='pty'><target port='1'/></serial>\n<serial type='file'>",
    );
    let e = m.start(&xml, StartOptions { paused: true }).unwrap_err();
    assert!(e.to_string().contains("pty"), "{e}");
    env.assert_guest_dirs_gone("p", "refused pty chardev");
    assert!(!serial.exists(), "the refused start left its serial log");
    // Control: without the pty the same guest starts.
    let xml = env.xml("p", &[]);
    m.start(&xml, StartOptions { paused: true }).unwrap();
    m.destroy("p").unwrap();
}

#[test]
fn jail_keeps_a_root_owned_symlink_spelling_working() {
    require_env!();
    let env = Env::new("spell");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let real = env.qcow2("real.qcow2");
    // A symlink root planted in a root-owned directory, and a directory reached through
    // one: the planner resolves both to the canonical objects; QEMU is told the XML's
    // spelling.
    let link = env.path("images/link.qcow2");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let real_dir = env.path("images/realdir");
    std::fs::create_dir(&real_dir).unwrap();
    let second = real_dir.join("second.raw");
    std::fs::File::create(&second)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let link_dir = env.path("images/linkdir");
    std::os::unix::fs::symlink(&real_dir, &link_dir).unwrap();
    let xml = env.xml(
        "sp",
        &[
            (link.clone(), "qcow2", false),
            (link_dir.join("second.raw"), "raw", false),
        ],
    );
    let info = m.start(&xml, StartOptions { paused: true }).unwrap();
    let mounts = mount_points(info.pid.unwrap());
    for p in [&real, &link, &second, &link_dir.join("second.raw")] {
        assert!(mounts.contains(p), "{} not shown in the jail", p.display());
    }
    // QEMU opened both disks (the start would have failed otherwise); the resources are
    // the canonical objects.
    assert!(info.resources.iter().any(|r| r.path == real));
    assert!(info.resources.iter().any(|r| r.path == second));
    m.destroy("sp").unwrap();
}

/// A confined VMM holds no capability, whatever uid it runs as: with DAC (its own uid)
/// and without (Landlock alone: QEMU runs as root), every set, the bounding set included,
/// is empty in the running QEMU, so a compromised VMM cannot chown, mknod or mount its way
/// out. Control: an unconfined guest (`--drivers none`, on purpose) keeps root's.
#[test]
fn a_confined_vmm_holds_no_capability_even_as_root() {
    require_env!();
    let caps = |pid: i32| -> Vec<(String, u64)> {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("Cap"))
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.to_string(), u64::from_str_radix(v.trim(), 16).unwrap())
            })
            .collect()
    };
    for (drivers, root) in [("landlock", true), ("dac,landlock", false)] {
        let env = Env::new("caps");
        let (m, _) = Manager::open(env.config(drivers)).unwrap();
        let info = m
            .start(&env.xml("c", &[]), StartOptions { paused: true })
            .unwrap();
        let pid = info.pid.unwrap();
        let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("Uid:")
                    .map(|u| u.split_whitespace().next().unwrap().to_string())
            })
            .unwrap();
        assert_eq!(uid == "0", root, "{drivers}: uid {uid}");
        let c = caps(pid);
        assert_eq!(c.len(), 5, "{c:?}");
        for (k, v) in &c {
            assert_eq!(*v, 0, "{drivers}: {k} is {v:x} in QEMU (uid {uid})");
        }
        m.destroy("c").unwrap();
    }
    let env = Env::new("caps");
    let (m, _) = Manager::open(env.config("none")).unwrap();
    let info = m
        .start(&env.xml("c", &[]), StartOptions { paused: true })
        .unwrap();
    let c = caps(info.pid.unwrap());
    assert!(
        c.iter().any(|(k, v)| k == "CapEff" && *v != 0),
        "control: an unconfined guest keeps root's capabilities: {c:?}"
    );
    m.destroy("c").unwrap();
}

/// The planner's view of the host is kept between starts, so it must see what changed:
/// a bind mount of /etc made after a first start (the view was built then) puts
/// /etc/passwd at a path in the images directory, and a guest naming it is refused as a
/// system object. Control: the same path before the mount (an ordinary file) starts.
#[test]
fn a_bind_mount_made_after_a_start_is_judged_at_the_next() {
    require_env!();
    let env = Env::new("mntcache");
    let (m, _) = Manager::open(env.config("dac,landlock")).unwrap();
    let dir = env.path("images/later");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("passwd");
    std::fs::write(&file, b"not the host's").unwrap();
    let xml = env.xml("b", &[(file.clone(), "raw", true)]);
    m.start(&xml, StartOptions { paused: true }).unwrap();
    m.destroy("b").unwrap();
    let status = std::process::Command::new("mount")
        .args(["--bind", "-o", "ro", "/etc"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "mount --bind /etc");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _u = Unmount(dir.clone());
    let e = m
        .start(&xml, StartOptions { paused: true })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/etc"),
        "the bind mount of /etc was not seen: {e}"
    );
    env.assert_guest_dirs_gone("b", "refused bind-mounted system file");
}
