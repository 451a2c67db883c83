//! svirtd: the svirt daemon. Starts, confines and supervises QEMU guests, and serves the
//! JSON API on `<run-dir>/svirtd.sock`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use svirt_manager::{AccelChoice, CategoryRange, Config, DriverSelection, Manager, UidRange};
use tracing::{error, info, warn};

/// The svirt daemon: starts QEMU guests from libvirt domain XML, each confined by the
/// security driver stack, supervises them and restores everything when they end.
#[derive(Parser, Debug)]
#[command(name = "svirtd", version)]
struct Args {
    /// Persistent state (the embedded database).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/svirt")]
    state_dir: PathBuf,
    /// Runtime files: the API socket, per-guest directories, QMP sockets.
    #[arg(long, value_name = "DIR", default_value = "/run/svirt")]
    run_dir: PathBuf,
    /// MCS categories dynamic labels are drawn from (default: the daemon's own range, or c0.c1023).
    #[arg(long, value_name = "cA.cB", value_parser = parse_category_range)]
    category_range: Option<CategoryRange>,
    /// uids (and gids) handed to guests, one each. Refused at start if /etc/passwd,
    /// /etc/group, /etc/subuid or /etc/subgid name an id in it.
    #[arg(long, value_name = "FIRST-LAST", value_parser = parse_uid_range,
          default_value = svirt_manager::DEFAULT_UID_RANGE)]
    uid_range: UidRange,
    /// Security drivers: `auto` (SELinux, SMACK, AppArmor or BPF-LSM with DAC where the
    /// kernel enforces one, else DAC + Landlock), `none`, or a list such as `selinux,dac`,
    /// `smack,dac`, `apparmor,dac`, `bpf-lsm,dac` or `dac,landlock`. Stacked in the order
    /// MAC model, DAC, Landlock whatever the order given; a driver named twice, two MAC
    /// models or `none` with others are refused.
    #[arg(long, value_name = "auto|none|LIST", default_value = "auto", value_parser = parse_drivers)]
    drivers: DriverSelection,
    /// A directory below which a backing file named only by a qcow2 header is accepted
    /// (besides the top image's own directory); repeatable. Anything else must be
    /// declared with <backingStore> in the domain XML.
    #[arg(long = "image-root", value_name = "DIR")]
    image_roots: Vec<PathBuf>,
    /// Give private filesystem shares to the guest's uid by a chown of every entry (and
    /// its restore) instead of an idmapped mount in the VMM's jail (the default, O(1)).
    #[arg(long)]
    no_idmap_shares: bool,
    /// Where each guest's UEFI variable store is made from its template
    /// (`<os firmware='efi'>`) and kept across starts.
    #[arg(long, value_name = "DIR", default_value = svirt_manager::DEFAULT_NVRAM_DIR)]
    nvram_dir: PathBuf,
    /// Where each guest's emulated TPM (swtpm) keeps its state when the XML names no
    /// place, kept across starts.
    #[arg(long, value_name = "DIR", default_value = svirt_manager::DEFAULT_TPM_STATE_DIR)]
    tpm_state_dir: PathBuf,
    /// Accelerator: `auto` probes KVM once and falls back to TCG.
    #[arg(long, value_name = "auto|kvm|tcg", default_value = "auto", value_parser = parse_accel)]
    accel: AccelChoice,
    /// QEMU binary (default: the domain's <emulator>, or qemu-system-x86_64 from PATH).
    #[arg(long, value_name = "PATH")]
    qemu: Option<PathBuf>,
    /// virtiofsd binary for virtiofs shares (default: virtiofsd from PATH, else
    /// /usr/libexec/virtiofsd or /usr/lib/qemu/virtiofsd).
    #[arg(long, value_name = "PATH")]
    virtiofsd: Option<PathBuf>,
    /// cgroup (below each hierarchy) holding the guests' groups.
    #[arg(long, value_name = "NAME", default_value = "svirt")]
    cgroup_parent: String,
    /// Seconds `shutdown` waits after the ACPI power-down before killing QEMU.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    shutdown_timeout: u64,
}

fn parse_category_range(s: &str) -> Result<CategoryRange, String> {
    s.parse()
}
fn parse_uid_range(s: &str) -> Result<UidRange, String> {
    s.parse()
}
fn parse_drivers(s: &str) -> Result<DriverSelection, String> {
    s.parse()
        .map_err(|e: svirt_manager::ManagerError| e.to_string())
}
fn parse_accel(s: &str) -> Result<AccelChoice, String> {
    match s {
        "auto" => Ok(AccelChoice::Auto),
        "kvm" => Ok(AccelChoice::Kvm),
        "tcg" => Ok(AccelChoice::Tcg),
        _ => Err(format!("{s:?}: expected auto, kvm or tcg")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SVIRTD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("svirtd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let socket = args.run_dir.join("svirtd.sock");
    std::fs::create_dir_all(&args.run_dir)
        .map_err(|e| format!("create run dir {}: {e}", args.run_dir.display()))?;
    // Before opening the store: a second daemon must not touch the first one's guests.
    svirtd::server::check_socket_free(&socket).map_err(|e| e.to_string())?;

    let mut config = Config::new(&args.state_dir, &args.run_dir);
    config.driver_settings.category_range = args.category_range;
    config.driver_settings.uid_range = Some(args.uid_range);
    config.drivers = args.drivers;
    config.accel = args.accel;
    config.qemu_binary = args.qemu;
    config.virtiofsd_binary = args.virtiofsd;
    config.cgroup_parent = args.cgroup_parent;
    config.shutdown_timeout = Duration::from_secs(args.shutdown_timeout);
    config.image_roots = args.image_roots;
    config.idmap_shares = !args.no_idmap_shares;
    config.nvram_dir = args.nvram_dir;
    config.tpm_state_dir = args.tpm_state_dir;
    info!(state_dir = %args.state_dir.display(), run_dir = %args.run_dir.display(), "opening manager");
    raise_nofile();
    let (manager, report) = Manager::open(config).map_err(|e| e.to_string())?;
    log_report(&report);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = svirtd::server::bind_socket(&socket).map_err(|e| e.to_string())?;
        info!(socket = %socket.display(), "listening (HTTP/1.1 + JSON, mode 0600)");
        let app = svirtd::router(manager);
        axum::serve(listener, app)
            .with_graceful_shutdown(stop_signal())
            .await
            .map_err(|e| format!("serve: {e}"))?;
        // Guests keep running on purpose: the next svirtd reattaches to them.
        info!("stopping; running guests keep running and are reattached at the next start");
        let _ = std::fs::remove_file(&socket);
        Ok::<(), String>(())
    })
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop svirtd with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
    }
}

fn log_report(r: &svirt_manager::OpenReport) {
    let stack: Vec<&str> = r.stack.iter().map(|m| m.as_str()).collect();
    let stack = if stack.is_empty() {
        "none (guests are NOT confined)".to_string()
    } else {
        stack.join(" + ")
    };
    info!("driver stack: {stack} — {}", r.why);
    for d in &r.drivers {
        info!(
            "  driver {}: {} — {}",
            d.model,
            if d.active { "active" } else { "not used" },
            d.reason
        );
    }
    info!("accelerator: {} — {}", r.accel, r.accel_reason);
    info!("cgroups: {}", r.cgroup);
    info!("qemu: {}", r.qemu.display());
    for g in &r.reattached {
        info!("reattached to running guest {g}");
    }
    for rec in &r.recovered {
        info!("recovered guest {}: {}", rec.guest, rec.what);
    }
}

/// Soft RLIMIT_NOFILE up to the hard limit: tree labeling keeps fds open per directory
/// (SELinux engine) or per object (DAC), and the usual soft limit of 1024 would make a
/// share of a few thousand files fail with EMFILE.
fn raise_nofile() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                warn!("cannot raise RLIMIT_NOFILE to {}", l.rlim_max);
            }
        }
    }
}
