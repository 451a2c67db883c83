//! `svirt plan DOMAIN.xml`: a dry run. Prints every host object the guest would use,
//! with its kind, access and what each security model would set on it, and why.
//! Nothing on the host is changed.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use svirt_domain::{Host, MAX_XML_BYTES, Model, PlanConfig};

use crate::{CliError, CmdResult};

/// Arguments of `svirt plan`.
#[derive(Args)]
pub struct PlanArgs {
    /// The libvirt domain XML file.
    domain: PathBuf,
    /// Print the stable JSON form (documented in docs/domain-plan.md).
    #[arg(long)]
    json: bool,
    /// Host root holding etc/selinux, sys and dev (for tests and images).
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// Models the host configuration enables (comma-separated); the domain's own
    /// `<seclabel model=…>` are added.
    #[arg(long, value_delimiter = ',', default_value = "selinux,dac,landlock")]
    models: Vec<String>,
    /// Where TPM emulator state lives when the XML gives no path.
    #[arg(long, value_name = "DIR")]
    tpm_state_root: Option<PathBuf>,
}

/// Runs `svirt plan`.
pub fn run(args: PlanArgs) -> CmdResult {
    let xml = read_limited(&args.domain)?;
    let mut models = Vec::new();
    for m in &args.models {
        models.push(
            Model::from_name(m.trim())
                .ok_or_else(|| CliError::input(format!("--models: unknown model '{m}'")))?,
        );
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut host = Host::new(&args.root).with_home(home);
    if let Some(t) = args.tpm_state_root {
        host = host.with_tpm_state_root(t);
    }
    let mut cfg = PlanConfig::for_host(&host).map_err(CliError::input)?;
    cfg.models = models;
    let planned = svirt_domain::plan_xml(&xml, &host, &cfg).map_err(CliError::input)?;
    let usable = usable_models(&args.root);
    let rep = svirt_domain::report(&planned.plan, &usable, &planned.warnings);
    if args.json {
        let text = serde_json::to_string_pretty(&rep).map_err(CliError::failed)?;
        println!("{text}");
    } else {
        print!("{}", svirt_domain::render_text(&rep));
    }
    Ok(ExitCode::SUCCESS)
}

fn read_limited(p: &Path) -> Result<String, CliError> {
    let f = std::fs::File::open(p).map_err(|e| CliError::input(format!("{}: {e}", p.display())))?;
    let mut buf = Vec::new();
    f.take(MAX_XML_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CliError::input(format!("{}: {e}", p.display())))?;
    if buf.len() > MAX_XML_BYTES {
        return Err(CliError::input(format!(
            "{}: larger than {MAX_XML_BYTES} bytes",
            p.display()
        )));
    }
    String::from_utf8(buf).map_err(|_| CliError::input(format!("{}: not UTF-8", p.display())))
}

/// Which models' drivers could run here: a quick look at the host, not a full probe
/// (`svirt host-validate` does that).
fn usable_models(root: &Path) -> Vec<Model> {
    let lsms = std::fs::read_to_string(root.join("sys/kernel/security/lsm")).unwrap_or_default();
    let lsm = |name: &str| lsms.split(',').any(|l| l.trim() == name);
    let mut out = Vec::new();
    if root.join("sys/fs/selinux/enforce").exists() {
        out.push(Model::Selinux);
    }
    // Changing owners needs root.
    if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        out.push(Model::Dac);
    }
    // securityfs is often unmounted: ask the kernel itself when looking at this host.
    if lsm("landlock") || (root == Path::new("/") && svirt_drivers::landlock::kernel_abi() > 0) {
        out.push(Model::Landlock);
    }
    if lsm("apparmor") {
        out.push(Model::Apparmor);
    }
    // Listed is not enough: this kernel may refuse LSM programs (no BPF trampolines).
    if svirt_drivers::bpf_lsm::usable(root).0 {
        out.push(Model::BpfLsm);
    }
    if svirt_drivers::smack::host::active(root).0 {
        out.push(Model::Smack);
    }
    out
}
