//! libvirt's own test domains, run whole through the manager (`libvirt-corpus/`, its
//! README says where each comes from and how it was adapted). Every case is either
//! refused, naming what svirt cannot run, having touched nothing (a device svirt does not
//! run yet is refused by the manager, and its objects still planned by the planner as
//! libvirt labels them); or planned, each host object getting the SELinux label, access
//! and restore libvirt's SELinux driver gives it (`expected.tsv`), and then **what is
//! planned is what QEMU runs**:
//!
//! - every host path on QEMU's command line is a planned object (or svirt's own runtime
//!   directory, the host's firmware, the host's entropy device, or a socket QEMU creates),
//!   with the access the plan grants (read-only nodes for read-only objects);
//! - every planned object is on QEMU's command line (a virtiofs share and a TPM's state
//!   excepted: their helpers, virtiofsd and swtpm, get them, never QEMU);
//! - every device element of the XML yields its QEMU device, and every chardev its
//!   backend: nothing dropped, nothing added but the buses svirt adds for them.
//!
//! The manager runs the libvirt-like stack, SELinux and DAC, on a host root of its own
//! (one temporary directory per case holds the case's objects, the sysfs and `/dev`
//! entries the planner derives, and a selinuxfs stand-in saying "permissive"): labels are
//! planned, nothing is labeled, no QEMU is started. No case is skipped; a missing corpus
//! fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use common::{Env, require_env};
use svirt_domain::{Access, LevelSource, Plan, ProcessLabel, ResourceKind};
use svirt_labels::{Level, MlsRange};
use svirt_manager::Manager;
use svirt_testkit::corpus;

fn corpus_dir() -> PathBuf {
    corpus::locate(
        "SVIRT_LIBVIRT_CORPUS_DIR",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/libvirt-corpus"),
        "libvirt corpus",
    )
}

/// The level `@LEVEL@` resolves to (a dynamic level is not allocated by a dry run).
fn allocated() -> MlsRange {
    MlsRange::single(Level::pair(0, 264, 41))
}

/// The fd number QMP's listener would have.
const QMP_FD: i32 = 3;

struct Outcome {
    case: String,
    family: String,
    /// `planned`, `planned, refused at start`, or `refused`.
    status: &'static str,
    failures: Vec<String>,
}

/// `key: value` lines of `source.txt`.
fn source_fields(case_dir: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(case_dir.join("source.txt")).unwrap_or_default();
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for l in text.lines() {
        if let Some((k, v)) = l.split_once(':') {
            let e = out.entry(k.trim().to_string()).or_default();
            if !e.is_empty() {
                e.push('\n');
            }
            e.push_str(v.trim());
        }
    }
    out
}

/// The case's host root: the account databases DAC reads, and a SELinux host for the
/// SELinux driver (selinuxfs in permissive mode; the manager's own context, whose range is
/// the category range).
fn host_root(root: &Path) {
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    std::fs::write(etc.join("group"), "root:x:0:\n").unwrap();
    let fs = root.join("sys/fs/selinux");
    std::fs::create_dir_all(&fs).unwrap();
    std::fs::write(fs.join("enforce"), "0").unwrap();
    let attr = root.join("proc/self/attr");
    std::fs::create_dir_all(&attr).unwrap();
    std::fs::write(
        attr.join("current"),
        "system_u:system_r:virtd_t:s0-s0:c0.c1023\0",
    )
    .unwrap();
}

/// One case made real: its host root and objects, its XML with `@DIR@` filled in, and a
/// manager on that root with the SELinux and DAC drivers.
struct Setup {
    /// Owns the temporary directories (removed on drop).
    env: Env,
    /// The case directory, which is also the host root.
    dir: PathBuf,
    /// The manager's run directory (guests' runtime directories).
    run_dir: PathBuf,
    xml: String,
    built: corpus::Built,
}

impl Setup {
    fn new(case_dir: &Path) -> Result<(Setup, Manager), String> {
        let env = Env::new("lvcorpus");
        // The case's objects and the host root are one directory: XML paths are
        // `@DIR@/…`, derived ones (`/dev/vfio/N`, `/sys/bus/…`, the TPM state root) are
        // below it too.
        let dir = env.path("root");
        std::fs::create_dir(&dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        host_root(&dir);
        std::fs::create_dir(dir.join("nvram")).unwrap();
        // The manager makes a missing chardev output file at the XML's path taken below
        // the host root (`glue.rs`: `host.host_path(path)`), while the planner resolves
        // the XML's path itself; with a host root other than `/` the two differ. The
        // outputs a case names exist beforehand, and this mirror of the case directory
        // below itself gives that creation a directory to work in (it makes an empty file
        // there and removes it after the dry run); once the manager takes the XML's path
        // as the planner does, the mirror stays empty.
        std::fs::create_dir_all(dir.join(dir.strip_prefix("/").unwrap())).unwrap();
        let files = std::fs::read_to_string(case_dir.join("files.txt")).unwrap_or_default();
        let built = corpus::build_files(&dir, &files);
        let xml = std::fs::read_to_string(case_dir.join("domain.xml"))
            .unwrap()
            .replace("@DIR@", dir.to_str().unwrap());
        let mut cfg = env.config("selinux,dac");
        cfg.root_dir = dir.clone();
        cfg.nvram_dir = dir.join("nvram");
        // libvirt's place for emulated TPMs' state, below the case's root.
        cfg.tpm_state_dir = dir.join("var/lib/libvirt/swtpm");
        let run_dir = cfg.run_dir.clone();
        let (m, _) = Manager::open(cfg).map_err(|e| format!("Manager::open: {e}"))?;
        Ok((
            Setup {
                env,
                dir,
                run_dir,
                xml,
                built,
            },
            m,
        ))
    }
}

fn run_case(case_dir: &Path) -> Outcome {
    let case = case_dir.file_name().unwrap().to_str().unwrap().to_string();
    let fields = source_fields(case_dir);
    let family = fields.get("family").cloned().unwrap_or_default();
    let mut out = Outcome {
        case: case.clone(),
        family,
        status: "planned",
        failures: Vec::new(),
    };
    let f = &mut out.failures;
    for key in ["libvirt", "commit", "family"] {
        if !fields.contains_key(key) {
            f.push(format!("source.txt has no '{key}:' line"));
        }
    }
    let word = corpus::expected_error_word(case_dir);
    let expected_tsv = std::fs::read_to_string(case_dir.join("expected.tsv")).ok();
    if word.is_none() && expected_tsv.is_none() {
        f.push("neither expected.tsv nor expected-error.txt".into());
        return out;
    }
    out.status = match (&word, &expected_tsv) {
        (None, _) => "planned",
        (Some(_), Some(_)) => "planned, refused at start",
        (Some(_), None) => "refused",
    };

    let (setup, m) = match Setup::new(case_dir) {
        Ok(s) => s,
        Err(e) => {
            f.push(e);
            return out;
        }
    };
    let Setup {
        env: _env,
        dir,
        run_dir,
        xml,
        built,
    } = setup;
    let before = corpus::snapshot(&built.objects);
    let before_tree = corpus::list_tree(&dir);
    let plan = m.plan(&xml);
    let argv = plan
        .as_ref()
        .ok()
        .map(|_| m.command_line(&xml, false, QMP_FD));
    // A dry run changes no object and leaves nothing behind, whatever its outcome.
    if corpus::snapshot(&built.objects) != before {
        f.push("objects changed by planning".into());
    }
    let after_tree = corpus::list_tree(&dir);
    if after_tree != before_tree {
        let new: Vec<_> = after_tree
            .iter()
            .filter(|p| !before_tree.contains(p))
            .collect();
        let gone: Vec<_> = before_tree
            .iter()
            .filter(|p| !after_tree.contains(p))
            .collect();
        f.push(format!("planning left {new:?} and removed {gone:?}"));
    }

    if let Some(word) = &word {
        let err = match (&plan, &argv) {
            (Err(e), _) => Some(("plan", e.to_string())),
            (Ok(_), Some(Err(e))) => Some(("command line", e.to_string())),
            _ => None,
        };
        match err {
            None => f.push(format!(
                "expected a refusal containing '{word}', got a plan and a command line"
            )),
            Some((stage, e)) => {
                if !e.to_lowercase().contains(word) {
                    f.push(format!("{stage} refused with '{e}', which lacks '{word}'"));
                }
            }
        }
    }
    let Some(tsv) = expected_tsv else {
        return out;
    };
    let plan = match (plan, &word) {
        (Ok(p), _) => p,
        // Planned, refused at start: the manager refuses to plan what it would refuse to
        // start, so the objects are planned by the planner alone, on the same host root
        // with the same models: what libvirt would label, and how, for a device svirt
        // does not run yet.
        (Err(_), Some(_)) => match planner_plan(&dir, &xml) {
            Ok(p) => p,
            Err(e) => {
                f.push(format!("the planner refused it: {e}"));
                return out;
            }
        },
        (Err(e), None) => {
            f.push(format!("planning failed: {e}"));
            return out;
        }
    };
    check_labels(case_dir, &dir, &plan, &tsv, f);
    if word.is_some() {
        return out;
    }
    if std::env::var_os("SVIRT_LIBVIRT_CORPUS_ARGV").is_some()
        && let Some(Ok(a)) = &argv
    {
        eprintln!("{case}: {}", a.join(" "));
    }
    match argv {
        Some(Ok(argv)) => check_argv(&dir, &run_dir, &xml, &plan, &argv, f),
        Some(Err(e)) => f.push(format!("command line refused: {e}")),
        None => {}
    }
    drop(built);
    out
}

/// The plan of the planner alone (`svirt-domain`) on the case's host root, for the models
/// of the manager's stack (SELinux, DAC).
fn planner_plan(dir: &Path, xml: &str) -> Result<Plan, String> {
    let host = svirt_domain::Host::new(dir);
    let mut cfg = svirt_domain::PlanConfig::for_host(&host).map_err(|e| e.to_string())?;
    cfg.models = vec![svirt_domain::Model::Selinux, svirt_domain::Model::Dac];
    svirt_domain::plan_xml(xml, &host, &cfg)
        .map(|p| p.plan)
        .map_err(|e| e.to_string())
}

/// Labels, access and restore of every planned object, and the process label.
fn check_labels(case_dir: &Path, dir: &Path, plan: &Plan, tsv: &str, f: &mut Vec<String>) {
    let level = allocated();
    let shown = match plan.level {
        LevelSource::Static(ref r) => Some(r),
        _ => None,
    };
    let planned: Vec<corpus::PlannedObject> = plan
        .resources
        .iter()
        .map(|r| corpus::PlannedObject {
            path: r.resource.path.clone(),
            recursive: r.resource.recursive,
            access: access(r.resource.access).into(),
            label: r.selinux.as_ref().map(|t| t.display(shown)),
            label_resolved: r.selinux.as_ref().map(|t| t.resolve(&level).to_string()),
            restore: r.selinux_restore,
        })
        .collect();
    let expected = match corpus::parse_expected(tsv) {
        Ok(e) => e,
        Err(e) => {
            f.push(e);
            return;
        }
    };
    let roots: Vec<&Path> = planned
        .iter()
        .filter(|p| p.recursive)
        .map(|p| p.path.as_path())
        .collect();
    let trees = corpus::tree_ids(&roots);
    let (mut found, checked) =
        corpus::check_expected(dir, &expected, &planned, &trees, &level.to_string());
    f.append(&mut found);
    // Nothing planned that the case does not expect.
    for (i, p) in planned.iter().enumerate() {
        if !checked.iter().any(|c| c.holder == Some(i)) {
            f.push(format!(
                "{} ({}) is planned but expected.tsv does not list it",
                p.path.display(),
                plan.resources[i].resource.device
            ));
        }
    }
    if let Ok(want) = std::fs::read_to_string(case_dir.join("expected-process.txt")) {
        let want = want.trim();
        match &plan.selinux_process {
            ProcessLabel::Label(t) => {
                let got = t.display(shown);
                if got != want {
                    f.push(format!("process {got}, expected {want}"));
                }
            }
            ProcessLabel::Unconfined if want == "unconfined" => {}
            ProcessLabel::Unconfined => f.push(format!("process unconfined, expected {want}")),
        }
    }
}

fn access(a: Access) -> &'static str {
    match a {
        Access::Rw => "rw",
        Access::Ro => "ro",
    }
}

/// Splits a QEMU option string at unescaped commas (`,,` is a comma) into `key=value`
/// pairs (a bare word has an empty key).
fn split_opts(s: &str) -> Vec<(String, String)> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                parts.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts
        .into_iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (String::new(), p),
        })
        .collect()
}

/// A host path QEMU is told.
#[derive(Debug)]
struct ArgPath {
    path: PathBuf,
    /// The option it came with (`-blockdev`, `-chardev`, …).
    opt: String,
    /// Whether QEMU opens it read-only, where the option says.
    ro: Option<bool>,
    /// A unix socket QEMU listens on (creates).
    server_socket: bool,
}

/// Every host path on QEMU's command line: `-blockdev` JSON strings, option values,
/// whole file-name arguments, the VNC socket. Anything that looks like an absolute path
/// counts, so a new option cannot hide one (the kernel command line excepted: it is the
/// guest's).
fn argv_paths(argv: &[String]) -> Vec<ArgPath> {
    fn json_paths(v: &serde_json::Value, ro: Option<bool>, out: &mut Vec<(PathBuf, Option<bool>)>) {
        match v {
            serde_json::Value::String(s) if s.starts_with('/') => out.push((s.into(), ro)),
            serde_json::Value::Object(m) => {
                let ro = m.get("read-only").and_then(|x| x.as_bool()).or(ro);
                for x in m.values() {
                    json_paths(x, ro, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| json_paths(x, ro, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let mut i = 1;
    while i < argv.len() {
        let opt = argv[i].clone();
        let Some(val) = argv.get(i + 1).filter(|_| opt.starts_with('-')) else {
            if argv[i].starts_with('/') {
                out.push(ArgPath {
                    path: argv[i].clone().into(),
                    opt: "(bare)".into(),
                    ro: None,
                    server_socket: false,
                });
            }
            i += 1;
            continue;
        };
        let mut push = |path: &str, ro: Option<bool>, server_socket: bool| {
            out.push(ArgPath {
                path: path.into(),
                opt: opt.clone(),
                ro,
                server_socket,
            })
        };
        match opt.as_str() {
            // Flags without a value.
            "-no-user-config" | "-nodefaults" | "-nographic" | "-S" => {
                i += 1;
                continue;
            }
            "-append" => {}
            "-kernel" | "-initrd" | "-dtb" | "-bios" => push(val, Some(true), false),
            "-vnc" => {
                if let Some(p) = val.strip_prefix("unix:") {
                    push(p, None, true);
                }
            }
            "-spice" => {
                if let Some(p) = val.split(',').find_map(|kv| kv.strip_prefix("addr=")) {
                    push(p, None, true);
                }
            }
            _ if val.starts_with('{') => {
                let v: serde_json::Value = serde_json::from_str(val).unwrap();
                let mut found = Vec::new();
                json_paths(&v, None, &mut found);
                for (p, ro) in found {
                    push(p.to_str().unwrap(), ro, false);
                }
            }
            _ => {
                let kv = split_opts(val);
                let has = |k: &str, v: &str| kv.iter().any(|(a, b)| a == k && b == v);
                let ro = has("readonly", "on").then_some(true);
                let server = kv
                    .first()
                    .is_some_and(|(k, v)| k.is_empty() && v == "socket")
                    && has("server", "on");
                for (k, v) in &kv {
                    // The guest's side: a 9p mount tag, a port name.
                    if ["mount_tag", "name", "tag"].contains(&k.as_str()) {
                        continue;
                    }
                    if v.starts_with('/') {
                        push(
                            v,
                            if k == "path" { ro } else { None },
                            server && k == "path",
                        );
                    }
                }
            }
        }
        i += 2;
    }
    out
}

/// The values of every `opt` argument, split into options.
fn option_values(argv: &[String], opt: &str) -> Vec<Vec<(String, String)>> {
    argv.windows(2)
        .filter(|w| w[0] == opt)
        .map(|w| {
            if w[1].starts_with('{') {
                let v: serde_json::Value = serde_json::from_str(&w[1]).unwrap();
                v.as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| {
                                let k = if k == "driver" { "" } else { k.as_str() };
                                (k.to_string(), v.as_str().unwrap_or("").to_string())
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                split_opts(&w[1])
            }
        })
        .collect()
}

/// What svirt gives QEMU, checked against the plan and the XML.
fn check_argv(
    dir: &Path,
    run_dir: &Path,
    xml: &str,
    plan: &Plan,
    argv: &[String],
    f: &mut Vec<String>,
) {
    let doc = roxmltree::Document::parse(xml).unwrap();
    let devices = doc
        .root_element()
        .children()
        .find(|c| c.has_tag_name("devices"));
    let elements: Vec<roxmltree::Node<'_, '_>> = devices
        .map(|d| d.children().filter(|c| c.is_element()).collect())
        .unwrap_or_default();
    // Shares run by virtiofsd, not QEMU, by their target (mount tag).
    let virtiofs_tags: HashSet<String> = elements
        .iter()
        .filter(|e| e.has_tag_name("filesystem"))
        .filter(|e| {
            e.children()
                .any(|c| c.has_tag_name("driver") && c.attribute("type") == Some("virtiofs"))
        })
        .filter_map(|e| {
            e.children()
                .find(|c| c.has_tag_name("target"))
                .and_then(|t| t.attribute("dir"))
                .map(str::to_string)
        })
        .collect();

    let paths = argv_paths(argv);
    let planned: BTreeMap<&Path, &svirt_domain::PlannedResource> = plan
        .resources
        .iter()
        .map(|r| (r.resource.path.as_path(), r))
        .collect();
    let with = |p: &Path, ext: &str| {
        let mut s = p.as_os_str().to_os_string();
        s.push(ext);
        PathBuf::from(s)
    };
    // 1. Every host path QEMU is given is planned, with the access QEMU opens it with.
    let mut given: HashSet<PathBuf> = HashSet::new();
    for a in &paths {
        let p = a.path.as_path();
        given.insert(p.to_path_buf());
        if let Some(r) = planned.get(p) {
            if let Some(ro) = a.ro
                && ro != (r.resource.access == Access::Ro)
            {
                f.push(format!(
                    "QEMU opens {} {} ({}), the plan grants {}",
                    p.display(),
                    if ro { "read-only" } else { "read-write" },
                    a.opt,
                    access(r.resource.access)
                ));
            }
            continue;
        }
        // A pipe chardev `p` is `p.in` and `p.out` when both exist.
        if planned.contains_key(with(p, ".in").as_path())
            && planned.contains_key(with(p, ".out").as_path())
        {
            given.insert(with(p, ".in"));
            given.insert(with(p, ".out"));
            continue;
        }
        let allowed = p.starts_with(run_dir)
            || svirt_domain::in_system_firmware_dir(p)
            || p == Path::new("/dev/urandom")
            || p == Path::new("/dev/random")
            // A socket QEMU listens on and makes itself: no host object to plan yet.
            || (a.server_socket && p.starts_with(dir) && std::fs::symlink_metadata(p).is_err());
        if !allowed {
            f.push(format!(
                "QEMU is given {} ({}), which the plan does not hold",
                p.display(),
                a.opt
            ));
        }
    }
    // 2. Every planned object is given to QEMU (or to its helper).
    for r in &plan.resources {
        let p = &r.resource.path;
        if given.contains(p) {
            continue;
        }
        // virtiofsd serves a virtiofs share, swtpm a TPM's state: QEMU gets neither.
        let helper = (r.resource.kind == ResourceKind::FilesystemTree
            && virtiofs_tags
                .iter()
                .any(|t| r.resource.device == format!("filesystem {t}")))
            || r.resource.kind == ResourceKind::TpmState;
        if !helper {
            f.push(format!(
                "{} ({}) is planned but QEMU is not given it",
                p.display(),
                r.resource.device
            ));
        }
    }
    // 3. Every device element yields its QEMU device; every chardev its backend.
    check_devices(&elements, argv, f);
}

/// The QEMU device libvirt gives QEMU for each element (svirt's documented choices where
/// they differ: devices on the machine's own buses, a USB controller of svirt's model when
/// the XML names none), compared as multisets with the `-device` arguments.
fn check_devices(elements: &[roxmltree::Node<'_, '_>], argv: &[String], f: &mut Vec<String>) {
    const USB_HOSTS: &[&str] = &[
        "qemu-xhci",
        "nec-usb-xhci",
        "piix3-usb-uhci",
        "piix4-usb-uhci",
        "usb-ehci",
        "ich9-usb-ehci1",
    ];
    fn child<'a, 'i>(n: &roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
        n.children().find(|c| c.has_tag_name(name))
    }
    let mut want: Vec<String> = Vec::new();
    let mut want_chardevs: Vec<String> = Vec::new();
    let mut want_logs = 0;
    let mut vnc = 0;
    let mut serial_ports = false;
    let mut virtio_serial = false;
    let mut usb_devices = false;
    let mut usb_controller = false;
    let chardev_backend = |e: &roxmltree::Node<'_, '_>| -> String {
        match e.attribute("type").unwrap_or("pty") {
            "unix" | "tcp" => "socket",
            "dev" => "tty",
            t => t,
        }
        .to_string()
    };
    for e in elements {
        let name = e.tag_name().name();
        let target = child(e, "target");
        let mut dev = |d: &str| want.push(d.to_string());
        match name {
            "disk" => {
                let bus = target.and_then(|t| t.attribute("bus"));
                let tdev = target.and_then(|t| t.attribute("dev")).unwrap_or("");
                match e.attribute("device").unwrap_or("disk") {
                    "cdrom" => dev("ide-cd"),
                    "floppy" => dev("floppy"),
                    _ => match bus {
                        Some("ide" | "sata") => dev("ide-hd"),
                        Some("virtio") => dev("virtio-blk-pci"),
                        None if tdev.starts_with("vd") => dev("virtio-blk-pci"),
                        None => dev("ide-hd"),
                        Some(b) => dev(&format!("(disk on bus {b})")),
                    },
                }
            }
            "filesystem" => {
                let virtiofs =
                    child(e, "driver").and_then(|d| d.attribute("type")) == Some("virtiofs");
                dev(if virtiofs {
                    "vhost-user-fs-pci"
                } else {
                    "virtio-9p-pci"
                });
            }
            "serial" | "parallel" | "channel" | "console" => {
                let ttype = target.and_then(|t| t.attribute("type"));
                let device = match (name, ttype) {
                    ("serial", _) => {
                        serial_ports = true;
                        Some("isa-serial")
                    }
                    ("parallel", _) => Some("isa-parallel"),
                    ("channel", _) => {
                        virtio_serial = true;
                        Some("virtserialport")
                    }
                    ("console", Some("virtio")) => {
                        virtio_serial = true;
                        Some("virtconsole")
                    }
                    // A serial console is the first serial port's other name.
                    ("console", _) if serial_ports => None,
                    _ => {
                        serial_ports = true;
                        Some("isa-serial")
                    }
                };
                if let Some(d) = device {
                    dev(d);
                    want_chardevs.push(chardev_backend(e));
                    if child(e, "log").is_some() {
                        want_logs += 1;
                    }
                }
            }
            "rng" => dev("virtio-rng-pci"),
            "memballoon" => {
                if e.attribute("model") != Some("none") {
                    dev("virtio-balloon-pci");
                }
            }
            "input" => {
                let ty = e.attribute("type").unwrap_or("");
                match e.attribute("bus") {
                    Some("usb") => {
                        usb_devices = true;
                        dev(match ty {
                            "tablet" => "usb-tablet",
                            "mouse" => "usb-mouse",
                            _ => "usb-kbd",
                        });
                    }
                    Some("virtio") => dev(&format!("virtio-{ty}-pci")),
                    // PS/2: the machine's own.
                    _ => {}
                }
            }
            "video" => match child(e, "model").and_then(|m| m.attribute("type")) {
                Some("none") => {}
                Some("cirrus") => dev("cirrus-vga"),
                Some("virtio") => dev("virtio-vga"),
                Some("qxl") => dev("qxl-vga"),
                Some("bochs") => dev("bochs-display"),
                _ => dev("VGA"),
            },
            "graphics" => vnc += 1,
            "watchdog" => dev(e.attribute("model").unwrap_or("")),
            "tpm" => dev(e.attribute("model").unwrap_or("tpm-tis")),
            "controller" if e.attribute("type") == Some("usb") => match e.attribute("model") {
                Some("none") => {}
                None => {
                    usb_controller = true;
                    dev("(usb host controller)");
                }
                Some(m) => {
                    usb_controller = true;
                    dev(match m {
                        "nec-xhci" => "nec-usb-xhci",
                        "piix3-uhci" => "piix3-usb-uhci",
                        "piix4-uhci" => "piix4-usb-uhci",
                        "ehci" => "usb-ehci",
                        "ich9-ehci1" => "ich9-usb-ehci1",
                        other => other,
                    })
                }
            },
            // The machine's buses (svirt puts its devices on the root bus), the emulator,
            // no audio.
            "controller" | "emulator" | "audio" => {}
            other => dev(&format!("(<{other}>)")),
        }
    }
    if virtio_serial {
        want.push("virtio-serial-pci".into());
    }
    if usb_devices && !usb_controller {
        want.push("(usb host controller)".into());
    }
    let mut got: Vec<String> = option_values(argv, "-device")
        .into_iter()
        .filter_map(|kv| kv.into_iter().find(|(k, _)| k.is_empty()).map(|(_, v)| v))
        .collect();
    // A USB controller the XML names no model of may be any host controller.
    for w in want.iter_mut().filter(|w| *w == "(usb host controller)") {
        if let Some(g) = got.iter().find(|g| USB_HOSTS.contains(&g.as_str())) {
            *w = g.clone();
        }
    }
    want.sort();
    got.sort();
    if want != got {
        f.push(format!("QEMU devices {got:?}, the XML asks for {want:?}"));
    }
    // The chardevs of the guest's serial ports, consoles and channels (not QMP's, the
    // TPM's or a vhost-user device's): those the XML's chardev elements become.
    let port_chardevs: HashSet<String> = option_values(argv, "-device")
        .into_iter()
        .filter(|kv| {
            kv.iter().any(|(k, v)| {
                k.is_empty()
                    && [
                        "isa-serial",
                        "isa-parallel",
                        "virtserialport",
                        "virtconsole",
                    ]
                    .contains(&v.as_str())
            })
        })
        .filter_map(|kv| kv.into_iter().find(|(k, _)| k == "chardev").map(|(_, v)| v))
        .collect();
    let mut got_chardevs: Vec<String> = option_values(argv, "-chardev")
        .into_iter()
        .filter(|kv| {
            kv.iter()
                .any(|(k, v)| k == "id" && port_chardevs.contains(v))
        })
        .filter_map(|kv| kv.into_iter().find(|(k, _)| k.is_empty()).map(|(_, v)| v))
        .collect();
    want_chardevs.sort();
    got_chardevs.sort();
    if want_chardevs != got_chardevs {
        f.push(format!(
            "QEMU chardev backends {got_chardevs:?}, the XML asks for {want_chardevs:?}"
        ));
    }
    let got_logs = option_values(argv, "-chardev")
        .iter()
        .filter(|kv| kv.iter().any(|(k, _)| k == "logfile"))
        .count();
    if got_logs != want_logs {
        f.push(format!(
            "{got_logs} chardev logs on QEMU's command line, the XML has {want_logs}"
        ));
    }
    let got_vnc = argv
        .iter()
        .filter(|a| *a == "-vnc" || *a == "-spice")
        .count();
    if got_vnc != vnc {
        f.push(format!(
            "{got_vnc} -vnc/-spice on QEMU's command line, the XML has {vnc} <graphics>"
        ));
    }
}

#[test]
fn every_libvirt_case() {
    require_env!();
    svirt_testkit::qemu_img();
    let started = std::time::Instant::now();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 60, "only {} cases found", cases.len());
    let mut bad = Vec::new();
    let mut tally: BTreeMap<String, BTreeMap<&'static str, usize>> = BTreeMap::new();
    for c in &cases {
        if !c.join("domain.xml").is_file() {
            bad.push(format!("{} (no domain.xml)", c.display()));
            continue;
        }
        let o = run_case(c);
        *tally
            .entry(o.family.clone())
            .or_default()
            .entry(o.status)
            .or_default() += 1;
        if o.failures.is_empty() {
            eprintln!("libvirt {} [{}]: ok ({})", o.case, o.family, o.status);
        } else {
            eprintln!(
                "libvirt {} [{}]: FAILED\n  {}",
                o.case,
                o.family,
                o.failures.join("\n  ")
            );
            bad.push(o.case);
        }
    }
    for (family, counts) in &tally {
        let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
        eprintln!("libvirt corpus: {family}: {}", counts.join("; "));
    }
    eprintln!(
        "libvirt corpus: {} cases, {} failed, {:.1} s",
        cases.len(),
        bad.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(bad.is_empty(), "failed cases: {bad:?}");
}

/// The checks fail where they must: on a real case (`selinux-disks`, planned and given to
/// QEMU), a plan labeling an object QEMU is not given, QEMU given a host path never
/// planned, a device dropped, an object opened with other access than planned, and a label
/// other than libvirt's are each caught (and the unchanged case passes: control).
#[test]
fn checks_catch_a_plan_and_a_command_line_that_disagree() {
    require_env!();
    let case = corpus_dir().join("selinux-disks");
    let (s, m) = Setup::new(&case).unwrap();
    let plan = m.plan(&s.xml).unwrap();
    let argv = m.command_line(&s.xml, false, QMP_FD).unwrap();
    let tsv = std::fs::read_to_string(case.join("expected.tsv")).unwrap();
    let check = |plan: &Plan, argv: &[String], tsv: &str| {
        let mut f = Vec::new();
        check_labels(&case, &s.dir, plan, tsv, &mut f);
        check_argv(&s.dir, &s.run_dir, &s.xml, plan, argv, &mut f);
        f
    };
    assert!(check(&plan, &argv, &tsv).is_empty(), "control");
    let plain = s.dir.join("plain.raw");
    let plain_s = plain.to_str().unwrap();
    let has = |f: &[String], what: &str| f.iter().any(|l| l.contains(what));

    // QEMU given a path the plan does not hold (and the planned one not given).
    let elsewhere: Vec<String> = argv
        .iter()
        .map(|a| a.replace(plain_s, "/var/tmp/unplanned.raw"))
        .collect();
    let f = check(&plan, &elsewhere, &tsv);
    assert!(
        has(
            &f,
            "/var/tmp/unplanned.raw (-blockdev), which the plan does not hold"
        ),
        "{f:?}"
    );
    assert!(
        has(
            &f,
            "plain.raw (disk vda) is planned but QEMU is not given it"
        ),
        "{f:?}"
    );

    // A planned object QEMU is not given.
    let mut extra = plan.clone();
    let mut r = extra.resources[0].clone();
    r.resource.path = s.dir.join("extra.raw");
    r.resource.device = "disk vdz".into();
    extra.resources.push(r);
    let f = check(&extra, &argv, &tsv);
    assert!(
        has(
            &f,
            "extra.raw (disk vdz) is planned but QEMU is not given it"
        ),
        "{f:?}"
    );
    assert!(has(&f, "expected.tsv does not list it"), "{f:?}");

    // A device dropped: its -device argument (and its nodes) gone.
    let i = argv
        .iter()
        .position(|a| a.starts_with("virtio-blk-pci,drive=drive0"))
        .unwrap();
    let mut dropped = argv.clone();
    dropped.drain(i - 1..=i);
    let f = check(&plan, &dropped, &tsv);
    assert!(has(&f, "QEMU devices"), "{f:?}");

    // An object opened read-write that the plan grants read-only.
    let readonly = s.dir.join("readonly.raw");
    let rw: Vec<String> = argv
        .iter()
        .map(|a| {
            if a.contains(readonly.to_str().unwrap()) {
                a.replace("\"read-only\":true", "\"read-only\":false")
            } else {
                a.clone()
            }
        })
        .collect();
    let f = check(&plan, &rw, &tsv);
    assert!(
        has(
            &f,
            "readonly.raw read-write (-blockdev), the plan grants ro"
        ),
        "{f:?}"
    );

    // A label other than libvirt's.
    let wrong = tsv.replace(
        "shared.raw\tsystem_u:object_r:svirt_image_t:s0\t",
        "shared.raw\tsystem_u:object_r:virt_content_t:s0\t",
    );
    let f = check(&plan, &argv, &wrong);
    assert!(
        has(&f, "shared.raw: label system_u:object_r:svirt_image_t:s0"),
        "{f:?}"
    );
}
