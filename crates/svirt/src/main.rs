//! `svirt`: the command line of svirt.
//!
//! Thin by design: every subcommand parses its arguments, calls a library crate and
//! prints. Errors are one line on stderr (`svirt: …`) with exit status 2 for bad input
//! and 1 for failures.

mod cmd;
mod error;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use error::{CliError, CmdResult};

/// sVirt in Rust: mandatory access control for virtual machines.
#[derive(Parser)]
#[command(name = "svirt", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    connect: cmd::client::ConnectArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Security labels: canonical form, dominance, translation, allocation.
    #[command(subcommand)]
    Label(cmd::label::LabelCommand),
    /// Guests through svirtd: start, list, info, dumpxml, shutdown, destroy, console,
    /// qemu-monitor-command.
    #[command(flatten)]
    Guest(cmd::guest::GuestCommand),
    /// Check what this host offers svirt (KVM, LSMs, Landlock, BPF-LSM, cgroups, xattrs).
    HostValidate(cmd::host_validate::HostValidateArgs),
    /// Why is (or would be) an access allowed or denied? The virt policy, in plain words.
    Explain(cmd::explain::ExplainArgs),
    /// SELinux AVC, AppArmor, SMACK and BPF-LSM denials from the kernel or audit log, per
    /// guest.
    Denials(cmd::explain::DenialsArgs),
    /// Dry run: every host object a domain uses and the label each model gives it.
    Plan(cmd::plan::PlanArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout with success, usage errors with code 2.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Label(c) => cmd::label::run(c),
        Command::Guest(c) => cmd::guest::run(c, &cli.connect),
        Command::HostValidate(a) => cmd::host_validate::run(a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Explain(a) => cmd::explain::run_explain(a, &cli.connect),
        Command::Denials(a) => cmd::explain::run_denials(a, &cli.connect),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("svirt: {e}");
            ExitCode::from(e.code)
        }
    }
}
