//! `svirt-probe`: the one static binary the enforcement lab puts in its initramfs.
//!
//! It is every program of the SELinux scenario: the policy loader and file labeler (run
//! unconfined), the stand-in manager (a copy labeled `virtd_exec_t`), the compromised VMM
//! (a copy labeled `qemu_exec_t`, invoked qemu-style), and the checker that compares the
//! kernel's decisions with the expected table. For the AppArmor scenario it also enters
//! profiles at exec, plays the same compromised VMM and checks AppArmor's audit records
//! (`aa-*` commands, `apparmor.rs`). See docs/lab.md.

mod apparmor;
mod check;
mod error;
mod hostcheck;
mod manager;
mod model;
mod plan;
mod qmp;
mod selinux;
mod vmm;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread::sleep;
use std::time::{Duration, Instant};

use error::{Context, Error, Result};

const USAGE: &str = "usage: svirt-probe COMMAND ...
  load-policy POLICY [--selinuxfs DIR]     load a binary policy with one write()
  setlabel PATH CONTEXT                    set security.selinux (no symlink follow)
  getlabel PATH                            print security.selinux
  context [PID]                            print /proc/PID/attr/current (default self)
  exec [--null-stdio | --stdio FILE] PROGRAM [ARGS...]
                                           execv PROGRAM (one step of a domain transition chain);
                                           --null-stdio: stdio from a /dev/null this domain opened;
                                           --stdio FILE: stdin /dev/null, stdout+stderr appended to FILE
  manager --plan F --state DIR --vmm F [--timeout SECS]
                                           stand-in manager (see docs/lab.md)
  vmm --name NAME [--attack F] [--linger SECS]
                                           compromised VMM
  (invoked as virtiofsd)                   a compromised virtiofsd: the operations listed in
                                           SHARED_DIR/.svirt-probe-targets, results beside it
  (invoked as qemu-system-*)               the same, qemu-style: `-name guest=NAME`, serves QMP on
                                           `-chardev socket,id=X,fd=N,server=on` + `-mon chardev=X,mode=control`;
                                           env SVIRT_PROBE_ATTACK (default /lab/etc/attack.plan),
                                           SVIRT_PROBE_LINGER_SECS (default 600)
  snapshot --plan F --attack F [--pids F] --out F
  wait-line --line TEXT --timeout SECS FILE...
  list-checks --plan F --attack F --expected F      every check name (VM and host checks)
  check --plan F --attack F --expected F --before F --running F --after F --dmesg F
 AppArmor scenario:
  aa-exec PROFILE PROGRAM [ARGS...]        write `exec PROFILE` to /proc/thread-self/attr/apparmor/exec, execv
  try read|write|stat|connect|bpf PATH    one operation; exit 0 ok, 13 EACCES, 1 other errno
  breach-jail --pid PID PATH...           make PATHs visible read-write in PID's mount namespace (jail)
 BPF-LSM svirtd scenario:
  pidfd-exec PID FD PROGRAM [ARGS...]      pidfd_open(PID) as fd FD (inherited), execv PROGRAM: a
                                           pidfd for bpftool's task-storage key (`key hex FD 00 00 00`)
  aa-snapshot [--pids F] --out F           AppArmor labels of the pids file's processes + loaded profiles
  aa-list-checks --plan F --attack F --expected F
  aa-check --plan F --attack F --expected F --running F --after F --dmesg F --denials F
  aa-denial-counts --plan F --attack F --expected F
                                           per guest: `NAME N`, the DENIED records `svirt denials` lists
 host side:
  aa-expect --plan F --attack F [--dac yes]
                                           the expected table from AppArmor's semantics (see apparmor.rs);
                                           --dac yes: svirt's DAC driver stacked first
  model-queries --plan F --attack F --labels F     `svirt explain --batch` requests, one per
                                                   permission each operation needs
  model-expect --plan F --attack F --labels F --answers F
                                                   the batch answers folded into the expected table
  host-check --plan F --attack F --expected F --console F --avc F --svirt F
                                                   `svirt denials` / `svirt explain --avc` on the
                                                   run's AVC lines";

/// `--key value` options plus positional arguments.
struct Args {
    opts: BTreeMap<String, String>,
    positional: Vec<String>,
}

impl Args {
    fn parse(args: &[String]) -> Result<Self> {
        let mut opts = BTreeMap::new();
        let mut positional = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(key) = a.strip_prefix("--") {
                let v = it
                    .next()
                    .ok_or_else(|| Error::msg(format!("--{key} needs a value")))?;
                opts.insert(key.to_string(), v.clone());
            } else {
                positional.push(a.clone());
            }
        }
        Ok(Self { opts, positional })
    }

    fn req(&self, key: &str) -> Result<PathBuf> {
        self.opts
            .get(key)
            .map(PathBuf::from)
            .ok_or_else(|| Error::msg(format!("missing --{key}")))
    }

    fn secs(&self, key: &str, default: u64) -> Result<Duration> {
        match self.opts.get(key) {
            None => Ok(Duration::from_secs(default)),
            Some(v) => v
                .parse()
                .map(Duration::from_secs)
                .map_err(|_| Error::msg(format!("--{key}: {v:?} is not a number of seconds"))),
        }
    }

    fn pos(&self, i: usize, what: &str) -> Result<&str> {
        self.positional
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| Error::msg(format!("missing {what}")))
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let argv0 = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let result = if argv0.starts_with("qemu-system") {
        run_as_qemu(&argv[1..])
    } else if argv0 == "virtiofsd" {
        run_as_virtiofsd(&argv[1..])
    } else {
        match argv.get(1) {
            Some(cmd) => dispatch(cmd, &argv[2..]),
            None => Err(Error::msg(USAGE)),
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("svirt-probe: {e}");
            ExitCode::from(2)
        }
    }
}

/// A compromised virtiofsd, invoked as svirtd invokes virtiofsd (`--shared-dir=DIR`,
/// the rest ignored): performs each operation `DIR/.svirt-probe-targets` lists (`read
/// PATH`, `write PATH`, `stat PATH`, one per line) from inside svirt's confinement of
/// virtiofsd, writes `OP PATH RESULT` lines to `DIR/.svirt-probe-results`, and exits 1
/// (QEMU then fails its vhost-user start: the test needs only the results).
fn run_as_virtiofsd(args: &[String]) -> Result<bool> {
    let dir = args
        .iter()
        .find_map(|a| a.strip_prefix("--shared-dir="))
        .ok_or_else(|| Error::msg("as virtiofsd: no --shared-dir="))?;
    let dir = Path::new(dir);
    let targets = fs::read_to_string(dir.join(".svirt-probe-targets"))
        .ctx(|| ".svirt-probe-targets".into())?;
    let mut out = String::new();
    for line in targets.lines().filter(|l| !l.trim().is_empty()) {
        let (op, path) = line
            .split_once(' ')
            .ok_or_else(|| Error::msg(format!("bad target line {line:?}")))?;
        let action = match op {
            "read" => plan::Action::Read,
            "write" => plan::Action::Write,
            "stat" => plan::Action::Stat,
            other => return Err(Error::msg(format!("unknown operation {other}"))),
        };
        let result = vmm::perform(
            &plan::Op {
                guest: String::new(),
                name: String::new(),
                action,
                target: path.to_string(),
            },
            None,
        );
        out.push_str(&format!("{op} {path} {result}\n"));
    }
    fs::write(dir.join(".svirt-probe-results"), out).ctx(|| ".svirt-probe-results".into())?;
    Ok(false)
}

fn dispatch(cmd: &str, rest: &[String]) -> Result<bool> {
    let a = Args::parse(rest)?;
    match cmd {
        "load-policy" => {
            let fs_dir = a
                .opts
                .get("selinuxfs")
                .map_or("/sys/fs/selinux", String::as_str);
            let n = selinux::load_policy(Path::new(a.pos(0, "POLICY")?), Path::new(fs_dir))?;
            println!("loaded policy: {n} bytes in one write");
            Ok(true)
        }
        "setlabel" => {
            selinux::set_file_label(Path::new(a.pos(0, "PATH")?), a.pos(1, "CONTEXT")?)?;
            Ok(true)
        }
        "getlabel" => {
            println!("{}", selinux::file_label(Path::new(a.pos(0, "PATH")?))?);
            Ok(true)
        }
        "context" => {
            let pid = a.positional.first().map_or("self", String::as_str);
            println!("{}", selinux::process_attr(pid, "current")?);
            Ok(true)
        }
        "exec" => exec(rest),
        "manager" => {
            manager::run(&manager::Options {
                plan: a.req("plan")?,
                state: a.req("state")?,
                vmm: a.req("vmm")?,
                timeout: a.secs("timeout", 180)?,
            })?;
            Ok(true)
        }
        "vmm" => {
            let name = a
                .opts
                .get("name")
                .ok_or_else(|| Error::msg("missing --name"))?;
            let attack = a
                .opts
                .get("attack")
                .map_or(vmm::DEFAULT_ATTACK, String::as_str);
            vmm::attack(name, &plan::Attack::load(Path::new(attack))?)?;
            vmm::linger(a.secs("linger", 120)?);
            Ok(true)
        }
        "snapshot" => {
            let plan = plan::Plan::load(&a.req("plan")?)?;
            let attack = plan::Attack::load(&a.req("attack")?)?;
            let pids = a.opts.get("pids").map(PathBuf::from);
            let snap =
                check::take_snapshot(&check::watched_files(&plan, &attack), pids.as_deref())?;
            let out = a.req("out")?;
            fs::write(&out, snap.render()).ctx(|| format!("writing {}", out.display()))?;
            Ok(true)
        }
        "wait-line" => {
            let line = a
                .opts
                .get("line")
                .ok_or_else(|| Error::msg("missing --line"))?;
            wait_line(&a.positional, line, a.secs("timeout", 60)?)
        }
        "list-checks" => {
            let (plan, attack, expected) = load_inputs(&a)?;
            for name in check::list(&plan, &attack, &expected)
                .into_iter()
                .chain(hostcheck::list(&plan, &attack, &expected))
            {
                println!("{name}");
            }
            Ok(true)
        }
        "model-queries" => {
            let plan = plan::Plan::load(&a.req("plan")?)?;
            let attack = plan::Attack::load(&a.req("attack")?)?;
            let labels = plan::load_labels(&a.req("labels")?)?;
            for q in model::queries(&plan, &attack, &labels)? {
                println!("{}", q.batch_line());
            }
            Ok(true)
        }
        "model-expect" => {
            let plan = plan::Plan::load(&a.req("plan")?)?;
            let attack = plan::Attack::load(&a.req("attack")?)?;
            let labels = plan::load_labels(&a.req("labels")?)?;
            let answers_path = a.req("answers")?;
            let answers: Vec<String> = fs::read_to_string(&answers_path)
                .ctx(|| format!("reading {}", answers_path.display()))?
                .lines()
                .map(str::to_owned)
                .collect();
            let q = model::queries(&plan, &attack, &labels)?;
            print!(
                "{}",
                plan::render_expected(&model::expectations(&q, &answers)?)
            );
            Ok(true)
        }
        "host-check" => {
            let (plan, attack, expected) = load_inputs(&a)?;
            let console_path = a.req("console")?;
            let console =
                fs::read(&console_path).ctx(|| format!("reading {}", console_path.display()))?;
            let avc = a.req("avc")?;
            let no_daemon = avc.with_file_name("no-svirtd.sock");
            let results = hostcheck::evaluate(&hostcheck::Inputs {
                plan: &plan,
                attack: &attack,
                expected: &expected,
                console: &String::from_utf8_lossy(&console),
                avc_file: &avc,
                svirt: &a.req("svirt")?,
                no_daemon: &no_daemon,
            });
            for r in &results {
                println!("{}", r.line());
            }
            Ok(results.iter().all(|r| r.pass))
        }
        "check" => run_check(&a),
        "aa-exec" => {
            let profile = rest
                .first()
                .ok_or_else(|| Error::msg("aa-exec: missing PROFILE"))?;
            apparmor::exec_confined(profile, &rest[1..])
        }
        "try" => {
            let action = match a.pos(0, "read|write|stat|connect|bpf")? {
                "read" => plan::Action::Read,
                "write" => plan::Action::Write,
                "stat" => plan::Action::Stat,
                "connect" => plan::Action::Connect,
                "bpf" => plan::Action::Bpf,
                other => return Err(Error::msg(format!("try: unknown operation {other}"))),
            };
            let op = plan::Op {
                guest: String::new(),
                name: String::new(),
                action,
                target: a.pos(1, "PATH")?.to_string(),
            };
            // A confined caller may not be allowed to print: the exit code is the answer.
            std::process::exit(match vmm::perform(&op, None).as_str() {
                "ok" => 0,
                "EACCES" => 13,
                _ => 1,
            })
        }
        "breach-jail" => {
            let pid: i32 = a
                .opts
                .get("pid")
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| Error::msg("breach-jail: missing --pid PID"))?;
            let paths: Vec<PathBuf> = a.positional.iter().map(PathBuf::from).collect();
            println!("{}", apparmor::breach_jail(pid, &paths)?.join(", "));
            Ok(true)
        }
        "pidfd-exec" => {
            let pid: i32 = a
                .pos(0, "PID")?
                .parse()
                .map_err(|_| Error::msg("pidfd-exec: PID is not a number"))?;
            let fd: i32 = a
                .pos(1, "FD")?
                .parse()
                .ok()
                .filter(|fd| *fd > 2)
                .ok_or_else(|| Error::msg("pidfd-exec: FD must be a number above 2"))?;
            pidfd_exec(pid, fd, &rest[2..])
        }
        "aa-expect" => {
            let plan = plan::Plan::load(&a.req("plan")?)?;
            let attack = plan::Attack::load(&a.req("attack")?)?;
            print!(
                "{}",
                plan::render_expected(&apparmor::expectations(
                    &plan,
                    &attack,
                    a.opts.get("dac").is_some_and(|v| v == "yes"),
                )?)
            );
            Ok(true)
        }
        "aa-snapshot" => {
            let pids = a.opts.get("pids").map(PathBuf::from);
            let o = apparmor::Observation::take(pids.as_deref())?;
            let out = a.req("out")?;
            fs::write(&out, o.render()).ctx(|| format!("writing {}", out.display()))?;
            Ok(true)
        }
        "aa-list-checks" => {
            let (plan, attack, expected) = load_inputs(&a)?;
            for name in apparmor::list(&plan, &attack, &expected) {
                println!("{name}");
            }
            Ok(true)
        }
        "aa-denial-counts" => {
            let (plan, attack, expected) = load_inputs(&a)?;
            for (g, n) in apparmor::denial_counts(&plan, &attack, &expected) {
                println!("{g} {n}");
            }
            Ok(true)
        }
        "aa-check" => run_aa_check(&a),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(true)
        }
        other => Err(Error::msg(format!("unknown command {other:?}\n{USAGE}"))),
    }
}

/// The manager (stand-in now, svirtd later) execs us the way it would exec QEMU:
/// serve QMP if given a monitor, run this guest's attacks if the attack plan has any,
/// then run until stopped (`quit`, `system_powerdown`, a signal, or the linger bound).
fn run_as_qemu(args: &[String]) -> Result<bool> {
    let name = vmm::guest_name(args).ok_or_else(|| Error::msg("invoked as a VMM without -name"))?;
    if let Some(fd) = qmp::monitor_fd(args) {
        qmp::serve(fd, qmp::starts_paused(args));
    }
    let attack_path = std::env::var_os("SVIRT_PROBE_ATTACK")
        .map_or_else(|| PathBuf::from(vmm::DEFAULT_ATTACK), PathBuf::from);
    // Without an attack plan (or with none for this guest) the probe is just a quiet VMM,
    // usable as a stand-in QEMU outside the lab.
    if attack_path.exists() {
        let attack = plan::Attack::load(&attack_path)?;
        if attack.results.contains_key(&name) {
            vmm::attack(&name, &attack)?;
        }
    }
    let linger = std::env::var("SVIRT_PROBE_LINGER_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    vmm::linger(Duration::from_secs(linger));
    Ok(true)
}

fn load_inputs(a: &Args) -> Result<(plan::Plan, plan::Attack, plan::Expected)> {
    Ok((
        plan::Plan::load(&a.req("plan")?)?,
        plan::Attack::load(&a.req("attack")?)?,
        plan::load_expected(&a.req("expected")?)?,
    ))
}

fn run_check(a: &Args) -> Result<bool> {
    let (plan, attack, expected) = load_inputs(a)?;
    // Missing observation files are not errors here: every check they feed must then be
    // REPORTED as failed, so the host sees a complete, failing list.
    let snap = |key: &str| -> Snapshot {
        a.req(key)
            .ok()
            .and_then(|p| plan::Snapshot::load(&p).ok())
            .unwrap_or_default()
    };
    type Snapshot = plan::Snapshot;
    let mut obs = check::Observed {
        before: snap("before"),
        running: snap("running"),
        after: snap("after"),
        ..Default::default()
    };
    obs.results = check::read_results(&attack);
    if let Ok(text) = fs::read_to_string(a.req("dmesg")?) {
        obs.avcs = text.lines().filter_map(check::parse_avc).collect();
    }
    obs.enforcing = fs::read_to_string("/sys/fs/selinux/enforce")
        .ok()
        .map(|s| s.trim() == "1");
    let results = check::evaluate(&plan, &attack, &expected, &obs);
    for r in &results {
        println!("{}", r.line());
    }
    Ok(results.iter().all(|r| r.pass))
}

fn run_aa_check(a: &Args) -> Result<bool> {
    let (plan, attack, expected) = load_inputs(a)?;
    // Missing observations fail the checks they feed; every check is still reported.
    let snap = |key: &str| {
        a.req(key)
            .ok()
            .and_then(|p| fs::read_to_string(p).ok())
            .map(|t| apparmor::Observation::parse(&t))
            .unwrap_or_default()
    };
    let mut obs = apparmor::Observed {
        enabled: apparmor::enabled(),
        running: snap("running"),
        after: snap("after"),
        ..Default::default()
    };
    obs.results = check::read_results(&attack);
    if let Ok(text) = fs::read_to_string(a.req("dmesg")?) {
        obs.records = text.lines().filter_map(apparmor::parse_record).collect();
    }
    obs.denials = a
        .req("denials")
        .ok()
        .and_then(|p| fs::read_to_string(p).ok());
    let results = apparmor::evaluate(&plan, &attack, &expected, &obs);
    for r in &results {
        println!("{}", r.line());
    }
    Ok(results.iter().all(|r| r.pass))
}

fn wait_line(files: &[String], line: &str, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    let has = |f: &String| fs::read_to_string(f).is_ok_and(|t| t.lines().any(|l| l.trim() == line));
    loop {
        let missing: Vec<&String> = files.iter().filter(|f| !has(f)).collect();
        if missing.is_empty() {
            return Ok(true);
        }
        if Instant::now() > deadline {
            eprintln!("svirt-probe: timed out waiting for {line:?} in {missing:?}");
            return Ok(false);
        }
        sleep(Duration::from_millis(50));
    }
}

fn exec(args: &[String]) -> Result<bool> {
    // The next domain may use fds of this one but not those inherited from further up the
    // chain; the kernel would replace them (with an AVC each). So stdio is (re)opened here.
    let (null_out, log, args) = match args {
        [flag, rest @ ..] if flag == "--null-stdio" => (true, None, rest),
        [flag, file, rest @ ..] if flag == "--stdio" => (false, Some(file), rest),
        _ => (false, None, args),
    };
    if null_out || log.is_some() {
        let null = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .ctx(|| "opening /dev/null".to_string())?;
        let out = match log {
            Some(f) => fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)
                .ctx(|| format!("opening {f}"))?,
            None => null.try_clone().ctx(|| "dup /dev/null".to_string())?,
        };
        for (fd, from) in [(0, &null), (1, &out), (2, &out)] {
            // SAFETY: dup2 onto the standard fds of this about-to-exec process.
            if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(from), fd) } < 0 {
                return Err(std::io::Error::last_os_error()).ctx(|| format!("dup2 onto fd {fd}"));
            }
        }
    }
    execv_args(args, "exec")
}

/// `pidfd_open(pid)` on fd `fd` without close-on-exec, then execv `args`: the program
/// inherits a pidfd at a number known in advance (bpftool takes a task-storage map's key,
/// a pidfd in the caller, as bytes on its command line).
fn pidfd_exec(pid: i32, fd: i32, args: &[String]) -> Result<bool> {
    // SAFETY: pidfd_open returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| format!("pidfd_open({pid})"));
    }
    // SAFETY: dup2 of the fd just opened onto `fd` (the copy has no close-on-exec), or,
    // when it already is `fd`, close-on-exec cleared on it.
    let r = unsafe {
        if pidfd as i32 == fd {
            libc::fcntl(fd, libc::F_SETFD, 0)
        } else {
            libc::dup2(pidfd as i32, fd)
        }
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error()).ctx(|| format!("dup2 onto fd {fd}"));
    }
    execv_args(args, "pidfd-exec")
}

/// Replaces this process with `args` (`PROGRAM ARG…`, PROGRAM a path); returns only the
/// error. `what` names the command for a missing program.
fn execv_args(args: &[String], what: &str) -> Result<bool> {
    let prog = args
        .first()
        .ok_or_else(|| Error::msg(format!("{what}: missing PROGRAM")))?;
    let cargs: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| Error::msg("argument contains NUL")))
        .collect::<Result<_>>()?;
    let mut ptrs: Vec<*const libc::c_char> = cargs.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let path = CString::new(Path::new(prog).as_os_str().as_bytes())
        .map_err(|_| Error::msg("path contains NUL"))?;
    // SAFETY: path and the NULL-terminated argv point into live CStrings.
    unsafe { libc::execv(path.as_ptr(), ptrs.as_ptr()) };
    Err(std::io::Error::last_os_error()).ctx(|| format!("execv {prog}"))
}
