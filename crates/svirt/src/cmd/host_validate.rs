//! `svirt host-validate`: prints the host checks (`svirt_manager::host_checks`), one line
//! per check, like `virt-host-validate`; exit 1 when one fails.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use svirt_manager::host_checks::{self, Status};

use crate::{CliError, CmdResult};

/// Arguments of `svirt host-validate`.
#[derive(Args, Debug)]
pub struct HostValidateArgs {
    /// Directory where guest images live: xattr support is tried there (repeatable).
    /// Default: /var/lib/svirt, or its nearest existing parent.
    #[arg(long = "images", value_name = "DIR")]
    images: Vec<PathBuf>,
    /// The emulator to check.
    #[arg(long, value_name = "PATH", default_value = "qemu-system-x86_64")]
    emulator: String,
    /// Print the checks as JSON (see docs/cli.md).
    #[arg(long)]
    json: bool,
}

/// Runs `svirt host-validate`.
pub fn run(args: HostValidateArgs) -> CmdResult {
    super::client::default_sigpipe();
    let dirs = if args.images.is_empty() {
        vec![default_images_dir()]
    } else {
        args.images.clone()
    };
    let checks = host_checks::run(std::path::Path::new("/"), &args.emulator, &dirs);
    if args.json {
        let out = serde_json::json!({ "checks": checks });
        let text = serde_json::to_string_pretty(&out)
            .map_err(|e| CliError::failed(format!("cannot encode JSON: {e}")))?;
        println!("{text}");
    } else {
        for c in &checks {
            let head = format!("{}: {}", c.component, c.check);
            println!("{head:<58} : {} ({})", c.status.as_str(), c.reason);
        }
    }
    let failed = checks.iter().any(|c| c.status == Status::Fail);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn default_images_dir() -> PathBuf {
    let mut dir = PathBuf::from("/var/lib/svirt");
    while !dir.is_dir() {
        match dir.parent() {
            Some(p) => dir = p.to_path_buf(),
            None => return PathBuf::from("/"),
        }
    }
    dir
}
